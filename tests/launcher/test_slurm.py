"""Integration tests against a real single-host SLURM cluster (scripts/slurm/cluster.sh: slurmctld, slurmdbd with
MariaDB, two slurmd daemons n1 and n2): arrays, a 2-node trial, preemption with exact resume, cancel + resume."""

import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from launcher import manifest as mf
from tests.conftest import REPO, SLURM_GROUP, TINY, _queue, ftl, wait_for
from tests.launcher.test_local_sweep import broken_images

pytestmark = [pytest.mark.slow, pytest.mark.slurm, SLURM_GROUP]


def write_sweep(tmp_path, lfw, name="s", epochs=1, extra=(), **spec) -> Path:
    common = [f"data.train_dir={lfw}/train", f"data.val_dir={lfw}/val", "data.image_size=32", "data.batch_size=8",
              "data.num_workers=0", f"train.epochs={epochs}", *TINY, *extra]  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"recipe": "base", "name": name, "overrides": common, **spec}, sort_keys=False))
    return path


def write_cluster(tmp_path, **kw) -> Path:
    data = yaml.safe_load((REPO / "cluster_configs" / "slurm_local.yaml").read_text())
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({**data, **kw}))
    return path


def test_array_of_trials_with_a_failing_one(slurm, lfw, tmp_path):
    """Six trials in one job array, one on images that cannot be decoded: it fails with its cause, the others
    complete; `wait` exits 1 and says so."""
    train_dirs = [f"{lfw}/train"] * 5 + [str(broken_images(tmp_path))]
    path = write_sweep(tmp_path, lfw, zip={"data.train_dir": train_dirs, "optim.lr": [1e-4 * (i + 1) for i in range(6)]})
    out = tmp_path / "sw"
    proc = ftl("sweep", path, "--cluster", write_cluster(tmp_path), "--out", out)
    assert proc.returncode == 0, proc.stderr
    man = mf.read(out)
    arrays = {t.job_id.split("_")[0] for t in man.trials.values()}
    assert len(arrays) == 1 and len(man.trials) == 6  # one job array for the sweep
    done = ftl("wait", out, "--poll", "0.5")
    assert done.returncode == 1 and "1 of 6 trials did not complete" in done.stdout, done.stdout + done.stderr
    trials = sorted(mf.read(out).trials.values(), key=lambda t: t.state)
    assert [t.state for t in trials] == ["COMPLETED"] * 5 + ["FAILED"]
    assert "give both the same class folders" in trials[-1].cause, trials[-1].cause  # why, not just that it failed
    status = ftl("status", out)
    assert "5 completed, 1 failed" in status.stdout and trials[-1].cause[:40] in status.stdout


def test_two_node_trial_trains_one_model(slurm, lfw, tmp_path):
    path = write_sweep(tmp_path, lfw, name="mn", grid={"optim.lr": [1e-3]})
    out = tmp_path / "sw"
    # Submitted from inside another job: its SLURM_*/SBATCH_* variables must not leak (SBATCH_CONSTRAINT would fail sbatch).
    parent = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "7", "SLURM_CPUS_PER_TASK": "64", "SBATCH_CONSTRAINT": "nonexistent"}
    proc = ftl("sweep", path, "--cluster", write_cluster(tmp_path, nodes=2), "--out", out, env=parent)
    assert proc.returncode == 0, proc.stderr
    assert ftl("wait", out, "--poll", "0.5").returncode == 0
    trial = next(iter(mf.read(out).trials.values()))
    assert trial.state == "COMPLETED"
    logs = {p.name: p.read_text() for p in (out / "logs").rglob("*_log.out")}
    assert len(logs) == 2  # one task per node
    text = "\n".join(logs.values())
    assert "ftl: task 0/2 on node n1" in text and "ftl: task 1/2 on node n2" in text
    assert "2 process(es) on cpu" in text


