"""The `ftl` command end to end: real training, 2-process DDP, and one-line errors for bad input."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import ftl, lfw_overrides, run_ftl


def assert_one_line_error(proc, pattern: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ftl: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.slow
def test_train_end_to_end(lfw, tmp_path):
    proc = run_ftl("train", "base", *lfw_overrides(lfw, **{"train.epochs": 1}), "--run-dir", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"ftl: final val_top1 0\.\d+", proc.stdout)
    assert f"run dir {tmp_path / 'run'}" in proc.stdout
    assert (tmp_path / "run" / "export" / "best.safetensors").is_file()


@pytest.mark.slow
def test_two_process_ddp_ranks_agree(lfw, tmp_path):
    """torchrun starts 2 CPU processes (gloo); every rank reports the same validation metrics."""
    torchrun = Path(sys.executable).parent / "torchrun"
    import subprocess

    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "launcher.cli", "train", "base",
           *lfw_overrides(lfw, **{"data.num_workers": 1}), "--run-dir", str(tmp_path / "ddp")]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    finals = dict(re.findall(r"ftl: rank (\d): (final val_top1 \S+ val_top5 \S+ val_loss \S+)", proc.stdout))
    assert set(finals) == {"0", "1"} and finals["0"] == finals["1"], proc.stdout
    # each rank hashes its own weights (metrics are gathered, so equal by construction): DDP kept them in sync
    digests = dict(re.findall(r"ftl: rank (\d): weights ([0-9a-f]{16})$", proc.stdout, re.M))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], proc.stdout
    assert "2 process(es)" in proc.stdout
    assert (tmp_path / "ddp" / "export" / "last.safetensors").is_file()


@pytest.mark.slow
def test_two_process_lr_race_ranks_agree(lfw, tmp_path):
    """lr_find.race under torchrun: both ranks race alike (the same winner, the same weights after), and the run
    that follows keeps them in sync."""
    import subprocess

    torchrun = Path(sys.executable).parent / "torchrun"
    over = lfw_overrides(lfw, **{"data.num_workers": 0, "data.batch_size": 8, "data.image_size": 32, "train.epochs": 3,
                                 "lr_find.race": "[1,0.1]", "lr_find.race_epochs": 1})  # fmt: skip
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29535", "-m", "launcher.cli", "train", "fine_tune",
           *over, "--run-dir", str(tmp_path / "ddp")]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    race = json.loads((tmp_path / "ddp" / "lr_race_phase2.json").read_text())
    assert len(race["candidates"]) == 2 and f"ftl: lr race, phase 2: {race['chosen']:.2e} wins" in proc.stdout
    digests = dict(re.findall(r"ftl: rank (\d): weights ([0-9a-f]{16})$", proc.stdout, re.MULTILINE))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], proc.stdout


def test_missing_dataset_dir(tmp_path):
    proc = ftl("train", "base", f"data.train_dir={tmp_path}/nope", "--run-dir", tmp_path / "run")
    assert_one_line_error(proc, r"data.train_dir=.*nope: no such directory")
    assert not (tmp_path / "run").exists()


def test_class_count_mismatch(lfw, tmp_path):
    proc = ftl("train", "base", *lfw_overrides(lfw, **{"data.num_classes": 10}), "--run-dir", tmp_path / "run")
    assert_one_line_error(proc, r"data.num_classes=10 but .* has 2 class folders")
    assert not (tmp_path / "run").exists()


def test_unknown_model_suggests(lfw, tmp_path):
    proc = ftl("train", "base", *lfw_overrides(lfw, **{"model.name": "resnet5O", "model.pretrained": "null"}))
    assert_one_line_error(proc, r"model.name='resnet5O' is not a timm model \(did you mean: .*resnet50")


def test_weights_that_do_not_fit(lfw, tmp_path):
    import timm
    import torch

    torch.save(timm.create_model("mobilenetv2_050").state_dict(), tmp_path / "w.pth")
    proc = ftl("train", "base", *lfw_overrides(lfw, **{"model.name": "mobilenetv2_100", "model.pretrained": tmp_path / "w.pth"}),
                   "--run-dir", tmp_path / "run")  # fmt: skip
    assert_one_line_error(proc, r"w.pth: 'conv_stem.weight' has shape \(16, 3, 3, 3\) but mobilenetv2_100 needs")
    assert not (tmp_path / "run").exists()


def test_unwritable_output_dir(lfw, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    env = {}
    if os.geteuid() == 0:  # root writes anywhere: use a path under a regular file instead
        (tmp_path / "file").write_text("x")
        ro = tmp_path / "file"
    proc = ftl("train", "base", *lfw_overrides(lfw), "--run-dir", ro / "run", env=env)
    assert_one_line_error(proc, r"cannot write the run dir .*run")


def test_resume_dir_without_checkpoint(lfw, tmp_path):
    (tmp_path / "old").mkdir()
    proc = ftl("train", "base", *lfw_overrides(lfw, resume=tmp_path / "old"))
    assert_one_line_error(proc, r"resume=.*old: .*old holds no run \(no config.yaml, no checkpoint\)")


def test_bad_override_and_debug_shows_traceback(tmp_path):
    proc = ftl("train", "base", "optim.lrr=1")
    assert_one_line_error(proc, r"unknown key 'optim.lrr' \(did you mean: optim.lr")
    debug = run_ftl("--debug", "train", "base", "optim.lrr=1")  # a real process: its traceback
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_data_prepare_bad_name(tmp_path):
    proc = ftl("data", "prepare", "fashion_mnist", "--out", tmp_path / "x")
    assert_one_line_error(proc, r"unknown dataset 'fashion_mnist' \(did you mean: fashion-mnist")
    assert not (tmp_path / "x").exists()


def test_zoo_lists_offline_weights():
    proc = ftl("zoo")
    assert proc.returncode == 0 and "mobilenetv2_100.tv_in1k" in proc.stdout and "tf_efficientnet_lite0.in1k" in proc.stdout
