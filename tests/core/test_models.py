"""Freezing by name, parameter counts and BatchNorm handling."""

import pytest
import torch

from core.errors import FtlError
from core.models import build_model, count_params, freeze, set_frozen_bn_eval


@pytest.fixture
def model():
    return build_model("mobilenetv2_100", 5)[0]


def test_freeze_backbone_leaves_only_head_trainable(model):
    counts = freeze(model, "backbone", train_bn=False)
    head = sum(p.numel() for p in model.get_classifier().parameters())
    assert counts.trainable == head == 1280 * 5 + 5
    assert counts.frozen == sum(p.numel() for p in model.parameters()) - head
    assert all(not p.requires_grad for n, p in model.named_parameters() if not n.startswith("classifier"))


def test_freeze_backbone_train_bn_keeps_norms_trainable(model):
    counts = freeze(model, "backbone", train_bn=True)
    bn = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters())
    assert counts.trainable == 1280 * 5 + 5 + bn
    assert not model.conv_stem.weight.requires_grad and model.bn1.weight.requires_grad


def test_freeze_up_to_named_stage(model):
    freeze(model, "blocks.2", train_bn=False)
    names = {n: p.requires_grad for n, p in model.named_parameters()}
    assert not names["conv_stem.weight"] and not names["blocks.2.0.conv_pw.weight"]
    assert names["blocks.3.0.conv_pw.weight"] and names["classifier.weight"]
    counts = count_params(model)
    assert counts.frozen == sum(p.numel() for n, p in model.named_parameters() if n.startswith(("conv_stem", "bn1",
                                "blocks.0.", "blocks.1.", "blocks.2.")))  # fmt: skip


def test_freeze_none_and_unknown_stage(model):
    assert freeze(model, "none").frozen == 0
    with pytest.raises(FtlError, match=r"model.freeze='block.3': no such module \(did you mean: blocks.3"):
        freeze(model, "block.3")


def test_frozen_bn_keeps_running_stats(model):
    freeze(model, "backbone", train_bn=False)
    model.train()
    set_frozen_bn_eval(model)
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 64, 64))
    assert torch.equal(before, model.bn1.running_mean)
    assert model.classifier.training
