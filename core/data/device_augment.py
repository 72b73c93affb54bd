"""Augmentation of whole uint8 batches on the device (GPU when there is one), for the FFCV path.

FFCV hands over uint8 NHWC batches that are already cropped and resized by the decoder; everything else in the
augment config happens here, vectorised over the batch with per-sample random parameters: flips, rotate / shear /
translate (one affine grid for the batch), brightness / contrast / saturation, grayscale, channel shift,
normalisation and random erasing. MixUp / CutMix stay in the training step (timm Mixup), as on the torch path.

Parameters are drawn from a generator seeded by (seed, epoch, batch index, rank): the same batch gets the same
augmentation on a rerun or after a resume. `augment.policy` and `augment.hue` exist only on the torch path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from core.checks import TORCH_ONLY_AUGMENT
from core.config import AugmentConfig
from core.errors import FtlError

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


class DeviceAugment:
    """uint8 NHWC (or, planar=True, NCHW) batch -> normalised float NCHW batch; train=True adds the random ops.
    channels_last=True returns channels-last memory (for channels_last models)."""

    def __init__(self, aug: AugmentConfig, mean: Sequence[float], std: Sequence[float], seed: int, train: bool,
                 channels_last: bool = False, planar: bool = False):  # fmt: skip
        used = [k for k in TORCH_ONLY_AUGMENT if getattr(aug, k)]
        if train and used:  # `auto` chose FFCV after the config was validated
            raise FtlError(f"augment.{used[0]}={getattr(aug, used[0])!r} runs only on the torch path: set "
                           "data.loader=torch or drop it")  # fmt: skip
        self.aug, self.train, self.seed, self.channels_last, self.planar = aug, train, seed, channels_last, planar
        self.scale = 1 / (torch.tensor(std).view(1, 3, 1, 1) * 255)
        self.shift = -torch.tensor(mean).view(1, 3, 1, 1) / torch.tensor(std).view(1, 3, 1, 1)  # moved on first use
        a = aug
        self.brightness, self.contrast, self.saturation = (max(a.color_jitter, x) for x in (a.brightness, a.contrast, a.saturation))

    def generator(self, device: torch.device, epoch: int, batch: int, rank: int) -> torch.Generator:
        # drawn on the device itself: no host->device copies (a GPU's stream differs from a CPU's, each reproducible)
        key = hash((self.seed, epoch, batch, rank)) & 0x7FFF_FFFF_FFFF_FFFF
        return torch.Generator(device=device).manual_seed(key)

    def __call__(self, images: torch.Tensor, epoch: int = 0, batch: int = 0, rank: int = 0) -> torch.Tensor:
        gen = self.generator(images.device, epoch, batch, rank) if self.train else None
        if self.train and (self.aug.hflip or self.aug.vflip):
            images = self.flip(images, gen)  # on uint8, a quarter of the bytes of float
        if self.planar:  # NCHW uint8 already (ftl's decoder): a straight conversion
            x = images.float()
        else:  # NHWC uint8 -> NCHW float in one copy: per-channel maths on channel-innermost memory is 6x slower
            n, h, w, c = images.shape
            x = torch.empty((n, c, h, w), device=images.device).copy_(images.permute(0, 3, 1, 2))
        if self.train:
            x = self.augment(x, gen)
        if self.scale.device != x.device:  # once: not a host->device copy per batch
            self.scale, self.shift = self.scale.to(x.device), self.shift.to(x.device)
        x = x.mul_(self.scale).add_(self.shift)  # (x / 255 - mean) / std, in place
        if self.train and self.aug.random_erasing:
            x = self.erase(x, gen)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    def flip(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Horizontal / vertical flips of the chosen samples only (of the batch's width and height dims)."""
        for p, dim in ((self.aug.hflip, 3 if self.planar else 2), (self.aug.vflip, 2 if self.planar else 1)):
            if p:
                chosen = (torch.rand(len(images), generator=gen, device=images.device) < p).nonzero().squeeze(1)
                if images.device.type == "cpu":  # in place, sample by sample: 7x faster than a gather/scatter on CPU
                    for i in chosen.tolist():
                        images[i] = images[i].flip(dim - 1)
                else:
                    images[chosen] = images[chosen].flip(dim)
        return images

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        a, n, dev = self.aug, x.shape[0], x.device
        u = lambda *shape: torch.rand(n, *shape, generator=gen, device=dev)
        col = lambda t: t.view(n, 1, 1, 1)
        if a.rotate or a.shear or a.translate:
            x = self.affine(x, u)
        gray = lambda t: (t * torch.tensor(GRAY, device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if self.brightness:
            x = x * col(1 + (u() * 2 - 1) * self.brightness)
        if self.contrast:
            m = gray(x).mean((2, 3), keepdim=True)
            x = (x - m) * col(1 + (u() * 2 - 1) * self.contrast) + m
        if self.saturation:
            g = gray(x)
            x = (x - g) * col(1 + (u() * 2 - 1) * self.saturation) + g
        if self.brightness or self.contrast or self.saturation:
            x = x.clamp(0, 255)
        if a.grayscale:
            x = torch.where(col(u() < a.grayscale), gray(x).expand_as(x), x)
        if a.channel_shift:
            x = (x + (u(3).view(n, 3, 1, 1) * 2 - 1) * a.channel_shift * 255).clamp(0, 255)
        return x

    def affine(self, x: torch.Tensor, u) -> torch.Tensor:
        """Rotate (+-degrees), shear along x (+-degrees) and shift (+-fraction), black fill, like RandomAffine."""
        a = self.aug
        angle = (u() * 2 - 1) * math.radians(a.rotate)
        shear = (u() * 2 - 1) * math.radians(a.shear)
        shift = (u(2) * 2 - 1) * a.translate * 2  # grid coordinates span 2 per image side
        cos, sin, tan = angle.cos(), angle.sin(), shear.tan()
        # inverse map (output -> input pixel) of rotation after shear: grid_sample samples the input
        theta = torch.stack([torch.stack([cos, -sin + cos * tan, shift[:, 0]], 1),
                             torch.stack([sin, cos + sin * tan, shift[:, 1]], 1)], 1)  # fmt: skip
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def erase(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random erasing per sample (torchvision's ranges: area 2-33%, aspect 0.3-3.3), noise or zero fill."""
        n, _, h, w = x.shape
        r = torch.rand(n, 5, generator=gen, device=x.device)
        area = (0.02 + r[:, 0] * (1 / 3 - 0.02)) * h * w
        aspect = torch.exp(math.log(0.3) + r[:, 1] * (math.log(3.3) - math.log(0.3)))
        eh = (area * aspect).sqrt().round().clamp(1, h).long()
        ew = (area / aspect).sqrt().round().clamp(1, w).long()
        top = (r[:, 2] * (h - eh + 1)).long()
        left = (r[:, 3] * (w - ew + 1)).long()
        on = r[:, 4] < self.aug.random_erasing
        rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        inside = ((rows[None, :, None] >= top[:, None, None]) & (rows[None, :, None] < (top + eh)[:, None, None])
                  & (cols[None, None, :] >= left[:, None, None]) & (cols[None, None, :] < (left + ew)[:, None, None])
                  & on[:, None, None])  # fmt: skip
        inside = inside[:, None]
        if self.aug.erasing_mode == "random":
            fill = torch.randn(x.shape, generator=gen, device=x.device)
        else:
            fill = torch.zeros((), device=x.device)
        return torch.where(inside, fill, x)
