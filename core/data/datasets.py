"""ImageFolder datasets (given train/val dirs, or a seeded stratified split) and their DataLoaders.

Augmentation randomness is seeded per (seed, epoch, sample index), not per worker: the same sample gets the same
augmentation whatever the worker count or the point a run was resumed from, which is what makes resume exact.
The epoch and the image size live in a small shared-memory tensor, so persistent DataLoader workers see a new
epoch (and progressive resizing's new size) without being restarted.

Small datasets can keep their decoded images in RAM (`cache_images`, before the workers start: forked workers
share them); the augmentation is applied afresh to the cached pixels, seeded as always. `ClassBalancedSampler`
makes class-balanced batches for metric losses; `range_test_loader` feeds the LR finder one long stream.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from core.checks import split_problem
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
        self.cache: list | None = None  # decoded images (cache_images)
        self.samples_per_class = 0  # > 0: the training loader makes class-balanced batches (ClassBalancedSampler)

    @property
    def epoch(self) -> int:
        return int(self.shared[0])

    def set_epoch(self, epoch: int) -> None:
        self.shared[0] = epoch  # shared memory: persistent workers see it at their next sample

    def set_image_size(self, size: int) -> None:
        self.shared[1] = size

    def set_make_transform(self, make_transform: Callable[[int], Callable] | None) -> None:
        """A new transform factory (forgets the transforms already built for each size)."""
        self.make_transform, self._transforms = make_transform, {}

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

    def load(self, index: int):
        """The decoded RGB image of sample `index` (from the cache when there is one)."""
        if self.cache is not None:
            return self.cache[index]
        path = self.samples[index][0]
        try:
            return default_loader(path)
        except Exception as e:  # unreadable or truncated image: name the file
            raise FtlError(f"cannot read image {path}: {type(e).__name__}: {e}") from None

    def cache_images(self, max_bytes: float = 2 * 2**30, max_short_side: int | None = None) -> bool:
        """Decode every image once and keep it (RGB, reduced to max_short_side on its short side when larger):
        False (nothing kept) when the decoded images would take more than max_bytes. Call before loader workers
        start, so forked workers share the pixels."""
        from PIL import Image

        if self.cache is not None:
            return True
        images, total = [], 0
        for i in range(len(self.samples)):
            image = self.load(i)
            if max_short_side and min(image.size) > max_short_side:
                scale = max_short_side / min(image.size)
                image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                     Image.Resampling.BILINEAR, reducing_gap=None)  # fmt: skip
            image.load()
            total += image.width * image.height * len(image.getbands())
            if total > max_bytes:
                return False
            images.append(image)
        self.cache = images
        return True

    def __getitem__(self, index: int):
        return self.sample(index, self.epoch)

    def sample(self, index: int, epoch: int):
        """Sample `index` as augmented in `epoch`: (image, label)."""
        image, label = self.load(index), self.samples[index][1]
        transform = self.transform
        if transform is None:
            return image, label
        seed = hash((self.seed, epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF
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
    """An ImageFolder class root (ROOT/<class>/<image>), or one line saying what is wrong with it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FtlError(f"{what}={root}: no such directory (prepare one with `ftl data prepare NAME --out DIR`)")
    if problem := split_problem(root, what):
        raise FtlError(f"{what}={root} {problem}")
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
    if splits.train.samples_per_class:
        sampler = ClassBalancedSampler(splits.train.targets, batch_size, splits.train.samples_per_class, seed)
        train = DataLoader(splits.train, batch_size=batch_size, sampler=sampler, drop_last=True, generator=generator,
                           **common)  # fmt: skip
        val = DataLoader(splits.val, batch_size=eval_batch_size or 2 * batch_size, shuffle=False, **common)
        return train, val
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


class ClassBalancedSampler(torch.utils.data.Sampler[int]):
    """Indices in batches of `batch_size // per_class` distinct classes x `per_class` samples each (the P x K
    batches of metric learning; P random classes per batch), a function of (seed, epoch) only, so a resumed epoch
    replays the same batches. Each epoch has len(labels) // batch_size batches; a class's samples are drawn in a
    fresh shuffle each time its pool runs out. Needs at least P classes."""

    def __init__(self, labels: list[int], batch_size: int, per_class: int, seed: int = 0):
        self.per_class, self.classes_per_batch = per_class, batch_size // per_class
        self.batches, self.seed, self.epoch = max(1, len(labels) // batch_size), seed, 0
        self.by_class: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            self.by_class.setdefault(label, []).append(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches * self.classes_per_batch * self.per_class

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(hash((self.seed, self.epoch, 0xBA1A)) & 0x7FFF_FFFF_FFFF_FFFF)
        classes = sorted(self.by_class)
        pools: dict[int, list[int]] = {c: [] for c in classes}
        for _ in range(self.batches):
            picked = [classes[i] for i in torch.randperm(len(classes), generator=gen)[: self.classes_per_batch]]
            for c in picked:
                while len(pools[c]) < self.per_class:  # each class's samples in a fresh shuffle, drawn in turn
                    members = self.by_class[c]
                    pools[c] += [members[i] for i in torch.randperm(len(members), generator=gen).tolist()]
                yield from pools[c][: self.per_class]
                pools[c] = pools[c][self.per_class :]


class _RangeTestStream(Dataset):
    """Position p of the LR finder's stream: pass p // n, the p % n-th index of that pass's seeded shuffle,
    augmented as in epoch -(pass + 2) (never a training epoch's draws; not -1, whose hash is -2's in CPython)."""

    def __init__(self, dataset: SeededImageDataset, seed: int, positions: list[int]):
        self.dataset, self.positions, n = dataset, positions, len(dataset)
        passes = (max(positions, default=0) // n) + 1
        gen = torch.Generator().manual_seed(seed)
        self.order = [torch.randperm(n, generator=gen).tolist() for _ in range(passes)]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int):
        p, n = self.positions[i], len(self.dataset)
        return self.dataset.sample(self.order[p // n][p % n], -(p // n) - 2)


def range_test_loader(dataset: SeededImageDataset, batch_size: int, num_batches: int, seed: int, num_workers: int,
                      rank: int = 0, world: int = 1) -> DataLoader:  # fmt: skip
    """One DataLoader (one iterator, one set of workers) for the whole LR range test: num_batches batches of this
    rank, over as many seeded passes through the data as that takes, each with its own shuffle and augmentation."""
    positions = [p for b in range(num_batches) for p in range((b * world + rank) * batch_size,
                                                                (b * world + rank + 1) * batch_size)]  # fmt: skip
    stream = _RangeTestStream(dataset, seed, positions)
    return DataLoader(stream, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip
