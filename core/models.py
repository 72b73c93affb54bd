"""Build a timm backbone with a task head, load pretrained weights, and freeze parts of it.

The head is always replaced for the task's class count: a linear layer, a dense MLP head (timm's `Mlp`), or an
embedding head (features -> embedding -> classifier, for metric losses: core/losses.py).
Freezing works on module names, so it fits any timm model: `backbone` freezes all but the head, a name such as
`blocks.3` (or `layer2`, `stem`...) freezes every parameter up to and including that module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from core import zoo
from core.errors import FtlError, did_you_mean


@dataclass
class ParamCounts:
    trainable: int
    frozen: int

    def __str__(self) -> str:
        total = self.trainable + self.frozen
        return f"{self.trainable:,} trainable / {self.frozen:,} frozen parameters ({total:,} total)"


def check_model_name(name: str) -> None:
    arch = name.split(".")[0]
    if not timm.is_model(arch):
        raise FtlError(f"unknown timm model '{name}'{did_you_mean(arch, timm.list_models())}")


def build_model(
    name: str,
    num_classes: int,
    pretrained: str | None = None,
    head: str = "linear",
    head_hidden: int = 512,
    head_dropout: float = 0.0,
    drop_path_rate: float = 0.0,
    act_layer: str | None = None,
    embedding_dim: int | None = None,
) -> tuple[nn.Module, str]:
    """A timm model with weights from `pretrained` (see core/zoo.py) and a fresh head; returns (model, source).
    act_layer swaps the activation (timm names: mish, leaky_relu, silu, ...) where the architecture takes one.
    The model's pretrained_cfg (mean, std, crop_pct: `data_config`) is the pretrained tag's when timm knows it."""
    check_model_name(name)
    kwargs: dict = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    if act_layer:
        from timm.layers import get_act_layer

        try:
            kwargs["act_layer"] = get_act_layer(act_layer)
        except (KeyError, ValueError, AssertionError):
            raise FtlError(f"model.act_layer={act_layer!r} is not a timm activation (e.g. mish, leaky_relu, silu)") from None
    try:
        model = timm.create_model(_cfg_name(name, pretrained), pretrained=False, **kwargs)
    except TypeError as e:
        raise FtlError(f"model {name} does not accept {kwargs}: {e}") from None
    source = "random init (no model.pretrained)"
    if pretrained:
        source = zoo.load_pretrained(model, name, pretrained)
    replace_head(model, num_classes, head, head_hidden, head_dropout, embedding_dim)
    return model, source


def _cfg_name(name: str, pretrained: str | None) -> str:
    """`arch.tag` when pretrained is a timm tag of this architecture (its preprocessing differs per tag), else arch."""
    from core import names

    arch = name.split(".")[0]
    tag = pretrained if isinstance(pretrained, str) and pretrained.startswith(arch + ".") else name
    return tag if "." in tag and names.is_pretrained_tag(tag) else arch


def data_config(model: nn.Module, mean: Any = None, std: Any = None, crop_pct: float | None = None) -> dict[str, Any]:
    """mean, std and crop_pct for the model's inputs: the values given, else the model's own (timm's
    resolve_model_data_config)."""
    from timm.data import resolve_model_data_config

    own = resolve_model_data_config(model)
    return {"mean": [float(x) for x in (mean or own["mean"])], "std": [float(x) for x in (std or own["std"])],
            "crop_pct": float(crop_pct or own.get("crop_pct") or 0.875)}  # fmt: skip


def replace_head(model: nn.Module, num_classes: int, kind: str, hidden: int, dropout: float,
                 embedding_dim: int | None = None) -> None:  # fmt: skip
    """Swap the classifier for the task: linear (timm reset_classifier), Dropout-Linear-GELU-Dropout-Linear, or an
    embedding head (embedding_dim: Dropout-Linear to the embedding, the classifier on it)."""
    model.reset_classifier(num_classes)
    prefixes = zoo.classifier_prefixes(model)
    if len(prefixes) != 1:
        raise FtlError(f"{type(model).__name__} has {len(prefixes)} classifier heads; only single-head models supported")
    path = prefixes[0].rstrip(".")
    old = model.get_submodule(path)
    in_features = old.in_features if isinstance(old, nn.Linear) else model.num_features
    if embedding_dim:
        from core.losses import EmbeddingHead

        new: nn.Module = EmbeddingHead(in_features, embedding_dim, num_classes, dropout)
    elif kind == "mlp":
        new = timm.layers.Mlp(in_features, hidden, num_classes, act_layer=nn.GELU, drop=dropout)
        new = nn.Sequential(nn.Dropout(dropout), new) if dropout else new
    elif dropout:
        new = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    else:
        return
    model.set_submodule(path, new)


def stage_names(model: nn.Module) -> list[str]:
    """Module names usable as a freeze point: top-level children and their direct children (e.g. blocks.3)."""
    names = []
    for name, child in model.named_children():
        names.append(name)
        names += [f"{name}.{sub}" for sub, _ in child.named_children()]
    return names


def freeze(model: nn.Module, spec: str, train_bn: bool = True) -> ParamCounts:
    """Freeze by spec: 'none', 'backbone' (all but the head) or up to and including a named module."""
    heads = zoo.classifier_prefixes(model)
    params = list(model.named_parameters())
    if spec == "none":
        cut = 0
    elif spec == "backbone":
        cut = max((i + 1 for i, (n, _) in enumerate(params) if not n.startswith(heads)), default=0)
    else:
        modules = dict(model.named_modules())
        if spec not in modules or spec.startswith(heads) or not spec:
            valid = [n for n in stage_names(model) if not (n + ".").startswith(heads)]
            raise FtlError(
                f"model.freeze={spec!r}: no such module{did_you_mean(spec, valid)}; "
                f"use none, backbone or one of: {', '.join(valid[:30])}"
            )
        prefix = spec + "."
        cut = max((i + 1 for i, (n, _) in enumerate(params) if n.startswith(prefix)), default=0)
    bn_params = {id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase) for p in m.parameters()}
    for i, (_, p) in enumerate(params):
        frozen = i < cut and not (train_bn and id(p) in bn_params)
        p.requires_grad_(not frozen)
    return count_params(model)


def count_params(model: nn.Module) -> ParamCounts:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return ParamCounts(trainable, frozen)


def set_frozen_bn_eval(model: nn.Module) -> None:
    """BatchNorm layers whose parameters are all frozen keep their running statistics (call after model.train())."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.affine:
            if not any(p.requires_grad for p in m.parameters()):
                m.eval()


@torch.no_grad()
def recompute_bn_stats(accelerator, model: nn.Module, batches, max_batches: int, prepare) -> int:
    """Precise BatchNorm (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): the running mean and variance of
    every BatchNorm layer in training mode recomputed as a plain average over up to max_batches training batches
    (torch.optim.swa_utils.update_bn's method, kept off the layers a frozen stage holds in eval mode), then averaged
    over processes. A short fine-tune moves the weights faster than BN's running averages (momentum 0.1) follow,
    so they lag the final weights and validation can collapse (lfw, MobileNetV2: 0.59 as trained, 0.99 after).
    `model` is the plain module (no DDP buffer broadcast); the global RNG is left as it was. Returns the batches."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
              and m.track_running_stats]  # fmt: skip
    if not layers or max_batches <= 0:
        return 0
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches seen
    device = accelerator.device
    n = 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for images, targets in batches:
            images, _ = prepare(images, targets)
            with accelerator.autocast():
                model(images)
            n += 1
            if n >= max_batches:
                break
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
        if accelerator.num_processes > 1:
            m.running_mean.copy_(accelerator.reduce(m.running_mean, "mean"))
            m.running_var.copy_(accelerator.reduce(m.running_var, "mean"))
    return n
