"""Run dirs that own their resumability: finished runs resume to their result, half-written and damaged
checkpoints, refusing to overwrite a run, resume with the run's own config, nothing rewritten before every check,
exact training-loss logs after a resume, and checkpoints that hold no pickles."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core import config, engine
from core.errors import FtlError
from core.run_dir import resume_config
from core.tracking import read_jsonl
from tests.conftest import lfw_overrides, run_ftl, stop_after

pytestmark = pytest.mark.slow


def over(lfw, **extra):
    return lfw_overrides(lfw, **{"data.image_size": 32, "data.batch_size": 8, **extra})


def test_finished_run_resumes_to_its_result_and_cli_refuses_to_overwrite_it(lfw, tmp_path):
    run = tmp_path / "run"
    first = engine.fit(config.load("base", over(lfw)), run)
    again = engine.fit(config.load("base", [*over(lfw), f"resume={run}"]))
    assert again["status"] == "completed" and again["val_top1"] == first["val_top1"]
    assert again["global_step"] == first["global_step"]
    assert json.loads((run / "result.json").read_text())["val_top1"] == first["val_top1"]
    proc = run_ftl("train", f"resume={run}")  # no recipe: the run's own config
    assert proc.returncode == 0 and f"final val_top1 {first['val_top1']:.4f}" in proc.stdout, proc.stderr[-2000:]
    before = (run / "export" / "last.safetensors").read_bytes()
    proc = run_ftl("train", "base", *over(lfw), "--run-dir", run)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr and f"resume={run}" in proc.stderr
    assert (run / "export" / "last.safetensors").read_bytes() == before


def test_kill_during_first_checkpoint_save_restarts_the_run(lfw, tmp_path):
    """A run killed while writing its first checkpoint: config.yaml and a .tmp_step dir, no complete checkpoint."""
    run = tmp_path / "run"
    engine.fit(config.load("base", over(lfw)), run, should_stop=stop_after(2))
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints" / ".tmp_step_00000002").mkdir(parents=True)
    (run / "checkpoints" / ".tmp_step_00000002" / "model.safetensors").write_bytes(b"half")
    result = engine.fit(config.load("base", [*over(lfw), f"resume={run}"]))
    assert result["status"] == "completed" and result["global_step"] == 10
    twin = engine.fit(config.load("base", over(lfw)), tmp_path / "twin")
    assert result["val_top1"] == twin["val_top1"]


def test_half_written_latest_checkpoint_is_ignored(lfw, tmp_path):
    run = tmp_path / "run"
    cfg = config.load("base", over(lfw, **{"train.checkpoint_every_steps": 1, "train.deterministic": "true"}))
    engine.fit(cfg, run, should_stop=stop_after(3))
    (run / "checkpoints" / "step_00000003" / "trainer.json").unlink()  # killed before its last file
    resumed = engine.fit(config.load("base", [*over(lfw, **{"train.checkpoint_every_steps": 1,
                                                            "train.deterministic": "true"}), f"resume={run}"]))  # fmt: skip
    twin = engine.fit(cfg, tmp_path / "twin")
    assert resumed["val_top1"] == twin["val_top1"]
    a, b = load_file(str(run / "export" / "last.safetensors")), load_file(str(tmp_path / "twin" / "export" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


DAMAGED_EXTRA = {"train.checkpoint_every_steps": 1, "train.keep_checkpoints": 3, "train.ema": "true",
                 "train.deterministic": "true"}  # fmt: skip


@pytest.fixture(scope="module")
def stopped_run_and_twin(lfw, tmp_path_factory):
    """One run stopped after 4 updates (checkpoints 2..4 kept) and its uninterrupted twin's result, shared by
    every damaged-file case (each damages its own copy)."""
    where = tmp_path_factory.mktemp("damaged")
    cfg = config.load("base", over(lfw, **DAMAGED_EXTRA))
    engine.fit(cfg, where / "run", should_stop=stop_after(4))
    return where / "run", engine.fit(cfg, where / "twin")


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.pt", "extra.pt", "rng_0.pt", "ema.safetensors",
                                     "trainer.json"])  # fmt: skip
def test_damaged_checkpoint_file_is_named_and_the_previous_one_offered(lfw, tmp_path, damaged, stopped_run_and_twin):
    stopped, twin = stopped_run_and_twin
    run = Path(shutil.copytree(stopped, tmp_path / "run"))
    path = run / "checkpoints" / "step_00000004" / damaged
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the size is right, the content is not
    path.write_bytes(bytes(data))
    config_before = (run / "config.yaml").stat().st_mtime_ns, (run / "config.yaml").read_bytes()
    metrics_before = (run / "metrics.jsonl").read_bytes()
    proc = run_ftl("train", f"resume={run}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    expected = damaged if damaged != "trainer.json" else "trainer.json is unreadable"
    assert "step_00000004 is damaged" in lines[0] and expected in lines[0], lines[0]
    assert f"resume={run / 'checkpoints' / 'step_00000003'}" in lines[0]
    # nothing in the run dir was rewritten by the failed resume
    assert ((run / "config.yaml").stat().st_mtime_ns, (run / "config.yaml").read_bytes()) == config_before
    assert (run / "metrics.jsonl").read_bytes() == metrics_before
    # the offered checkpoint resumes exactly, and the damaged one is set aside
    offered = f"resume={run / 'checkpoints' / 'step_00000003'}"
    resumed = engine.fit(config.load("base", [*over(lfw, **DAMAGED_EXTRA), offered]))
    assert resumed["val_top1"] == twin["val_top1"] and resumed["global_step"] == twin["global_step"]
    assert resumed["weights_digest"] == twin["weights_digest"]
    assert (run / "checkpoints" / "set_aside_step_00000004").is_dir()
    assert engine.fit(config.load("base", [*over(lfw, **DAMAGED_EXTRA), f"resume={run}"]))["status"] == "completed"


def test_resume_takes_the_runs_config_and_refuses_changes_that_make_another_run(lfw, tmp_path):
    run = tmp_path / "run"
    engine.fit(config.load("base", over(lfw, **{"optim.lr": 3e-3})), run, should_stop=stop_after(2))
    cfg = resume_config(str(run), None, [f"resume={run}", "data.num_workers=1", "train.log_every_steps=5"])
    assert cfg.optim.lr == 3e-3 and cfg.data.num_workers == 1  # the run's own lr, without retyping it
    for change in ("train.epochs=3", "model.head_dropout=0.5", "train.seed=1", "data.image_size=48"):
        with pytest.raises(FtlError, match=f"would change what the run is: {change.split('=')[0]}"):
            resume_config(str(run), None, [f"resume={run}", change])
    with pytest.raises(FtlError, match="optim.lr: 0.003 in the run, 0.001 now"):
        resume_config(str(run), "base", [*over(lfw), f"resume={run}"])  # the recipe without the run's lr
    forced = resume_config(str(run), None, [f"resume={run}", "train.epochs=3"], force=True)
    assert forced.train.epochs == 3
    config_before = (run / "config.yaml").read_bytes()
    proc = run_ftl("train", f"resume={run}", "train.epochs=3")
    assert proc.returncode == 2 and "train.epochs: 2 in the run, 3 now" in proc.stderr and "--force" in proc.stderr
    assert (run / "config.yaml").read_bytes() == config_before
    proc = run_ftl("train", f"resume={run}", "data.train_dir=/nonexistent", "--force")
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    assert (run / "config.yaml").read_bytes() == config_before  # a failing resume rewrites nothing


def test_resumed_epoch_logs_the_same_train_loss_as_its_twin(lfw, tmp_path):
    cfg = config.load("base", over(lfw, **{"train.deterministic": "true", "train.log_every_steps": 1}))
    engine.fit(cfg, tmp_path / "twin")
    engine.fit(cfg, tmp_path / "run", should_stop=stop_after(3))
    engine.fit(config.load("base", [*over(lfw, **{"train.deterministic": "true", "train.log_every_steps": 1}),
                                    f"resume={tmp_path / 'run'}"]))  # fmt: skip

    def losses(run):
        return [(r["step"], r["train_loss"]) for r in read_jsonl(run / "metrics.jsonl") if "train_loss" in r]

    assert losses(tmp_path / "run") == losses(tmp_path / "twin")


def test_checkpoint_files_hold_no_pickled_code(lfw, tmp_path):
    """Every checkpoint file loads with torch.load(weights_only=True) or safetensors, and nothing is .pkl."""
    run = tmp_path / "run"
    engine.fit(config.load("base", over(lfw, **{"train.ema": "true", "train.epochs": 1})), run)
    (ckpt,) = list((run / "checkpoints").glob("step_*"))
    for path in ckpt.iterdir():
        assert path.suffix in (".safetensors", ".pt", ".json"), path
        if path.suffix == ".pt":
            torch.load(path, weights_only=True)
    for path in [*ckpt.iterdir(), *(run / "export").iterdir()]:
        assert os.stat(path).st_mode & 0o044 == 0o044, f"{path} is not readable by the group and others"
