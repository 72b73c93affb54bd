"""Data backends behind one interface: what the engine trains and validates on, whatever reads the images.

    torch  ImageFolder files, decoded and augmented in DataLoader workers (persistent), batches to the device
    ffcv   .beton files, ftl's crop decoder, augmentation on the device (core/data/ffcv_loader.py)
    gpu    JPEG bytes read on the CPU, decoded on the device by nvJPEG, crops and augmentation there
           (core/data/gpu_loader.py)

Every loader has `batch_size`, `exact_shards` (True: each rank holds a disjoint exact shard, so `evaluate` sums per
rank; False: Accelerate pads and gathers), `len()` (batches per epoch on this rank), `set_epoch(epoch)`,
`set_image_size(size)` (progressive resizing), `skip_batches(n)` (the next pass starts after n batches: mid-epoch
resume) and yields (normalised float NCHW images, int64 labels) on the device. `open_data` checks the data and
picks the backend before anything is written; `build_loaders` makes the two loaders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from core.config import AugmentConfig
from core.data.datasets import DataSplits, build_datasets
from core.data.datasets import build_loaders as torch_loaders
from core.data.transforms import eval_transform, train_transform
from core.errors import FtlError


@dataclass
class DataSource:
    """The data of a run, opened and checked: which backend reads it, its classes and sizes."""

    backend: str  # torch | ffcv | gpu
    classes: list[str]
    sizes: tuple[int, int]  # train / val samples
    opened: Any  # the backend's own handle: DataSplits (torch), open_split's tuple (ffcv), GpuData (gpu)


def open_data(d: Any, seed: int, device: torch.device, say: Callable[[str], None] = print,
              augment: Any = None) -> DataSource:  # fmt: skip
    """Pick the backend (data.loader, `auto` saying why) and open the data; every data error is raised here."""
    from core.checks import TORCH_ONLY_AUGMENT
    from core.data.beton import choose_loader

    used = [f"augment.{k} is set" for k in TORCH_ONLY_AUGMENT if augment is not None and getattr(augment, k, None)]
    backend = choose_loader(d, say, device, used[0] if used else "")
    if backend == "torch":
        splits = build_datasets(d.train_dir, d.val_dir, None, None, d.val_split, d.num_classes, seed)
        return DataSource("torch", splits.classes, (len(splits.train), len(splits.val)), splits)
    if backend == "ffcv":
        from core.data.ffcv_loader import open_split

        split = train, t_idx, _, v_idx = open_split(d, seed)
        classes = train.classes
    else:
        from core.data.gpu_loader import open_gpu_data

        split = open_gpu_data(d, seed)
        classes, t_idx, v_idx = split.classes, split.train_indices, split.val_indices
    if d.num_classes is not None and d.num_classes != len(classes):
        raise FtlError(f"data.num_classes={d.num_classes} but data.train_dir={d.train_dir} has {len(classes)} classes")
    return DataSource(backend, classes, (len(t_idx), len(v_idx)), split)


def build_loaders(source: DataSource, d: Any, seed: int, augment: AugmentConfig, mean: list[float], std: list[float],
                  size: int, accelerator, channels_last: bool) -> tuple[Any, Any]:  # fmt: skip
    """(train, val) loaders of the source's backend, sharded over the accelerator's processes."""
    where = (accelerator.device, accelerator.process_index, accelerator.num_processes)
    if source.backend == "ffcv":
        from core.data.ffcv_loader import build_ffcv_loaders

        return build_ffcv_loaders(d, source.opened, seed, augment, mean, std, size, *where, channels_last)
    if source.backend == "gpu":
        from core.data.gpu_loader import build_gpu_loaders

        return build_gpu_loaders(d, source.opened, seed, augment, mean, std, size, *where, channels_last)
    splits: DataSplits = source.opened
    splits.train.make_transform = lambda s: train_transform(s, mean, std, augment)
    splits.val.make_transform = lambda s: eval_transform(s, mean, std, d.crop_pct)
    for dataset in (splits.train, splits.val):
        dataset.set_image_size(size)
        dataset.transform  # built now: a bad augment.policy is an error before the run dir is written
    cuda = accelerator.device.type == "cuda"
    train, val = torch_loaders(splits, d.batch_size, d.eval_batch_size, d.num_workers, seed, pin_memory=cuda)
    train, val = accelerator.prepare(train, val)  # sharding and device placement (non-blocking when pinned)
    return TorchLoader(train, splits.train, accelerator), TorchLoader(val, splits.val, accelerator)


class TorchLoader:
    """An Accelerate-prepared DataLoader with the backend interface (see the module doc)."""

    exact_shards = False  # Accelerate pads the last batches; evaluate gathers and drops the padding

    def __init__(self, loader, dataset, accelerator):
        self.loader, self.dataset, self.accelerator = loader, dataset, accelerator
        self.batch_size = loader.total_batch_size // max(accelerator.num_processes, 1)
        self.skip = 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)  # the seedable sampler's shuffle
        self.dataset.set_epoch(epoch)  # the augmentation seeds (shared with persistent workers)

    def set_image_size(self, size: int) -> None:
        self.dataset.set_image_size(size)

    def skip_batches(self, n: int) -> None:
        self.skip = n

    def __iter__(self) -> Iterator:
        skip, self.skip = self.skip, 0
        return iter(self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader)

    def first_samples(self, n: int) -> tuple[torch.Tensor, list[int]]:
        """The first n validation samples as the model sees them (for W&B's prediction table)."""
        images = torch.stack([self.dataset[i][0] for i in range(n)])
        return images, [self.dataset.samples[i][1] for i in range(n)]
