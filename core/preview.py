"""Augmentation preview: a grid picture of augmented training samples, to look at before training."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from omegaconf import DictConfig
from torchvision.utils import make_grid, save_image

from core.data.datasets import build_datasets
from core.data.resize import image_size_at
from core.data.transforms import augment_config, batch_mixer, train_transform
from core.errors import FtlError
from core.fileio import write_atomic
from core.models import check_model_name


def augment_grid(cfg: DictConfig, out: str | Path, samples: int = 6, repeats: int = 6, seed: int = 0) -> Path:
    """Rows: `samples` training images, each augmented `repeats` times (epochs 0, 1, ...); with MixUp/CutMix on,
    a last row of a mixed batch. Written as one PNG, atomically."""
    check_model_name(cfg.model.name)
    if str(cfg.data.train_dir).endswith(".beton"):
        raise FtlError("augment-preview shows the torch path's augmentation of an ImageFolder tree: set "
                       "data.train_dir to the folder the .beton was converted from")  # fmt: skip
    pretrained_cfg = timm.create_model(cfg.model.name.split(".")[0], pretrained=False).pretrained_cfg
    mean = list(cfg.data.mean or pretrained_cfg["mean"])
    std = list(cfg.data.std or pretrained_cfg["std"])
    aug = augment_config(cfg.augment)
    size = image_size_at(cfg.data.image_size, 0, cfg.train.epochs)
    transform = train_transform(size, mean, std, aug)
    splits = build_datasets(cfg.data.train_dir, cfg.data.val_dir, transform, None, cfg.data.val_split, None, seed)
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(splits.train), generator=gen)[:samples].tolist()
    tiles = []
    for index in picks:
        for epoch in range(repeats):
            splits.train.set_epoch(epoch)
            tiles.append(splits.train[index][0])
    mixer = batch_mixer(aug, len(splits.classes))
    if mixer is not None:
        batch = torch.stack(tiles[: repeats * 2 : 2][: repeats - repeats % 2] or tiles[:2])
        torch.manual_seed(seed)
        mixed, _ = mixer(batch, torch.zeros(len(batch), dtype=torch.long))
        tiles += list(mixed)
    images = torch.stack(tiles) * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    grid = make_grid(images.clamp(0, 1), nrow=repeats, padding=2, pad_value=1.0)
    out = Path(out)
    write_atomic(out, lambda p: save_image(grid, str(p), format="png"))
    return out
