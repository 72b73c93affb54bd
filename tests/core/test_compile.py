"""torch.compile at the root: the plain module keeps every name (phases, EMA, checkpoints, exports, the LR finder),
the compiled forward only computes outputs; fast settings resolve by device and run length."""

import json

import pytest
import torch
from safetensors.torch import load_file

from core import config, engine
from core.engine import COMPILE_MIN_UPDATES, resolve_speed
from tests.conftest import MOBILENET, lfw_overrides

pytestmark = pytest.mark.slow


def test_compiled_run_with_phases_ema_and_export_reuse(lfw, tmp_path):
    over = lfw_overrides(lfw, **{"data.image_size": 32, "data.batch_size": 8, "model.compile": "true",
                                 "model.compile_backend": "eager", "train.ema": "true", "train.epochs": 2})  # fmt: skip
    result = engine.fit(config.load("fine_tune", over), tmp_path / "run")  # head-only epoch, then all stages
    assert result["status"] == "completed"
    for name in ("last", "best", "ema"):
        keys = load_file(str(tmp_path / "run" / "export" / f"{name}.safetensors")).keys()
        assert not [k for k in keys if k.startswith(("_orig_mod.", "module."))], name
    ckpt = next((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert not [k for k in load_file(str(ckpt / "model.safetensors")) if "_orig_mod" in k]
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"val_ema_top1"' in log
    # the export is a valid model.pretrained of a later (compiled) run
    again = engine.fit(config.load("base", [*over, f"model.pretrained={tmp_path / 'run'}", "train.epochs=1"]),
                       tmp_path / "again")  # fmt: skip
    assert again["status"] == "completed"
    # and a compiled run resumes exactly like an eager one writes: same keys in both
    eager = engine.fit(config.load("fine_tune", [*over, "model.compile=false"]), tmp_path / "eager")
    assert load_file(str(tmp_path / "eager" / "export" / "last.safetensors")).keys() == load_file(
        str(tmp_path / "run" / "export" / "last.safetensors")).keys() and eager["status"] == "completed"  # fmt: skip


def test_lr_find_and_auto_lr_with_compile(lfw, tmp_path):
    over = lfw_overrides(lfw, **{**MOBILENET, "data.image_size": 32, "data.batch_size": 8, "model.compile": "true",
                                 "model.compile_backend": "eager", "lr_find.num_steps": 16, "train.epochs": 2})  # fmt: skip
    result = engine.find_lr(config.load("fine_tune", over), tmp_path / "lr")
    assert len(result.lrs) >= 2 and (tmp_path / "lr" / "lr_find.json").is_file()
    run = engine.fit(config.load("fine_tune", [*over, "optim.lr=auto"]), tmp_path / "run")
    chosen = json.loads((tmp_path / "run" / "lr_find.json").read_text())["chosen"]
    assert run["status"] == "completed" and chosen > 0


def test_fast_settings_resolve_by_device_and_run_length():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_speed("auto", "auto", cpu, 10_000).channels_last is False
    assert resolve_speed("auto", "auto", cpu, 10_000).compile is False
    fast = resolve_speed("auto", "auto", cuda, COMPILE_MIN_UPDATES)
    assert fast.channels_last and fast.compile and f">= {COMPILE_MIN_UPDATES}" in fast.note
    short = resolve_speed("auto", "auto", cuda, COMPILE_MIN_UPDATES - 1)
    assert short.channels_last and not short.compile and "<" in short.note
    explicit = resolve_speed(False, True, cuda, 1)  # explicit values always win
    assert not explicit.channels_last and explicit.compile and "as set" in explicit.note
    assert engine.resolve_precision("bf16") == ("bf16", "as set")
    assert engine.resolve_precision("auto")[0] == ("no" if not torch.cuda.is_available() else engine.resolve_precision("auto")[0])
