"""Adaptive, asynchronous search: specs (ftl's and W&B's), seeded proposals, workers that never run a trial twice
or lose one (a killed worker's trial is adopted), cancel + resume with the same study, extending the budget, and a
real TPE + ASHA search on SLURM from a W&B sweep file."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from core.errors import FtlError
from launcher import manifest as mf
from launcher.sweep import load_sweep
from tests.conftest import REPO, SLURM_GROUP, TINY, ftl, run_ftl, wait_for
from tests.launcher.test_report import probe


def search_file(tmp_path: Path, name="s", program="jobs.objectives:quadratic", **spec) -> Path:
    data = {"recipe": "base", "name": name, "method": "tpe", "metric": {"name": "val_top1", "goal": "maximize"},
            "n_trials": 8, "max_parallel": 2, "seed": 0, "overrides": [f"data.train_dir={tmp_path}"],
            "space": {"optim.lr": {"loguniform": [1e-5, 1e-1]}, "optim.weight_decay": {"uniform": [0.0, 0.2]}},
            **({"program": program} if program else {}), **spec}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def local_cluster(tmp_path: Path, slots: int = 2) -> Path:
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump({"name": "here", "executor": "local", "max_parallel": slots,
                                    "env": {"OMP_NUM_THREADS": "1"}}))  # fmt: skip
    return path


def journal_states(sweep_dir: Path) -> list[str]:
    from jobs.study import open_study

    study = open_study(sweep_dir / "search" / "study.journal", mf.read(sweep_dir).name, "max")
    return [t.state.name for t in study.get_trials(deepcopy=False)]


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize(("spec", "pattern"), [
    ({"method": "bayesian"}, r"method='bayesian' is not a method"),
    ({"space": {}}, r"needs a search `space:`"),
    ({"space": {"optim.lr": {"uniform": [1e-2, 1e-4]}}}, r"has min > max"),
    ({"space": {"optim.lr": {"loguniform": [0, 1e-2]}}}, r"loguniform needs 0 < low"),
    ({"space": {"optim.lrate": {"uniform": [0, 1]}}}, r"space.optim.lrate is not a config key \(did you mean: optim.lr"),
    ({"space": {"optim.lr": {"normal": [0, 1]}}}, r"one of choice, uniform, loguniform, int"),
    ({"n_trials": None}, r"n_trials \(the budget; W&B: run_cap\) is required"),
    ({"max_parallel": 0}, r"max_parallel=0 must be an integer >= 1"),
    ({"metric": "val_top10"}, r"metric 'val_top10' is not logged"),
    ({"early_stop": {"type": "asha", "min_epoch": 1}}, r"early_stop.min_epoch is not a key"),
    ({"early_stop": {"type": "sha"}}, r"early_stop.type='sha' is not a pruner \(did you mean: asha"),
    ({"space": {"finetune.unfreeze_every": {"int": [1, 3], "when": {"finetune.strategy": "gradual"}}}},
     r"when.finetune.strategy must be a key asked before"),
    ({"space": {"train.seed": {"int": [-3, 2]}}}, r"train.seed=-3 must be >= 0"),
])  # fmt: skip
def test_bad_search_specs_are_one_line_errors(tmp_path, spec, pattern):
    with pytest.raises(FtlError, match=pattern):
        load_sweep(search_file(tmp_path, **spec))


def test_a_wandb_sweep_file_runs_as_it_is(tmp_path):
    path = tmp_path / "wandb.yaml"
    path.write_text(yaml.safe_dump({
        "program": "train.py", "method": "bayes", "metric": {"name": "val_top1", "goal": "maximize"}, "run_cap": 6,
        "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                       "batch_size": {"values": [8, 16]}, "epochs": {"value": 2},
                       "data.train_dir": {"value": str(tmp_path)}},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3}}))  # fmt: skip
    sweep = load_sweep(path)
    s = sweep.search
    assert s["method"] == "tpe" and s["n_trials"] == 6  # W&B's hyperband stops as successive halving does
    assert s["early_stop"] == {"type": "asha", "min_epochs": 1, "reduction_factor": 3, "max_epochs": None}
    assert set(s["space"]) == {"optim.lr", "data.batch_size"}  # `value:` is a constant: every trial's, not searched
    assert "train.epochs=2" in sweep.overrides and f"data.train_dir={tmp_path}" in sweep.overrides
    assert s["space"]["optim.lr"] == {"loguniform": [1e-4, 1e-2]}
    assert "method bayes -> tpe" in sweep.notes and "learning_rate -> optim.lr" in sweep.notes
    proc = run_ftl("sweep", path, "--dry-run")
    assert proc.returncode == 0 and proc.stdout.count("ftl: read as:") == 1, proc.stderr  # the mapping, one line
    for bad, pattern in (({"imputation": "best"}, r"W&B sweep key 'imputation' is not one W&B accepts"),
                         ({"parameters": {"lr": {"distribution": "normal", "mu": 0, "sigma": 1}}},
                          r"distribution normal has no bounds"),
                         ({"parameters": {"momentumm": {"values": [0.9]}}}, r"'momentumm' names no ftl config key"),
                         ({"run_cap": None, "method": "random"}, r"no run_cap: W&B would run this random sweep")):  # fmt: skip
        spec = {"method": "bayes", "run_cap": 4, "metric": {"name": "val_top1", "goal": "maximize"},
                "parameters": {"epochs": {"value": 2}, "lr": {"min": 1e-4, "max": 1e-2}}, **bad}  # fmt: skip
        path.write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))
        proc = ftl("sweep", path, "--dry-run")
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert __import__("re").search(pattern, proc.stderr), proc.stderr


def test_the_same_file_and_seed_propose_the_same_first_trials(tmp_path):
    from jobs.study import open_study, suggest

    space = load_sweep(search_file(tmp_path, space={"optim.lr": {"loguniform": [1e-5, 1e-1]},
                                                    "finetune.strategy": {"choice": ["full", "gradual"]},
                                                    "finetune.unfreeze_every": {"int": [1, 3], "when": {
                                                        "finetune.strategy": "gradual"}}})).search["space"]  # fmt: skip
    runs = []
    for run in range(2):
        study = open_study(tmp_path / f"j{run}" / "study.journal", "s", "max", "tpe", 7)
        runs.append([suggest(study.ask(), space, "tpe", 7) for _ in range(5)])
    assert runs[0] == runs[1]
    assert all(("finetune.strategy=gradual" in t) == any(o.startswith("finetune.unfreeze_every") for o in t)
               for t in runs[0])  # the conditional key is asked only when its condition holds  # fmt: skip
    other = open_study(tmp_path / "j2" / "study.journal", "s", "max", "tpe", 8)
    assert [suggest(other.ask(), space, "tpe", 8) for _ in range(5)] != runs[0]


# ---------------------------------------------------------------- on the local executor


@pytest.mark.slow
def test_local_search_asks_and_tells_each_trial_once(tmp_path):
    out = tmp_path / "sw"
    path = search_file(tmp_path, n_trials=10, max_parallel=3,
                       early_stop={"type": "asha", "min_epochs": 1, "reduction_factor": 2},
                       space={"optim.lr": {"loguniform": [1e-5, 1e-1]}, "train.epochs": {"int": [1, 3]}})  # fmt: skip
    proc = run_ftl("sweep", path, "--cluster", local_cluster(tmp_path, 3), "--out", out)
    assert proc.returncode == 0 and "queueing 3 worker slots of a tpe search (10 trials)" in proc.stdout, proc.stderr
    done = run_ftl("wait", out, "--poll", "1", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    man = mf.read(out)
    assert len(man.trials) == 10 and {t.state for t in man.trials.values()} <= {"COMPLETED", "PRUNED"}
    assert sorted(journal_states(out)) == sorted("COMPLETE" if t.state == "COMPLETED" else "PRUNED"
                                                 for t in man.trials.values())  # fmt: skip
    assert "PRUNED" in {t.state for t in man.trials.values()}  # ASHA stopped someone
    status = run_ftl("status", out)
    assert "tpe search, 10/10 trials asked" in status.stdout and "best val_top1" in status.stdout
    assert run_ftl("report", out).returncode == 0
    page = (out / "report.html").read_text()
    assert 'id="plot-search-history"' in page and 'id="plot-importance"' in page  # Optuna's own plots
    if shutil.which("chromium"):  # drawn in a browser: the search figures sit above the others (they were blank)
        seen = probe(out / "report.html", tmp_path, [], "")
        assert {"search", "params", "parallel"} <= set(seen["plots"]), seen["plots"]  # a program: no curves
        assert seen["plots"]["search"]["points"] + seen["plots"]["search"]["lines"] > 0, seen["plots"]["search"]
    assert "nothing to resume: the search's budget is spent" in run_ftl("resume", out).stdout
    # extend the finished search: the same study, more trials
    more = run_ftl("sweep", path, "n_trials=13", "--cluster", local_cluster(tmp_path, 3), "--out", out)
    assert more.returncode == 0, more.stderr
    assert run_ftl("wait", out, "--poll", "1", timeout=300).returncode == 0
    assert len(mf.read(out).trials) == 13 and len(journal_states(out)) == 13
    changed = search_file(tmp_path, name="s", n_trials=20, space={"optim.lr": {"loguniform": [1e-4, 1e-1]}})
    proc = run_ftl("sweep", changed, "--cluster", local_cluster(tmp_path, 3), "--out", out)
    assert proc.returncode == 2 and "holds a search with another space" in proc.stderr


@pytest.mark.slow
def test_a_killed_worker_leaves_no_trial_lost_or_counted_twice(tmp_path):
    """kill -9 a worker mid-trial: after stale_after_s another worker adopts its trial; the search ends with
    exactly n_trials trials, each told once; cancel + resume continue the same study."""
    out = tmp_path / "sw"
    path = search_file(tmp_path, n_trials=5, max_parallel=2, stale_after_s=5, program="jobs.objectives:sleep",
                       space={"optim.lr": {"loguniform": [1e-5, 1e-1]}, "train.epochs": {"choice": [30]}})  # fmt: skip
    assert run_ftl("sweep", path, "--cluster", local_cluster(tmp_path, 2), "--out", out).returncode == 0
    first = wait_for(lambda: list(mf.read(out).trials.values()), 60, "a first trial")[0]
    pid = int(json.loads((out / "workers" / f"w{first.slot}" / "local_job.json").read_text())["pid"])
    os.killpg(pid, signal.SIGKILL)  # the worker and its trial, mid-trial
    done = run_ftl("wait", out, "--poll", "1", timeout=300)
    man = mf.read(out)
    assert len(man.trials) == 5, man.trials.keys()
    assert len(journal_states(out)) == 5  # asked once each
    adopted = man.trials[first.id]
    assert adopted.state == "COMPLETED" and adopted.attempt >= 2  # finished by another worker
    assert done.returncode in (0, 1)  # the killed slot is LOST (exit 1) but every trial is done
    assert sorted(journal_states(out)) == ["COMPLETE"] * 5


@pytest.mark.slow
def test_cancel_then_resume_continues_the_study(tmp_path):
    out = tmp_path / "sw"
    path = search_file(tmp_path, n_trials=10, max_parallel=2, stale_after_s=5, program="jobs.objectives:sleep",
                       space={"optim.lr": {"loguniform": [1e-5, 1e-1]}, "train.epochs": {"choice": [20]}})  # fmt: skip
    assert run_ftl("sweep", path, "--cluster", local_cluster(tmp_path, 2), "--out", out).returncode == 0
    wait_for(lambda: len(mf.read(out).trials) >= 3, 60, "three trials")
    assert "cancelled" in run_ftl("cancel", out).stdout
    time.sleep(1)
    asked = len(mf.read(out).trials)
    assert asked < 10
    resumed = run_ftl("resume", out)
    assert resumed.returncode == 0 and "resubmitted" in resumed.stdout, resumed.stdout + resumed.stderr
    assert run_ftl("wait", out, "--poll", "1", timeout=300).returncode == 0
    assert len(mf.read(out).trials) == 10 and sorted(journal_states(out)) == ["COMPLETE"] * 10


def test_a_refresh_never_shows_a_trial_older_than_its_worker(tmp_path):
    """The race `ftl wait` lost: the lock read the trial (RUNNING), then its worker told it and exited, then the
    scheduler said the worker completed. The trials are read again after the workers, so a finished search is
    never reported as a finished worker with a trial still running."""
    from launcher.control import executor_for

    out = tmp_path / "sw"
    path = search_file(tmp_path, n_trials=2, max_parallel=1)
    assert run_ftl("sweep", path, "--cluster", local_cluster(tmp_path, 1), "--out", out).returncode == 0
    assert run_ftl("wait", out, "--poll", "0.5", timeout=120).returncode == 0
    log = out / "events.jsonl"
    full = log.read_bytes()
    told_at = full.index(b'{"e":"tell","id":"t00001"')
    log.write_bytes(full[:told_at])  # the log as the command read it, just before the worker's tell
    man = mf.read(out)
    assert man.trials["t00001"].state == "RUNNING"
    log.write_bytes(full)  # the worker tells the trial, writes its result and exits
    executor_for(man).refresh(man, mf.TrialFiles(man))
    mf.commit(man)  # what `ftl status` / `wait` do after asking the scheduler: the newer events are folded too
    assert {t.state for t in man.jobs.values()} == {"COMPLETED"}
    assert man.trials["t00001"].state == "COMPLETED"


# ---------------------------------------------------------------- on SLURM


@pytest.mark.slow
@pytest.mark.slurm
@SLURM_GROUP
def test_tpe_with_asha_on_slurm_from_a_wandb_file_survives_preemption_and_cancel(slurm, lfw, tmp_path):
    """Real fine-tuning trials: a W&B sweep file (bayes -> TPE, hyperband early_terminate), two worker slots on
    the local SLURM; one slot preempted (USR2) mid-trial checkpoints, requeues and resumes that trial exactly; the
    search ends with n_trials trials each told once; extended, cancelled and resumed, the same study goes on."""
    path = tmp_path / "wandb.yaml"
    path.write_text(yaml.safe_dump({
        "method": "bayes", "metric": {"name": "val_top1", "goal": "maximize"}, "run_cap": 4, "max_parallel": 2,
        "overrides": list(TINY),  # ftl's own key beside W&B's: the smallest model
        "parameters": {"learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
                       "epochs": {"value": 12}, "data.train_dir": {"value": str(lfw / "train")},
                       "data.val_dir": {"value": str(lfw / "val")}, "data.image_size": {"value": 32},
                       "data.num_workers": {"value": 0}, "train.checkpoint_every_steps": {"value": 2}},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3}}))  # fmt: skip
    cluster = yaml.safe_load((REPO / "cluster_configs" / "slurm_local.yaml").read_text())
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cluster))
    out = tmp_path / "sw"
    proc = run_ftl("sweep", path, "--cluster", tmp_path / "c.yaml", "--out", out)
    assert proc.returncode == 0 and "method bayes -> tpe" in proc.stdout, proc.stderr
    def running_with_a_checkpoint() -> list[str]:
        man = mf.read(out)
        return [t.id for t in man.trials.values() if t.state == "RUNNING"
                and list((out / t.run_dir / "checkpoints").glob("step_*/trainer.json"))]  # fmt: skip

    victim_trial = wait_for(running_with_a_checkpoint, 300, "a running trial with a checkpoint")[0]
    slot = mf.read(out).trials[victim_trial].slot
    victim_job = mf.read(out).jobs[f"w{slot}"].job_id
    subprocess.run(["scancel", "--signal=USR2", victim_job], check=True)
    done = run_ftl("wait", out, "--poll", "2", timeout=900)
    man = mf.read(out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(man.trials) == 4 and sorted(journal_states(out)) == sorted(
        "COMPLETE" if t.state == "COMPLETED" else "PRUNED" for t in man.trials.values())  # fmt: skip
    log = "".join(p.read_text() for p in out.glob("logs/*/*_log.out"))
    assert f"trial {victim_trial} attempt 2" in log and "(resuming step_" in log  # the preempted trial went on exactly
    # more budget, then a cancel mid-search and a resume: the same study
    more = run_ftl("sweep", path, "run_cap=6", "--cluster", tmp_path / "c.yaml", "--out", out)
    assert more.returncode == 0, more.stderr
    wait_for(lambda: len(mf.read(out).trials) >= 5, 300, "a fifth trial")
    assert "cancelled" in run_ftl("cancel", out).stdout
    wait_for(lambda: not [t for t in mf.read(out).jobs.values() if t.state in ("RUNNING", "PENDING")], 120,
             "the workers to stop")  # fmt: skip
    assert "resubmitted" in run_ftl("resume", out).stdout
    assert run_ftl("wait", out, "--poll", "2", timeout=900).returncode == 0
    assert len(mf.read(out).trials) == 6 and len(journal_states(out)) == 6
