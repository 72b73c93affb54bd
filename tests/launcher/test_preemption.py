"""Preemption as a real cluster does it (scripts/slurm/slurm.conf.in: partition `low` is preempted by `high` with
PreemptMode=REQUEUE and GraceTime), and a stop signal that lands while a job's Python is still starting."""

import subprocess

import pytest
import torch
import yaml
from safetensors.torch import load_file

from launcher import manifest as mf
from tests.conftest import REPO, SLURM_GROUP, TINY, ftl, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.slurm, SLURM_GROUP]


def sweep(tmp_path, lfw, name: str, **spec) -> object:
    common = [f"data.train_dir={lfw}/train", f"data.val_dir={lfw}/val", "data.image_size=32", "data.batch_size=8",
              "data.num_workers=0", "train.epochs=6", "train.deterministic=true", "train.checkpoint_every_steps=1",
              *TINY]  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"recipe": "base", "name": name, "overrides": common, **spec}, sort_keys=False))
    return path


def cluster(tmp_path, name: str, **kw) -> object:
    data = {**yaml.safe_load((REPO / "cluster_configs" / "slurm_local.yaml").read_text()), **kw}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sacct_states(job_id: str) -> list[str]:
    out = subprocess.run(["sacct", "-j", job_id, "-n", "-P", "-D", "-X", "-o", "State"], capture_output=True, text=True)
    return out.stdout.split()


def exported(sweep_dir) -> dict:
    trial = next(iter(mf.read(sweep_dir).trials.values()))
    return load_file(str(sweep_dir / trial.run_dir / "export" / "last.safetensors"))


def test_a_trial_preempted_by_a_higher_priority_partition_resumes_bit_equal(slurm, lfw, tmp_path):
    """The trial runs on node n1 in partition `low`; a job of partition `high` asks for all of n1: SLURM preempts
    the trial (SIGTERM, GraceTime, requeue). It saves an exact checkpoint, comes back after the high job and ends
    with the weights of the same trial run without interruption (partition `debug`, never preempted)."""
    victim, reference = tmp_path / "victim", tmp_path / "reference"
    assert ftl("sweep", sweep(tmp_path, lfw, "pv", grid={"optim.lr": [1e-3]}), "--out", victim, "--cluster",
               cluster(tmp_path, "low", partition="low", additional_parameters={"nodelist": "n1"})).returncode == 0  # fmt: skip
    assert ftl("sweep", sweep(tmp_path, lfw, "pr", grid={"optim.lr": [1e-3]}), "--out", reference, "--cluster",
               cluster(tmp_path, "debug", additional_parameters={"nodelist": "n2"})).returncode == 0  # fmt: skip
    trial = next(iter(mf.read(victim).trials.values()))
    wait_for(lambda: list((victim / trial.run_dir / "checkpoints").glob("step_*/trainer.json")), 300, "a checkpoint")
    high = subprocess.run(["sbatch", "--parsable", "-p", "high", "-w", "n1", "--exclusive", "-J", "ftl-test-high", "-o", str(tmp_path / "high.out"),
                           "--wrap", "sleep 3"], capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    try:
        wait_for(lambda: "checkpoint saved" in _log(victim), 120, "the trial to be preempted")
        done = ftl("wait", victim, "--poll", "0.5")
        assert done.returncode == 0, done.stdout + done.stderr
        assert ftl("wait", reference, "--poll", "0.5").returncode == 0
    finally:
        subprocess.run(["scancel", high])
        ftl("cancel", victim)
        ftl("cancel", reference)
    log = _log(victim)
    assert "checkpoint saved" in log and "(resuming step_" in log, log[-3000:]
    a, b = exported(victim), exported(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _log(sweep_dir) -> str:
    return "".join(p.read_text() for p in sweep_dir.rglob("*_log.*"))


def test_a_stop_signal_during_start_up_requeues_instead_of_failing(slurm, lfw, tmp_path):
    """USR2 reaches the job while its Python is still starting (stopped at the `boot` fault point, right after
    jobs/boot.py took the signals; the first run only): the job treats it as a stop request - checkpoint at its
    first update, requeue - and the trial completes instead of ending FAILED."""
    out = tmp_path / "sw"
    setup = ['[ "${SLURM_RESTART_COUNT:-0}" = 0 ] && export FTL_FAULT=boot:stop || true']
    assert ftl("sweep", sweep(tmp_path, lfw, "boot", grid={"optim.lr": [1e-3]}), "--out", out, "--cluster",
               cluster(tmp_path, "c", setup=setup)).returncode == 0  # fmt: skip
    trial = next(iter(mf.read(out).trials.values()))
    wait_for(lambda: "1 running" in ftl("status", out).stdout, 120, "the job to start")
    wait_for(lambda: _stopped(out), 60, "the job's Python to stop at boot")
    try:
        subprocess.run(["scancel", "--signal=USR2", trial.job_id], check=True)
        subprocess.run(["scancel", "--signal=CONT", trial.job_id], check=True)
        done = ftl("wait", out, "--poll", "0.5")
    finally:
        ftl("cancel", out)
    assert done.returncode == 0 and "1 completed" in done.stdout, done.stdout + done.stderr
    log = _log(out)
    assert "Requeued job" in log and "(resuming step_" in log, log[-3000:]  # submitit requeued; it went on


def _stopped(sweep_dir) -> bool:
    """The sweep's job Python (its command line names the sweep's log folder) is stopped (state T) on this host."""
    for pid in subprocess.run(["pgrep", "-f", f"jobs.boot .*{sweep_dir}"], capture_output=True, text=True).stdout.split():
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T":
                return True
        except OSError:
            continue
    return False
