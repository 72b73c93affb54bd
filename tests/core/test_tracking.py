"""W&B tracking, offline: one run per training run with its config, group, name and metrics; the same run id
after a resume; no W&B at all when disabled."""

import subprocess
import sys

import pytest

from core import config, engine
from tests.conftest import lfw_overrides
from tests.wandb_files import read_offline_run

pytestmark = pytest.mark.slow


def test_offline_run_has_config_group_name_and_metrics(lfw, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    over = lfw_overrides(lfw, **{"tracking.wandb": "true", "tracking.group": "sweep-a", "tracking.name": "trial-1",
                                 "tracking.log_samples": 4})  # fmt: skip
    engine.fit(config.load("base", over), tmp_path / "run")
    (run_dir,) = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    run = read_offline_run(run_dir)
    assert run["group"] == "sweep-a" and run["name"] == "trial-1"
    assert run["config"]["optim"]["lr"] == 1e-3 and run["config"]["data"]["image_size"] == 64
    epochs = [h for h in run["history"] if "val_top1" in h]
    assert [h["epoch"] for h in epochs] == [1, 2] and all(0 <= h["val_top1"] <= 1 for h in epochs)
    assert any("train_loss" in h and "lr" in h for h in run["history"])
    assert any(k.startswith("val_samples") for h in run["history"] for k in h)  # the table of predictions
    assert list((run_dir / "files" / "media" / "table").glob("val_samples*.table.json"))
    assert any(k.startswith("augment_preview") for h in run["history"] for k in h)
    assert list((run_dir / "files" / "media" / "images").glob("augment_preview*.png"))


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
