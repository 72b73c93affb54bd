"""Checkpoints that survive the worst instants: a kill between moving a checkpoint aside and renaming its
replacement into place (with keep_checkpoints 1, the only one), and a disk that fills up during a save."""

import os
import shutil
import signal
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from core import config, engine
from core.errors import FtlError
from tests.conftest import TINY, fault, lfw_overrides, run_ftl

pytestmark = pytest.mark.slow


def over(lfw, **extra):
    return [*lfw_overrides(lfw, **{"data.image_size": 32, "data.batch_size": 8, "train.deterministic": "true", **extra}),
            *TINY]  # fmt: skip


def same_weights(a, b) -> bool:
    x, y = load_file(str(a / "export" / "last.safetensors")), load_file(str(b / "export" / "last.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_a_kill_between_moving_the_old_checkpoint_aside_and_the_rename_keeps_it(lfw, tmp_path):
    """5 updates an epoch, a checkpoint every 5 steps and keep_checkpoints 1: the epoch's end saves step 5 again, so
    step_5 - the only checkpoint - is moved aside; kill -9 right there. The resume finds it (not a restart from
    zero) and ends with the weights of an uninterrupted twin."""
    extra = {"train.checkpoint_every_steps": 5, "train.keep_checkpoints": 1}
    run = tmp_path / "run"
    proc = run_ftl("train", "base", *over(lfw, **extra), "--run-dir", run, env=fault("checkpoint-moved-aside"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (run / "checkpoints" / "step_00000005").exists() and (run / "checkpoints" / ".old_step_00000005").is_dir()
    resumed = run_ftl("train", f"resume={run}")  # real processes on both sides: the same threads, the same sums
    assert resumed.returncode == 0 and "(resuming step_00000005, epoch 1)" in resumed.stdout, resumed.stderr[-2000:]
    twin = tmp_path / "twin"
    assert run_ftl("train", "base", *over(lfw, **extra), "--run-dir", twin).returncode == 0
    assert same_weights(run, twin)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_one_before_survives(lfw, tmp_path):
    """The run dir on a small tmpfs: the first epoch's checkpoint fits, the second does not - one line naming the
    path and the free space, step_5 intact; with space freed, the resume ends where an uninterrupted run does."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        run = mount / "run"
        first = engine.fit(config.load("base", over(lfw, **{"train.epochs": 1})), run)
        assert first["global_step"] == 5
        checkpoint = sum(p.stat().st_size for p in (run / "checkpoints" / "step_00000005").iterdir())
        free = shutil.disk_usage(mount).free
        (mount / "filler").write_bytes(b"\0" * max(0, free - checkpoint // 2))
        longer = [*over(lfw, **{"train.epochs": 2}), f"resume={run}"]
        with pytest.raises(FtlError, match=r"no space left on the device of .*checkpoints \(\d+ MiB free\) while saving "
                                           r"step 10: the checkpoints before it are intact \(step_00000005\)"):  # fmt: skip
            engine.fit(config.load("base", longer))
        assert not list((run / "checkpoints").glob(".tmp_step_*"))
        (mount / "filler").unlink()
        done = engine.fit(config.load("base", longer))
        assert done["status"] == "completed" and done["global_step"] == 10
    finally:
        subprocess.run(["umount", "-l", str(mount)])
