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
from core.fileio import write_atomic
from core.models import check_model_name


def augment_grid(cfg: DictConfig, out: str | Path, samples: int = 6, repeats: int = 6, seed: int = 0) -> Path:
    """Rows: `samples` training images, each augmented `repeats` times (epochs 0, 1, ...) by the recipe's data
    path (torch transforms, or the FFCV decoder + device augmentation); with MixUp/CutMix on, a last row of a
    mixed batch. Written as one PNG, atomically."""
    from core.data.beton import choose_loader

    check_model_name(cfg.model.name)
    pretrained_cfg = timm.create_model(cfg.model.name.split(".")[0], pretrained=False).pretrained_cfg
    mean = list(cfg.data.mean or pretrained_cfg["mean"])
    std = list(cfg.data.std or pretrained_cfg["std"])
    aug = augment_config(cfg.augment)
    size = image_size_at(cfg.data.image_size, 0, cfg.train.epochs)
    loader = "gpu" if cfg.data.loader == "gpu" else choose_loader(cfg.data, say=lambda _: None)  # gpu: shown on CPU
    tiles_of = {"torch": _torch_tiles, "ffcv": _ffcv_tiles, "gpu": _gpu_tiles}[loader]
    tiles, classes = tiles_of(cfg, aug, mean, std, size, samples, repeats, seed)
    mixer = batch_mixer(aug, classes)
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


def _torch_tiles(cfg: DictConfig, aug, mean, std, size: int, samples: int, repeats: int, seed: int):
    """The torch path: each picked sample through the training transform, seeded as in epochs 0..repeats-1."""
    splits = build_datasets(cfg.data.train_dir, cfg.data.val_dir, lambda s: train_transform(s, mean, std, aug), None,
                            cfg.data.val_split, None, seed, size)  # fmt: skip
    picks = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(seed))[:samples].tolist()
    tiles = []
    for index in picks:
        for epoch in range(repeats):
            splits.train.set_epoch(epoch)
            tiles.append(splits.train[index][0])
    return tiles, len(splits.classes)


def _gpu_tiles(cfg: DictConfig, aug, mean, std, size: int, samples: int, repeats: int, seed: int):
    """The GPU path (here on the CPU, the same code): the picked samples as one batch through its crops and the
    device augmentation, once per epoch 0..repeats-1."""
    from core.data.gpu_loader import GpuLoader, open_gpu_data

    data = open_gpu_data(cfg.data, seed)
    picks = data.train_indices[torch.randperm(len(data.train_indices), generator=torch.Generator().manual_seed(seed))
                               [:samples].numpy()]  # fmt: skip
    loader = GpuLoader(data.train, picks, len(picks), train=True, image_size=size, crop_pct=cfg.data.crop_pct or 0.875,
                       augment=aug, mean=mean, std=std, seed=cfg.train.seed, device=torch.device("cpu"), num_workers=1)  # fmt: skip
    loader.shuffle = False  # keep the picks in order; crops depend on (seed, epoch, sample), not the order
    epochs = []
    for epoch in range(repeats):
        loader.set_epoch(epoch)
        epochs.append(next(iter(loader))[0].clone())
    return [epochs[e][i] for i in range(len(picks)) for e in range(repeats)], len(data.classes)


def _ffcv_tiles(cfg: DictConfig, aug, mean, std, size: int, samples: int, repeats: int, seed: int):
    """The FFCV path: the picked samples as one batch through the crop decoder and the device augmentation, once
    per epoch 0..repeats-1."""
    from core.data.ffcv_loader import FfcvLoader, open_split

    train, t_idx, _, _ = open_split(cfg.data, seed)
    picks = t_idx[torch.randperm(len(t_idx), generator=torch.Generator().manual_seed(seed))[:samples].numpy()]
    loader = FfcvLoader(train, picks, len(picks), train=True, image_size=size, crop_pct=cfg.data.crop_pct,
                        augment=aug, mean=mean, std=std, seed=cfg.train.seed, device=torch.device("cpu"),
                        num_workers=1, decoder=cfg.data.ffcv_decoder)  # fmt: skip
    loader.order.shuffle = False  # keep the picks in order; crops depend on (seed, epoch, sample), not the order
    epochs = []
    for epoch in range(repeats):
        loader.set_epoch(epoch)
        epochs.append(next(iter(loader))[0].clone())
    return [epochs[e][i] for i in range(len(picks)) for e in range(repeats)], len(train.classes)
