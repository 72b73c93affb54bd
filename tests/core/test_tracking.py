"""W&B tracking, offline: one run per training run with its config, group, name and metrics; the same run id
after a resume; no W&B at all when disabled (slow: real training). WandbTracker alone: the best of a metric, how a
run ended (summary, tags, exit code), names cut to W&B's limits. The run-file reader (tests/wandb_files.py): the
same records as wandb's own reader, a file still being written, a damaged one."""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core import config, engine
from core.errors import FtlError
from core.tracking import NAME_LIMIT, TAG_LIMIT, WandbTracker
from tests.conftest import lfw_overrides
from tests.wandb_files import CorruptRunFile, read_offline_run, records


@pytest.mark.slow
def test_offline_run_has_config_group_name_and_metrics(lfw, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    over = lfw_overrides(lfw, **{"tracking.wandb": "true", "tracking.group": "sweep-a", "tracking.name": "trial-1",
                                 "tracking.log_samples": 4, "tracking.trial": "t00003", "tracking.sweep_dir": "/sw/x"})  # fmt: skip
    engine.fit(config.load("base", over), tmp_path / "run")
    (run_dir,) = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    run = read_offline_run(run_dir)
    assert run["group"] == "sweep-a" and run["name"] == "trial-1" and "trial:t00003" in run["tags"]
    assert run["config"]["tracking"]["trial"] == "t00003" and run["config"]["tracking"]["sweep_dir"] == "/sw/x"
    assert "ftl: epoch" in (run_dir / "files" / "output.log").read_text()  # the console is in the run
    assert run["config"]["optim"]["lr"] == 1e-3 and run["config"]["data"]["image_size"] == 64
    epochs = [h for h in run["history"] if "val_top1" in h]
    assert [h["epoch"] for h in epochs] == [1, 2] and all(0 <= h["val_top1"] <= 1 for h in epochs)
    assert any("train_loss" in h and "lr" in h for h in run["history"])
    assert any(k.startswith("val_samples") for h in run["history"] for k in h)  # the table of predictions
    assert list((run_dir / "files" / "media" / "table").glob("val_samples*.table.json"))
    assert any(k.startswith("augment_preview") for h in run["history"] for k in h)
    assert list((run_dir / "files" / "media" / "images").glob("augment_preview*.png"))


@pytest.mark.slow
def test_same_run_id_after_resume(lfw, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    over = lfw_overrides(lfw, **{"tracking.wandb": "true", "data.batch_size": 8})
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    assert engine.fit(config.load("base", over), tmp_path / "run", should_stop=stop)["status"] == "interrupted"
    engine.fit(config.load("base", [*over, f"resume={tmp_path / 'run'}"]))
    runs = [read_offline_run(p) for p in sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))]
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"]  # one W&B run, continued
    # how each part ended is in the run: the first stopped (preempted), the second finished, with the best kept
    assert runs[0]["summary"]["ftl_status"] == "interrupted" and "preempted" in runs[0]["tags"]
    assert runs[1]["summary"]["ftl_status"] == "completed" and "preempted" not in runs[1]["tags"]
    assert {"max", "last"} <= set(runs[1]["summary"]["val_top1"])


