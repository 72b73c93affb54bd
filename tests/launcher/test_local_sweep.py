"""Real sweeps on the local executor: queue, status, wait, a failing trial, cancel + resume, early stopping."""

import json
import re
import time

import pytest
import yaml

from launcher import manifest as mf
from tests.conftest import ftl, run_ftl, wait_for

pytestmark = pytest.mark.slow


def sweep_file(tmp_path, lfw, **spec):
    common = [f"data.train_dir={lfw}/train", f"data.val_dir={lfw}/val", "data.image_size=32", "data.batch_size=16",
              "data.num_workers=0", "train.epochs=2"]  # fmt: skip
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"recipe": "base", "name": "t", "overrides": common, **spec}, sort_keys=False))
    return path


def cluster_file(tmp_path, max_parallel=2):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"name": "here", "executor": "local", "max_parallel": max_parallel,
                                    "env": {"OMP_NUM_THREADS": "1"}}))  # fmt: skip
    return path


def broken_images(tmp_path):
    """An ImageFolder tree that passes every check before a run but cannot be decoded: the trial fails."""
    for cls in ("a", "b"):
        (tmp_path / "broken" / cls).mkdir(parents=True)
        (tmp_path / "broken" / cls / "x.png").write_bytes(b"\x89PNG not really")
    return tmp_path / "broken"