def test_preempted_trial_requeues_and_resumes_exactly(slurm, lfw, tmp_path):
    extra = ["train.deterministic=true", "train.checkpoint_every_steps=1", "data.image_size=48"]
    path = write_sweep(tmp_path, lfw, name="pre", epochs=20, extra=extra, zip={"name": ["interrupted", "reference"]})
    out = tmp_path / "sw"
    assert ftl("sweep", path, "--cluster", write_cluster(tmp_path), "--out", out).returncode == 0
    man = mf.read(out)
    victim = next(t for t in man.trials.values() if t.overrides == ["name=interrupted"])
    reference = next(t for t in man.trials.values() if t.overrides == ["name=reference"])
    run_dir = out / victim.run_dir
    wait_for(lambda: list((run_dir / "checkpoints").glob("step_*/trainer.json")), 300, "the first checkpoint")
    subprocess.run(["scancel", "--signal=USR2", victim.job_id], check=True)
    assert ftl("wait", out, "--poll", "0.5").returncode == 0
    man = mf.read(out)
    assert man.trials[victim.id].state == "COMPLETED" and man.trials[reference.id].state == "COMPLETED"
    log = "\n".join(p.read_text() for p in (out / "logs").rglob(f"{victim.job_id}_*_log.out"))
    assert "checkpoint saved" in log and "(resuming step_" in log
    sacct = subprocess.run(["sacct", "-j", victim.job_id, "-n", "-P", "-D", "-o", "State"], capture_output=True,
                           text=True).stdout.split()  # fmt: skip
    assert "REQUEUED" in sacct or len(sacct) > 1  # the same job ran twice
    a = load_file(str(run_dir / "export" / "last.safetensors"))
    b = load_file(str(out / reference.run_dir / "export" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_cancel(slurm, lfw, tmp_path):
    path = write_sweep(tmp_path, lfw, name="rc", epochs=40, extra=["train.checkpoint_every_steps=1"],
                       grid={"optim.lr": [1e-3, 2e-3]})  # fmt: skip
    out = tmp_path / "sw"
    assert ftl("sweep", path, "--cluster", write_cluster(tmp_path), "--out", out).returncode == 0
    wait_for(lambda: list((out / "trials").glob("*/checkpoints/step_*/trainer.json")), 300, "a checkpoint")
    assert "cancelled 2" in ftl("cancel", out).stdout
    wait_for(lambda: "2 cancelled" in ftl("status", out).stdout, 60, "sacct to show CANCELLED")
    resumed = ftl("resume", out)
    assert "resubmitted 2 trials" in resumed.stdout, resumed.stdout + resumed.stderr
    assert ftl("wait", out, "--poll", "0.5").returncode == 0
    man = mf.read(out)
    assert {t.state for t in man.trials.values()} == {"COMPLETED"}
    assert all(len(t.job_ids) == 2 for t in man.trials.values())


def test_unknown_partition_and_sbatch_errors_submit_nothing(slurm, lfw, tmp_path):
    """What SLURM refuses, or could never run (sbatch --test-only of the trials' own script), is one line with
    SLURM's own reason - not 'Try sbatch --help', not a job pending forever - and nothing is written or queued."""
    path = write_sweep(tmp_path, lfw, grid={"optim.lr": [1e-3]})
    proc = ftl("sweep", path, "--cluster", write_cluster(tmp_path, partition="nope"), "--out", tmp_path / "a")
    assert proc.returncode == 2 and "partition 'nope' does not exist" in proc.stderr and not (tmp_path / "a").exists()
    cases = {"b": ({"additional_parameters": {"gres": "gpu:99"}}, "Requested node configuration is not available"),
             "c": ({"additional_parameters": {"bogus-opt": "1"}}, "unrecognized option '--bogus-opt=1'"),
             "d": ({"nodes": 3}, "Requested node configuration is not available")}  # the cluster has 2 nodes
    queued = _queue()
    for out, (cluster, reason) in cases.items():
        proc = ftl("sweep", path, "--cluster", write_cluster(tmp_path, **cluster), "--out", tmp_path / out)
        assert proc.returncode == 2 and "SLURM would never start a trial as configured" in proc.stderr, proc.stderr
        assert reason in proc.stderr and "Try" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not (tmp_path / out).exists()
    assert not set(_queue()) - set(queued)  # nothing queued (--test-only queues nothing)


def test_sweep_over_max_array_size_is_split(slurm, lfw, tmp_path):
    """250 trials with MaxArraySize=101: three arrays (101 + 101 + 48 tasks), queued held so nothing runs."""
    grid = {"optim.lr": [round(1e-4 * (i + 1), 6) for i in range(5)], "train.seed": list(range(50))}
    path = write_sweep(tmp_path, lfw, name="big", grid=grid)
    out = tmp_path / "sw"
    try:
        proc = ftl("sweep", path, "--cluster", write_cluster(tmp_path, additional_parameters={"hold": True}), "--out", out)
        assert proc.returncode == 0 and "queued 250 of 250" in proc.stdout, proc.stderr
        man = mf.read(out)
        arrays: dict[str, int] = {}
        for t in man.trials.values():
            arrays[t.job_id.split("_")[0]] = arrays.get(t.job_id.split("_")[0], 0) + 1
        assert sorted(arrays.values()) == [48, 101, 101]
        assert "250 held" in ftl("status", out, "--limit", "0").stdout  # queued with --hold: held by SLURM
    finally:
        assert "cancelled 250" in ftl("cancel", out).stdout
