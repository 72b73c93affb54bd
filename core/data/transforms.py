"""torchvision transforms v2 pipelines: training (the augmentation set) and evaluation; plus batch mixing.

Sample-level augmentation runs in the loader workers on PIL images / tensors; MixUp and CutMix (timm `Mixup`)
mix whole batches on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import v2

from core.config import AugmentConfig
from core.errors import FtlError


class RandomChannelShift(nn.Module):
    """Add one random offset in [-intensity, intensity] to each channel of a [0, 1] float image (Keras-style)."""

    def __init__(self, intensity: float):
        super().__init__()
        self.intensity = intensity

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        shift = (torch.rand(image.shape[-3], 1, 1) * 2 - 1) * self.intensity
        return (image + shift).clamp_(0, 1)


def policy_transform(policy: str, image_size: int, mean: Sequence[float]):
    """An automatic augmentation policy: timm strings (rand-*, augmix-*, v0/original/...) or `trivial`."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    hparams = {"translate_const": int(image_size * 0.45), "img_mean": tuple(round(255 * x) for x in mean)}
    try:
        if policy == "trivial":
            return v2.TrivialAugmentWide()
        if policy.startswith("rand"):
            return rand_augment_transform(policy, hparams)
        if policy.startswith("augmix"):
            return augment_and_mix_transform(policy, hparams)
        return auto_augment_transform(policy, hparams)
    except (AssertionError, KeyError, ValueError, IndexError) as e:
        raise FtlError(
            f"augment.policy={policy!r} is not a known policy ({type(e).__name__}: {e}); use e.g. rand-m9-mstd0.5, "
            "augmix-m5-w4-d2, v0, original or trivial"
        ) from None


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], aug: AugmentConfig) -> v2.Compose:
    """Geometry (zoom crop, flips, rotate/shear/shift), colour, a policy, then tensor ops and random erasing."""
    ops: list = [v2.RandomResizedCrop(image_size, scale=tuple(aug.scale), ratio=tuple(aug.ratio), antialias=True)]
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.vflip:
        ops.append(v2.RandomVerticalFlip(aug.vflip))
    if aug.rotate or aug.shear or aug.translate:
        ops.append(v2.RandomAffine(degrees=aug.rotate, translate=(aug.translate,) * 2 if aug.translate else None,
                                   shear=aug.shear or None))  # fmt: skip
    b, c, s = (max(aug.color_jitter, x) for x in (aug.brightness, aug.contrast, aug.saturation))
    if b or c or s or aug.hue:
        ops.append(v2.ColorJitter(b, c, s, aug.hue))
    if aug.grayscale:
        ops.append(v2.RandomGrayscale(aug.grayscale))
    if aug.policy:
        ops.append(policy_transform(aug.policy, image_size, mean))  # timm policies work on PIL images
    ops += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if aug.channel_shift:
        ops.append(RandomChannelShift(aug.channel_shift))
    ops.append(v2.Normalize(list(mean), list(std)))
    if aug.random_erasing:
        ops.append(v2.RandomErasing(aug.random_erasing, value="random" if aug.erasing_mode == "random" else 0))
    return v2.Compose(ops)


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = 0.875) -> v2.Compose:
    """Resize the short side to image_size / crop_pct, center-crop image_size, normalise."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(int(round(image_size / crop_pct)), antialias=True),
            v2.CenterCrop(image_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def batch_mixer(aug: AugmentConfig, num_classes: int):
    """timm's Mixup for MixUp / CutMix (soft targets with label smoothing), or None when both are off."""
    if not (aug.mixup or aug.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mix_prob, switch_prob=aug.switch_prob,
                 mode="batch", label_smoothing=aug.label_smoothing, num_classes=num_classes)  # fmt: skip


def augment_config(section) -> AugmentConfig:
    """The typed AugmentConfig from a config section (an OmegaConf node or a dict)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(section) if OmegaConf.is_config(section) else dict(section)
    return AugmentConfig(**values)