def test_local_sweep_with_a_failing_trial(lfw, tmp_path):
    spec = {"zip": {"data.train_dir": [f"{lfw}/train", f"{lfw}/train", str(broken_images(tmp_path))],
                    "optim.lr": [1e-3, 3e-3, 1e-3]}}  # fmt: skip
    out = tmp_path / "sw"
    proc = run_ftl("sweep", sweep_file(tmp_path, lfw, **spec), "--cluster", cluster_file(tmp_path), "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert f"sweep dir {out}" in proc.stdout and "queued 3 of 3" in proc.stdout
    done = run_ftl("wait", out, "--poll", "1", timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr  # a trial failed: wait says so in its exit code
    assert "1 of 3 trials did not complete" in done.stdout and "ftl resume" in done.stdout
    # the broken images fail again on resume: wait says so, with the cause, instead of "needs ftl resume"
    assert "1 failed for a reason of their own that a resume would repeat" in done.stdout, done.stdout
    (failed,) = [t.id for t in mf.read(out).trials.values() if t.state == "FAILED"]
    assert "trials need `ftl resume" not in done.stdout and f"({failed}: data.val_dir=" in done.stdout, done.stdout
    assert "2 completed, 1 failed" in done.stderr  # progress lines without a terminal, one per change
    man = mf.read(out)
    states = sorted(t.state for t in man.trials.values())
    assert states == ["COMPLETED", "COMPLETED", "FAILED"]
    best = man.best()
    assert best is not None and "best trial" in done.stdout and 0 <= best.result["val_top1"] <= 1
    status = run_ftl("status", out)
    assert status.returncode == 0 and "2 completed, 1 failed" in status.stdout

    # grow it in place: one more value; the finished trials are not run again, the new one (and the failed) are
    before = {t.id: (t.attempt, t.job_ids) for t in mf.read(out).trials.values() if t.state == "COMPLETED"}
    spec["zip"] = {"data.train_dir": [*spec["zip"]["data.train_dir"], f"{lfw}/train"],
                   "optim.lr": [*spec["zip"]["optim.lr"], 2e-3]}  # fmt: skip
    path = sweep_file(tmp_path, lfw, **spec)
    grown = run_ftl("sweep", path, "--cluster", cluster_file(tmp_path), "--out", out)
    assert grown.returncode == 0, grown.stderr
    assert "1 new trials added (3 of the file's 4 were there already)" in grown.stdout, grown.stdout
    assert run_ftl("wait", out, "--poll", "1", timeout=600).returncode == 1  # the broken images fail again
    man = mf.read(out)
    assert len(man.trials) == 4 and sorted(t.state for t in man.trials.values()) == ["COMPLETED"] * 3 + ["FAILED"]
    assert {t.id: (t.attempt, t.job_ids) for t in man.trials.values() if t.id in before} == before
    other = yaml.safe_load(path.read_text())
    other["overrides"].append("train.epochs=3")  # every trial would differ from those run: not the same grid
    path.write_text(yaml.safe_dump(other))
    refused = ftl("sweep", path, "--cluster", cluster_file(tmp_path), "--out", out)
    assert refused.returncode == 2 and "holds a grid with another" in refused.stderr, refused.stderr


def test_early_stopping_prunes_a_bad_trial(lfw, tmp_path):
    out = tmp_path / "sw"
    spec = {"zip": {"optim.lr": [1e-3, 30.0], "optim.name": ["adamw", "sgd"]},
            "early_stop": {"min_epochs": 1, "reduction_factor": 2}}  # fmt: skip
    path = sweep_file(tmp_path, lfw, **spec)
    data = yaml.safe_load(path.read_text())
    data["overrides"] = [o for o in data["overrides"] if not o.startswith(("train.epochs", "data.image_size"))]
    data["overrides"] += ["train.epochs=3", "data.image_size=64"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run_ftl("sweep", path, "--cluster", cluster_file(tmp_path, 1), "--out", out).returncode == 0
    assert run_ftl("wait", out, "--poll", "1", timeout=600).returncode == 0
    man = mf.read(out)
    by_lr = {t.overrides[0]: t for t in man.trials.values()}
    assert by_lr["optim.lr=0.001"].state == "COMPLETED"
    assert by_lr["optim.lr=30.0"].state == "PRUNED"
    progress = json.loads((out / by_lr["optim.lr=30.0"].run_dir / "progress.json").read_text())
    assert progress["epoch"] < 3
    assert (out / "optuna.journal").is_file()


def test_sweep_bad_input_leaves_nothing(lfw, tmp_path):
    out = tmp_path / "sw"
    bad = sweep_file(tmp_path, lfw, grid={"optim.lrr": [1]})
    proc = run_ftl("sweep", bad, "--out", out)
    assert proc.returncode == 2 and "unknown key 'optim.lrr'" in proc.stderr and not out.exists()
    good = sweep_file(tmp_path, lfw, grid={"optim.lr": [1e-3]})
    out.mkdir()
    proc = run_ftl("sweep", good, "--out", out)
    assert proc.returncode == 2 and "already exists" in proc.stderr
    proc = run_ftl("status", tmp_path)
    assert proc.returncode == 2 and "is not a sweep dir" in proc.stderr
    proc = run_ftl("sweep", good, "--cluster", "nope", "--out", tmp_path / "x")
    assert proc.returncode == 2 and "unknown cluster 'nope'" in proc.stderr and not (tmp_path / "x").exists()


def test_live_progress_in_status_and_in_trial_logs(lfw, tmp_path):
    """A running trial shows its step, images per second and ETA in `ftl status`; its log (not a terminal) gets a
    step line; `ftl wait` without a terminal prints a line per change."""
    out = tmp_path / "sw"
    path = sweep_file(tmp_path, lfw, grid={"optim.lr": [1e-3]})
    data = yaml.safe_load(path.read_text())
    data["overrides"] += ["train.epochs=3", "train.log_every_steps=1", "data.batch_size=4"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert run_ftl("sweep", path, "--cluster", cluster_file(tmp_path, 1), "--out", out).returncode == 0
    deadline, seen = time.time() + 300, ""
    while time.time() < deadline and not seen:
        rows = [line.split() for line in run_ftl("status", out).stdout.splitlines() if "RUNNING" in line]
        seen = next((r for r in rows if re.fullmatch(r"\d+/10", r[3]) and re.fullmatch(r"\d+", r[6])), "")
        time.sleep(0.5)
    assert seen, "no running trial with a step and img/s"
    done = run_ftl("wait", out, "--poll", "1", timeout=600)
    assert done.returncode == 0 and "1 completed" in done.stderr.splitlines()[-1]
    log = (out / next(iter(mf.read(out).trials.values())).run_dir / "train.log").read_text()
    assert re.search(r"ftl: epoch 1/3 step \d+/10 loss [\d.]+ lr \S+ \d+ img/s eta \d+:\d\d:\d\d", log), log[-2000:]
