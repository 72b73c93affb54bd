"""Transfer-learning recipes end to end on real data: phases, progressive resizing, augmentation, preview,
LR auto, the domain-adaptation chain, and their bad-input errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from core import config, engine
from core.config import AugmentConfig
from core.data.transforms import batch_mixer
from core.errors import FtlError
from core.preview import augment_grid
from core.tracking import read_jsonl
from tests.conftest import lfw_overrides


def test_mixup_cutmix_soft_targets_sum_to_one():
    mixer = batch_mixer(AugmentConfig(mixup=0.4, cutmix=1.0, label_smoothing=0.1), num_classes=5)
    torch.manual_seed(0)
    np.random.seed(0)  # timm's Mixup draws lambda from numpy: unseeded, a near-1 CutMix box can mix nothing
    images, targets = torch.rand(8, 3, 16, 16), torch.randint(0, 5, (8,))
    for _ in range(5):  # both MixUp and CutMix get drawn
        mixed, soft = mixer(images.clone(), targets)
        assert soft.shape == (8, 5) and torch.allclose(soft.sum(1), torch.ones(8))
        assert (soft >= 0).all() and not torch.equal(mixed, images)
    assert batch_mixer(AugmentConfig(), 5) is None


def test_augment_preview_writes_a_valid_image(lfw, tmp_path):
    cfg = config.load("heavy_augment", lfw_overrides(lfw, **{"augment.rotate": 20, "augment.channel_shift": 0.1,
                                                           "augment.grayscale": 0.2, "augment.shear": 10}))  # fmt: skip
    out = augment_grid(cfg, tmp_path / "grid.png", samples=3, repeats=4)
    image = Image.open(out)
    image.verify()
    assert Image.open(out).size == (4 * 66 + 2, 4 * 66 + 2)  # 3 sample rows + 1 mixed row of 64 px tiles
    assert not list(tmp_path.glob(".*.tmp"))


def test_unknown_policy_is_one_clear_error(lfw, tmp_path):
    cfg = config.load("base", lfw_overrides(lfw, **{"augment.policy": "rand-x9"}))
    with pytest.raises(FtlError, match=r"augment.policy='rand-x9' is not a known policy"):
        engine.fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bad_stage_and_phase_errors(lfw, tmp_path):
    with pytest.raises(FtlError, match=r"model.freeze='blocks.99': no such module"):
        engine.fit(config.load("base", lfw_overrides(lfw, **{"model.freeze": "blocks.99"})), tmp_path / "a")
    with pytest.raises(FtlError, match=r"finetune.freeze_epochs=2 leaves no unfrozen epoch in train.epochs=2"):
        engine.fit(config.load("fine_tune", lfw_overrides(lfw, **{"finetune.freeze_epochs": 2})), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_progressive_resizing_and_phases_in_a_run(lfw, tmp_path):
    over = lfw_overrides(lfw, **{"data.image_size": "[[0,32],[1,48]]", "data.batch_size": 8, "augment.mixup": 0.2,
                                 "finetune.strategy": "gradual", "train.ema": "true", "augment.policy": "trivial",
                                 "model.act_layer": "mish"})  # fmt: skip
    result = engine.fit(config.load("fine_tune", over), tmp_path / "run")
    steps = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "input_px" in r]
    assert {r["input_px"] for r in steps if r["epoch"] == 1} == {32}  # epochs count from 1 in every record
    assert {r["input_px"] for r in steps if r["epoch"] == 2} == {48}
    assert "val_ema_top1" in result and (tmp_path / "run" / "export" / "ema.safetensors").is_file()


@pytest.mark.slow
def test_lr_auto_runs_the_finder_and_records_it(lfw, tmp_path):
    over = lfw_overrides(lfw, **{"optim.lr": "auto", "lr_find.num_steps": 30, "lr_find.end_lr": 1.0,
                                 "train.epochs": 1})  # fmt: skip
    result = engine.fit(config.load("base", over), tmp_path / "run")
    found = json.loads((tmp_path / "run" / "lr_find.json").read_text())
    assert result["status"] == "completed" and 1e-7 <= found["chosen"] <= 1.0
    assert (tmp_path / "run" / "lr_find.png").stat().st_size > 1000


@pytest.mark.slow
def test_lr_auto_with_diverging_finder_is_an_error(lfw, tmp_path):
    over = lfw_overrides(lfw, **{"optim.lr": "auto", "lr_find.start_lr": 1e3, "lr_find.end_lr": 1e6,
                                 "lr_find.num_steps": 10})  # fmt: skip
    with pytest.raises(FtlError, match=r"optim.lr=auto: the LR finder diverged"):
        engine.fit(config.load("base", over), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_domain_adaptation_chain(tmp_path):
    """Train on Fashion-MNIST classes 0-4, then fine-tune that export on classes 5-9."""
    from core.data import bundled

    first = bundled.prepare("fashion-mnist", tmp_path / "a", per_class=16, val_per_class=8, classes=[0, 1, 2, 3, 4])
    second = bundled.prepare("fashion-mnist", tmp_path / "b", per_class=16, val_per_class=8, classes=[5, 6, 7, 8, 9])
    common = ["data.image_size=32", "data.batch_size=16", "data.num_workers=0", "train.epochs=1"]
    engine.fit(config.load("fine_tune", [*common, "train.epochs=2", f"data.train_dir={first}/train",
                                         f"data.val_dir={first}/val"]), tmp_path / "run-a")  # fmt: skip
    result = engine.fit(config.load("base", [*common, f"model.pretrained={tmp_path / 'run-a'}",
                                             f"data.train_dir={second}/train", f"data.val_dir={second}/val"]),
                        tmp_path / "run-b")  # fmt: skip
    meta = json.loads((tmp_path / "run-b" / "export" / "model.json").read_text())
    assert result["status"] == "completed" and meta["classes"] == sorted(bundled.FASHION_MNIST_CLASSES[5:])
    assert meta["config"]["model"]["pretrained"] == str(tmp_path / "run-a")
