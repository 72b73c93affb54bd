"""ImageFolder datasets (given train/val dirs, or a seeded stratified split) and their DataLoaders.

Augmentation randomness is seeded per (seed, epoch, sample index), not per worker: the same sample gets the same
augmentation whatever the worker count or the point a run was resumed from, which is what makes resume exact.
The epoch and the image size live in a small shared-memory tensor, so persistent DataLoader workers see a new
epoch (and progressive resizing's new size) without being restarted.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from core.errors import FtlError

Sample = tuple[str, int]


class SeededImageDataset(Dataset):
    """(path, label) samples with a transform whose random draws depend only on (seed, epoch, index).
    `make_transform(image_size)` builds the transform for a size (once per size and process)."""

    def __init__(self, samples: list[Sample], make_transform: Callable[[int], Callable] | None, seed: int = 0,
                 image_size: int = 224):  # fmt: skip
        self.samples = samples
        self.make_transform = make_transform
        self.seed = seed
        self.shared = torch.tensor([0, image_size], dtype=torch.int64).share_memory_()  # epoch, image size
        self._transforms: dict[int, Callable] = {}

    @property
    def epoch(self) -> int:
        return int(self.shared[0])

    def set_epoch(self, epoch: int) -> None:
        self.shared[0] = epoch  # shared memory: persistent workers see it at their next sample

    def set_image_size(self, size: int) -> None:
        self.shared[1] = size

    @property
    def transform(self) -> Callable | None:
        if self.make_transform is None:
            return None
        size = int(self.shared[1])
        if size not in self._transforms:
            self._transforms[size] = self.make_transform(size)
        return self._transforms[size]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = default_loader(path)
        except Exception as e:  # unreadable or truncated image: name the file
            raise FtlError(f"cannot read image {path}: {type(e).__name__}: {e}") from None
        transform = self.transform
        if transform is None:
            return image, label
        seed = hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF
        # torchvision draws from torch, timm's policies from `random` and numpy: seed all three for this sample,
        # and put the process's own streams back afterwards (with num_workers=0 this is the training process).
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            image = transform(image)
        random.setstate(py_state)
        np.random.set_state(np_state)
        return image, label


def scan_image_folder(root: str | Path, what: str) -> ImageFolder:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FtlError(f"{what}={root}: no such directory (prepare one with `ftl data prepare NAME --out DIR`)")
    try:
        return ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as e:
        raise FtlError(f"{what}={root}: {str(e).splitlines()[0]} (expected ROOT/<class>/<image>)") from None


def stratified_split(targets: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): a seeded shuffle within each class, val_fraction of each class held out."""
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for label in sorted(set(targets)):
        idx = [i for i, t in enumerate(targets) if t == label]
        idx = [idx[j] for j in torch.randperm(len(idx), generator=gen).tolist()]
        n_val = int(len(idx) * val_fraction + 0.5)
        if val_fraction > 0 and len(idx) > 1:
            n_val = max(1, min(n_val, len(idx) - 1))
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


@dataclass
class DataSplits:
    train: SeededImageDataset
    val: SeededImageDataset
    classes: list[str]


def build_datasets(
    train_dir: str,
    val_dir: str | None,
    train_transform: Callable[[int], Callable] | None,
    eval_transform: Callable[[int], Callable] | None,
    val_split: float = 0.2,
    num_classes: int | None = None,
    seed: int = 0,
    image_size: int = 224,
) -> DataSplits:
    """Train/val datasets from ImageFolder roots; without val_dir, a stratified split of train_dir."""
    train_folder = scan_image_folder(train_dir, "data.train_dir")
    classes = train_folder.classes
    if val_dir:
        val_folder = scan_image_folder(val_dir, "data.val_dir")
        if val_folder.classes != classes:
            extra = sorted(set(val_folder.classes) ^ set(classes))
            raise FtlError(
                f"data.val_dir={val_dir} has classes {len(val_folder.classes)} that differ from data.train_dir's "
                f"{len(classes)} (first difference: {extra[0] if extra else 'order'}); give both the same class folders"
            )
        train_samples, val_samples = train_folder.samples, val_folder.samples
    else:
        if val_split <= 0:
            raise FtlError("data.val_dir is not set and data.val_split=0: set one of them")
        t_idx, v_idx = stratified_split(train_folder.targets, val_split, seed)
        train_samples = [train_folder.samples[i] for i in t_idx]
        val_samples = [train_folder.samples[i] for i in v_idx]
    if num_classes is not None and num_classes != len(classes):
        raise FtlError(
            f"data.num_classes={num_classes} but {train_dir} has {len(classes)} class folders "
            f"({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); fix data.num_classes or the folders"
        )
    if len(classes) < 2:
        raise FtlError(f"data.train_dir={train_dir} has {len(classes)} class folder; a classifier needs at least 2")
    return DataSplits(
        SeededImageDataset(list(train_samples), train_transform, seed, image_size),
        SeededImageDataset(list(val_samples), eval_transform, seed, image_size),
        list(classes),
    )


def build_loaders(
    splits: DataSplits, batch_size: int, eval_batch_size: int | None, num_workers: int, seed: int, pin_memory: bool
) -> tuple[DataLoader, DataLoader]:
    """Shuffled train loader (drops a last partial batch when there is more than one) and ordered val loader.
    Workers persist across epochs (the datasets read the epoch and size from shared memory)."""
    # Own generator: creating an iterator must not draw from the global RNG, or resume would shift dropout draws.
    generator = torch.Generator().manual_seed(seed)
    common = {"num_workers": num_workers, "pin_memory": pin_memory, "persistent_workers": num_workers > 0}
    train = DataLoader(
        splits.train,
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(splits.train) > batch_size,
        generator=generator,
        **common,
    )
    val = DataLoader(splits.val, batch_size=eval_batch_size or 2 * batch_size, shuffle=False, **common)
    return train, val
