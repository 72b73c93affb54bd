"""torchvision transforms v2 pipelines: training (the augmentation set) and evaluation; plus batch mixing.

Sample-level augmentation runs in the loader workers on PIL images / tensors; MixUp and CutMix (timm `Mixup`)
mix whole batches on the device.

How a non-square image becomes a square input (`data.resize`, the same for training and evaluation):
    crop    training: a random-resized crop of the image as it is; evaluation: the short side resized to
            image_size / crop_pct and the centre cropped (timm's `center`): a wide image loses its sides
    squash  the whole image stretched to a square (no part is cut for its aspect ratio); the training zoom crop
            is drawn in the image's own frame, evaluation resizes to image_size / crop_pct and centre-crops
            (timm's `squash`)
    pad     the short side padded to a square with the mean colour (letterbox), then as `crop` (timm's `border`)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.transforms import v2

from core.config import AugmentConfig
from core.errors import FtlError

RESIZE_MODES = ("crop", "squash", "pad")
# timm's crop_mode names; auto: squash (docs/benchmarks.md: +6 to +9 points over crop on non-square cards)
RESIZE_ALIASES = {"center": "crop", "border": "pad", "auto": "squash"}


def resize_mode(name: str) -> str:
    """data.resize (crop | squash | pad | auto, or timm's center / squash / border) as one of RESIZE_MODES."""
    mode = RESIZE_ALIASES.get(name, name)
    if mode not in RESIZE_MODES:
        raise FtlError(f"data.resize={name!r} is not one of: auto, {', '.join(RESIZE_MODES)} (or timm's center, "
                       "squash, border)")  # fmt: skip
    return mode


class PadToSquare(nn.Module):
    """Pad the short side (both ends equally) so the image is square; `fill` is an RGB colour in [0, 1]."""

    def __init__(self, fill: Sequence[float]):
        super().__init__()
        self.fill = [round(255 * x) for x in fill]

    def forward(self, image):
        w, h = v2.functional.get_size(image)[::-1]
        side = max(w, h)
        left, top = (side - w) // 2, (side - h) // 2
        if side == w == h:
            return image
        return v2.functional.pad(image, [left, top, side - w - left, side - h - top], fill=self.fill)


class SquashedRandomResizedCrop(nn.Module):
    """RandomResizedCrop drawn in the image's own (normalised) frame: a box of `scale` of the image's area whose
    aspect ratio is `ratio` relative to the image's, resized to size x size. scale=1, ratio=1 is the whole image
    squashed; a wide image is never cut to a square first. Draws from torch's RNG (seeded per sample)."""

    def __init__(self, size: int, scale: Sequence[float], ratio: Sequence[float]):
        super().__init__()
        self.size, self.scale, self.log_ratio = size, tuple(scale), (math.log(ratio[0]), math.log(ratio[1]))

    def forward(self, image):
        h, w = v2.functional.get_size(image)
        area = float(torch.empty(1).uniform_(*self.scale))
        r = math.exp(float(torch.empty(1).uniform_(*self.log_ratio)))
        cw, ch = min(1.0, math.sqrt(area * r)), min(1.0, math.sqrt(area / r))
        x0, y0 = float(torch.rand(1)) * (1 - cw), float(torch.rand(1)) * (1 - ch)
        top, left = int(y0 * h), int(x0 * w)
        height, width = max(1, min(h - top, round(ch * h))), max(1, min(w - left, round(cw * w)))
        return v2.functional.resized_crop(image, top, left, height, width, [self.size, self.size], antialias=True)


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


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], aug: AugmentConfig,
                    resize: str = "crop") -> v2.Compose:  # fmt: skip
    """Geometry (zoom crop as data.resize says, flips, rotate/shear/shift), colour, a policy, then tensor ops and
    random erasing."""
    mode = resize_mode(resize)
    ops: list = [PadToSquare(mean)] if mode == "pad" else []
    if mode == "squash":
        ops.append(SquashedRandomResizedCrop(image_size, aug.scale, aug.ratio))
    else:
        ops.append(v2.RandomResizedCrop(image_size, scale=tuple(aug.scale), ratio=tuple(aug.ratio), antialias=True))
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


def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float], crop_pct: float = 0.875,
                   resize: str = "crop") -> v2.Compose:  # fmt: skip
    """Resize to image_size / crop_pct (crop, pad: the short side; squash: both sides), center-crop image_size,
    normalise."""
    mode, scaled = resize_mode(resize), int(round(image_size / crop_pct))
    ops: list = [v2.ToImage()] + [PadToSquare(mean)] * (mode == "pad")
    ops += [v2.Resize((scaled, scaled) if mode == "squash" else scaled, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([*ops, v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


class OddBatchMixer:
    """timm's Mixup (MixUp / CutMix) for any batch size. timm pairs sample i with sample n-1-i and refuses odd
    batches; here an odd batch mixes its first n-1 samples and the last keeps its image, with its label as the same
    smoothed soft target (so a batch never silently skips mixing)."""

    def __init__(self, mixup, num_classes: int, label_smoothing: float):
        self.mixup, self.num_classes, self.label_smoothing = mixup, num_classes, label_smoothing

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from timm.data.mixup import mixup_target

        n = len(images) - len(images) % 2
        if n == len(images):
            return self.mixup(images, targets)
        tail = mixup_target(targets[n:], self.num_classes, 1.0, self.label_smoothing)
        if n == 0:
            return images, tail
        mixed, soft = self.mixup(images[:n].clone(), targets[:n])
        return torch.cat([mixed, images[n:]]), torch.cat([soft, tail.to(soft.dtype)])


def batch_mixer(aug: AugmentConfig, num_classes: int) -> Callable | None:
    """MixUp / CutMix (timm's Mixup, soft targets with label smoothing) for any batch size, or None when both are
    off."""
    if not (aug.mixup or aug.cutmix):
        return None
    from timm.data import Mixup

    mixup = Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, prob=aug.mix_prob, switch_prob=aug.switch_prob,
                  mode="batch", label_smoothing=aug.label_smoothing, num_classes=num_classes)  # fmt: skip
    return OddBatchMixer(mixup, num_classes, aug.label_smoothing)


def augment_config(section) -> AugmentConfig:
    """The typed AugmentConfig from a config section (an OmegaConf node or a dict)."""
    from omegaconf import OmegaConf

    values = OmegaConf.to_container(section) if OmegaConf.is_config(section) else dict(section)
    return AugmentConfig(**values)