def test_a_failed_run_looks_failed_in_wandb(lfw, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    over = lfw_overrides(lfw, **{"tracking.wandb": "true", "data.batch_size": 8})

    def boom() -> bool:
        raise RuntimeError("a crash in the middle of training")

    with pytest.raises(RuntimeError, match="a crash"):
        engine.fit(config.load("base", over), tmp_path / "run", should_stop=boom)
    (run,) = [read_offline_run(p) for p in (tmp_path / "run" / "wandb").glob("offline-run-*")]
    assert run["summary"]["ftl_status"] == "failed" and "failed" in run["tags"] and run["exit_code"] == 1


@pytest.mark.slow
def test_wandb_disabled_imports_nothing(lfw, tmp_path):
    """timm imports the wandb module (timm.utils.summary), so the check is that nothing of W&B ran: no run was
    started, no W&B file or dir was written, no W&B environment was set."""
    code = (
        "import os, sys\nfrom core import config, engine\n"
        f"engine.fit(config.load('base', {lfw_overrides(lfw, **{'train.epochs': 1})!r}), {str(tmp_path / 'run')!r})\n"
        "wandb = sys.modules.get('wandb')\n"
        "assert wandb is None or wandb.run is None, 'a W&B run was started'\n"
        "assert not [k for k in os.environ if k.startswith('WANDB_') and k != 'WANDB_MODE'], 'W&B env was set'\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(tmp_path.rglob("*wandb*"))


# ---------------------------------------------------------------- WandbTracker alone (no training)


def tracked_run(run_dir: Path, status: str | None, name: str = "trial", tags: tuple[str, ...] = ("ftl",)) -> dict:
    """A tiny real run: val_top1 / val_loss over 3 epochs, best in the middle; read back from its run file."""
    tracker = WandbTracker(run_dir, {"optim": {"lr": 0.01}}, "proj", None, "grid-0123abcd", name, "fine-tune",
                           list(tags), None)  # fmt: skip
    tracker.define_metric("val_top1", "max")
    tracker.define_metric("val_loss")  # the goal of a loss: min
    for epoch, (top1, loss) in enumerate([(0.5, 0.9), (0.8, 0.4), (0.7, 0.6)], 1):
        tracker.log({"step": epoch * 10, "epoch": epoch, "val_top1": top1, "val_loss": loss, "time": 0.0}, epoch * 10)
    tracker.finish(status)
    tracker.finish(status)  # a second finish (an engine's cleanup path) does nothing
    (path,) = list((run_dir / "wandb").glob("offline-run-*"))
    return read_offline_run(path)


ENDINGS = [("completed", None, 0), ("pruned", "pruned", 0), ("interrupted", "preempted", 0), ("failed", "failed", 1)]


@pytest.mark.parametrize(("status", "tag", "exit_code"), ENDINGS)
def test_a_run_records_how_it_ended_and_its_best(tmp_path, monkeypatch, status, tag, exit_code):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tracked_run(tmp_path, status)
    assert run["summary"]["ftl_status"] == status and run["exit_code"] == exit_code
    assert run["tags"] == ["ftl", *([tag] if tag else [])]
    assert run["summary"]["val_top1"] == {"max": 0.8, "last": 0.7}  # the best kept, beside the last
    assert run["summary"]["val_loss"] == {"min": 0.4, "last": 0.6}
    assert run["group"] == "grid-0123abcd" and run["name"] == "trial" and run["config"]["optim"] == {"lr": 0.01}
    history = [(h["_step"], h["epoch"], h["val_top1"]) for h in run["history"]]
    assert history == [(10, 1, 0.5), (20, 2, 0.8), (30, 3, 0.7)]
    assert not any("time" in h or "step" in h for h in run["history"])


def test_long_names_and_tags_are_cut_to_wandbs_limits(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    name = " ".join(f"augment.key{i}=value{i}" for i in range(30))
    run = tracked_run(tmp_path, None, name=name, tags=("t" * 100,))
    assert len(run["name"]) <= NAME_LIMIT and run["name"].startswith("augment.key0=value0 augment.key1=value1")
    assert len(run["tags"][0]) <= TAG_LIMIT and run["exit_code"] == 0 and "ftl_status" not in run["summary"]
    (tmp_path / "other").mkdir()
    tracker = WandbTracker(tmp_path / "other", {}, "proj", None, None, None, "fine-tune", [], None)
    with pytest.raises(ValueError, match="status must be one of completed, pruned, interrupted, failed"):
        tracker.finish("crashed")
    tracker.finish()


# ---------------------------------------------------------------- the run-file reader


@pytest.fixture(scope="module")
def run_file(tmp_path_factory) -> Path:
    """A finished offline run file spanning several 32 KiB blocks (records split over blocks)."""
    import wandb

    root = tmp_path_factory.mktemp("runfile")
    run = wandb.init(project="p", dir=str(root), mode="offline", settings=wandb.Settings(console="off"))
    for step in range(300):  # records of every size, one longer than a block (FIRST, MIDDLE, LAST pieces)
        run.log({"loss": 1 / (step + 1), "note": "x" * (step * 7 if step != 150 else 80_000)}, step=step)
    run.finish()
    (path,) = list(root.glob("wandb/offline-run-*/run-*.wandb"))
    assert path.stat().st_size > 4 * 32 * 1024
    return path


def test_reader_reads_what_wandb_reads(run_file):
    """wandb 0.31 ships a reader of its own (`wandb leet inspect --json`, in Go): both see the same records."""
    ours = records(run_file)
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_file)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if proc.returncode != 0 and re.search(r"No such (command|option)", proc.stderr):
        pytest.skip("this wandb has no `wandb leet inspect --json` (0.31 has)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [r["type"] for r in theirs] == [r.WhichOneof("record_type") for r in ours]
    assert len(ours) > 300 and any(len(r.SerializeToString()) > 32 * 1024 for r in ours)
    history = [r for r in ours if r.WhichOneof("record_type") == "history"]
    assert [json.loads(next(i.value_json for i in r.history.item if i.nested_key == ["loss"])) for r in history] == [
        1 / (s + 1) for s in range(300)]  # fmt: skip


def test_reader_skips_a_record_still_being_written(run_file, tmp_path):
    full = [r.SerializeToString() for r in records(run_file)]
    data, cut = run_file.read_bytes(), tmp_path / "run-cut.wandb"
    for end in [*range(7, len(data), len(data) // 150), *range(len(data) - 40, len(data) + 1)]:
        cut.write_bytes(data[:end])
        got = [r.SerializeToString() for r in records(cut)]
        assert got == full[: len(got)], end  # whole records, in order, never a half one
    assert len(got) == len(full)


def test_reader_refuses_a_damaged_file(run_file, tmp_path):
    data = bytearray(run_file.read_bytes())
    data[len(data) // 2] ^= 0x20
    (tmp_path / "run-x.wandb").write_bytes(bytes(data))
    with pytest.raises(CorruptRunFile, match="bad record at byte"):
        records(tmp_path / "run-x.wandb")
    (tmp_path / "run-y.wandb").write_bytes(b"not a run file")
    with pytest.raises(CorruptRunFile, match="is not a W&B run file"):
        records(tmp_path / "run-y.wandb")


def test_read_offline_run_waits_for_the_end_of_the_run(run_file, tmp_path):
    """Read while wandb-core is still writing (it writes from its own process): the reader waits for the exit
    record and for the file to stop growing, then reads the whole run."""
    run_dir = tmp_path / "offline-run-x"
    shutil.copytree(run_file.parent, run_dir)
    target, data = run_dir / run_file.name, run_file.read_bytes()
    target.write_bytes(data[: len(data) // 3])

    def write_the_rest() -> None:
        with open(target, "ab") as f:
            for start in range(len(data) // 3, len(data), 4096):
                time.sleep(0.01)
                f.write(data[start : start + 4096])
                f.flush()

    writer = threading.Thread(target=write_the_rest)
    writer.start()
    run = read_offline_run(run_dir)
    writer.join()
    assert run["exit_code"] == 0 and len(run["history"]) == 300
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(TimeoutError, match="no exit record after 1 s"):
        read_offline_run(run_dir, timeout=1)


def test_online_without_a_key_is_refused_before_the_run_dir_exists(lfw, tmp_path, monkeypatch):
    """The refusal came after the run dir was written, so the same command, once logged in, was refused too."""
    for var in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    cfg = config.load("base", lfw_overrides(lfw, **{"tracking.wandb": "true", "train.epochs": 1}))
    with pytest.raises(FtlError, match="WANDB_MODE=online but no W&B API key"):
        engine.fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert engine.fit(cfg, tmp_path / "run")["status"] == "completed"  # the same run dir, once the cause is fixed
