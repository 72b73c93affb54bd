"""The FFCV data path: `FfcvLoader`, a training/validation loader
over a .beton that yields normalised, augmented float batches on the device, like the torch path's loaders.

- Decoding: ftl's `CropDecoder` (crops inside the JPEG decode, scaled decoding; crops seeded per sample) or FFCV's
  stock decoders (`data.ffcv_decoder: stock`). Progressive resizing sets the decoder's output size per epoch (no
  recompilation: FFCV re-reads the size when it allocates an epoch's buffers).
- Order: a seeded shuffle per epoch (OS page cache) sharded over ranks: rank r takes every world-th sample, so the
  shards are disjoint and together the whole set (training trims the shards to one length so every rank runs the
  same number of steps; validation keeps every sample and `evaluate` sums over ranks). `quasi-random` is FFCV's
  page-wise order for datasets larger than RAM (process cache; one process).
- Batches reach the device non-blocking, then `DeviceAugment` does the rest.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from core.data.beton import require_ffcv

require_ffcv()  # first: it sets numba's threading layer, which `import ffcv` would fix to the default
import numba
import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from ffcv.transforms import Squeeze, ToDevice, ToTensor
from ffcv.traversal_order.base import TraversalOrder

from core.config import AugmentConfig
from core.data.beton import Beton, beton_for, open_beton
from core.data.device_augment import DeviceAugment
from core.errors import FtlError


def open_split(d: Any, seed: int) -> tuple[Beton, np.ndarray, Beton, np.ndarray]:
    """(train beton, train indices, val beton, val indices): a val .beton, or the same seeded stratified split of
    the training set as the torch path (a .beton keeps ImageFolder's sample order)."""
    from core.data.datasets import stratified_split

    train_path = beton_for(d.train_dir)
    if train_path is None:
        raise FtlError(f"data.loader=ffcv but there is no {d.train_dir}.beton: create it with "
                       f"`ftl data convert {d.train_dir}` or set data.train_dir to a .beton")  # fmt: skip
    train = open_beton(train_path, "data.train_dir")
    if d.val_dir:
        val_path = beton_for(d.val_dir)
        if val_path is None:
            raise FtlError(f"data.loader=ffcv but there is no {d.val_dir}.beton: create it with `ftl data convert {d.val_dir}`")
        val = open_beton(val_path, "data.val_dir")
        if val.classes != train.classes:
            raise FtlError(f"{val.path} has classes {val.classes[:3]}... but {train.path} has {train.classes[:3]}...: "
                           "convert both from folders with the same class names")  # fmt: skip
        return train, np.arange(train.num_samples), val, np.arange(val.num_samples)
    if d.val_split <= 0:
        raise FtlError("data.val_dir is not set and data.val_split=0: set one of them")
    t_idx, v_idx = stratified_split(train.labels.tolist(), d.val_split, seed)
    return train, np.array(t_idx), train, np.array(v_idx)


class _ShardOrder(TraversalOrder):
    """A TraversalOrder instance (FFCV calls `order(loader)`, then `sample_order(epoch)` each epoch): a seeded
    shuffle per epoch (or the given order); rank r takes every world-th sample; the first `skip` are left out."""

    def __init__(self, indices: np.ndarray, shuffle: bool, seed: int, rank: int, world: int, equal: bool,
                 whole_batches: int | None = None):  # fmt: skip
        self.indices, self.shuffle, self.seed, self.rank, self.world = indices.astype(np.uint64), shuffle, seed, rank, world
        self.length = len(indices) // world if equal else None  # equal shards: every rank runs the same steps
        if self.length is not None and whole_batches:  # drop_last: the partial batch is dropped before any skip,
            self.length -= self.length % whole_batches  # so a resumed epoch ends where the uninterrupted one does
        self.epoch, self.skip = 0, 0

    def __call__(self, loader) -> _ShardOrder:
        return self

    def sample_order(self, _ffcv_epoch: int) -> np.ndarray:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.indices) if self.shuffle else self.indices
        return order[self.rank :: self.world][: self.length][self.skip :]


class FfcvLoader:
    """An FFCV Loader plus device augmentation; iterating yields (float NCHW images, int64 labels) on `device`."""

    exact_shards = True  # evaluate() sums over ranks instead of gathering (shards may differ in length by one)

    def __init__(self, beton: Beton, indices: np.ndarray, batch_size: int, *, train: bool, image_size: int,
                 crop_pct: float, augment: AugmentConfig, mean: list[float], std: list[float], seed: int,
                 device: torch.device, num_workers: int = 2, rank: int = 0, world: int = 1, order: str = "random",
                 os_cache: bool = True, decoder: str = "ftl", channels_last: bool = False):  # fmt: skip
        self.rank, self.batch_size, self.epoch, self.skip = rank, batch_size, 0, 0
        self.decoder = make_decoder(decoder, train, image_size, crop_pct, augment, seed)
        to_device = [ToDevice(device, non_blocking=True)] if device.type != "cpu" else []  # CPU: no extra copy
        planar = decoder == "ftl"  # ftl's decoder writes 3 x H x W
        self.augment_op = _AugmentOp(DeviceAugment(augment, mean, std, seed, train, channels_last, planar), rank)
        pipelines = {"image": [self.decoder, ToTensor(), *to_device, self.augment_op],
                     "label": [IntDecoder(), ToTensor(), Squeeze(), *to_device]}  # fmt: skip
        drop_last = train and len(indices) // world > batch_size
        if order == "quasi-random":
            if world > 1 or os_cache:
                raise FtlError("data.ffcv_order=quasi-random needs data.ffcv_os_cache=false and one process; "
                               "use data.ffcv_order=random for multi-process runs")  # fmt: skip
            self.order = None
            ffcv_order, indices_arg = OrderOption.QUASI_RANDOM if train else OrderOption.SEQUENTIAL, indices
        else:
            self.order = _ShardOrder(indices, train, seed, rank, world, equal=train,
                                     whole_batches=batch_size if drop_last else None)  # fmt: skip
            ffcv_order, indices_arg = self.order, None
        threads = max(1, min(num_workers, numba.config.NUMBA_NUM_THREADS))  # numba refuses more than it started
        torch_threads = torch.get_num_threads()
        self.loader = Loader(str(beton.path), batch_size=batch_size, num_workers=threads, os_cache=os_cache,
                             order=ffcv_order, seed=seed, indices=indices_arg, pipelines=pipelines,
                             drop_last=drop_last, batches_ahead=3)  # fmt: skip
        torch.set_num_threads(torch_threads)  # FFCV sets torch's thread count to its own worker count
        self.batches = len(self.loader)

    def __len__(self) -> int:
        return self.batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if self.order is not None:
            self.order.epoch = epoch
        if hasattr(self.decoder, "set_epoch"):
            self.decoder.set_epoch(epoch)

    def set_image_size(self, size: int) -> None:
        self.decoder.output_size = (size, size)  # read when the next epoch allocates its buffers

    def skip_batches(self, n: int) -> None:
        """The next iteration leaves out the first n batches (mid-epoch resume), without decoding them."""
        self.skip = n
        if self.order is not None:
            self.order.skip = n * self.batch_size

    def __iter__(self):
        skip, self.skip = self.skip, 0
        self.augment_op.epoch = self.epoch
        self.augment_op.batch = skip if self.order is not None else 0  # seeds follow the batch's place in the epoch
        torch_threads = torch.get_num_threads()
        batches = iter(self.loader)
        try:
            for i, (images, labels) in enumerate(batches):
                if i == 0:  # FFCV's thread set torch's thread count to its worker count when it started
                    torch.set_num_threads(torch_threads)
                if self.order is None and i < skip:
                    continue  # quasi-random order: skipping means decoding and dropping
                # labels: copied out of FFCV's reused buffer; images: the augmentation made a new tensor
                yield images, labels.long().clone()
        finally:
            batches.close()  # stops FFCV's worker thread when the loop is left early
            if self.order is not None:
                self.order.skip = 0


class _AugmentOp(Operation):
    """DeviceAugment as the last FFCV pipeline stage: it runs in FFCV's loader thread (on its CUDA stream on a GPU),
    overlapping the training step, and never at the same time as the decoder's threads (which on a CPU-only
    machine would fight over the cores). Batches pass in order, so a counter gives each its index for the seed."""

    def __init__(self, augment: DeviceAugment, rank: int):
        super().__init__()
        self.augment, self.rank, self.epoch, self.batch = augment, rank, 0, 0

    def generate_code(self):
        def run(images: torch.Tensor, _dst) -> torch.Tensor:
            out = self.augment(images, self.epoch, self.batch, self.rank)
            self.batch += 1
            if out.is_cuda:  # made on FFCV's stream, used on the default one: keep the allocator from reusing it early
                out.record_stream(torch.cuda.default_stream(out.device))
            return out

        return run

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, None]:
        shape = previous_state.shape if self.augment.planar else tuple(previous_state.shape[i] for i in (2, 0, 1))
        return replace(previous_state, jit_mode=False, shape=shape, dtype=torch.float32), None


def make_decoder(kind: str, train: bool, size: int, crop_pct: float, aug: AugmentConfig, seed: int):
    """ftl's CropDecoder, or FFCV's stock random-resized-crop / centre-crop decoder."""
    if kind == "stock":
        from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder

        if train:
            return RandomResizedCropRGBImageDecoder((size, size), tuple(aug.scale), tuple(aug.ratio))
        return CenterCropRGBImageDecoder((size, size), crop_pct)
    from core.data.ffcv_decode import CropDecoder

    if train:
        return CropDecoder(size, tuple(aug.scale), tuple(aug.ratio), seed=seed, planar=True)
    return CropDecoder(size, seed=seed, center_crop_pct=crop_pct, planar=True)


def build_ffcv_loaders(d: Any, split: tuple, seed: int, aug: AugmentConfig, mean: list[float], std: list[float],
                       size: int, device: torch.device, rank: int, world: int, channels_last: bool = False):  # fmt: skip
    """(train, val) FfcvLoaders for data config d over `split`, what open_split returned."""
    train, t_idx, val, v_idx = split
    common = {"crop_pct": d.crop_pct, "augment": aug, "mean": mean, "std": std, "seed": seed, "device": device,
              "num_workers": d.num_workers, "rank": rank, "world": world, "os_cache": d.ffcv_os_cache,
              "decoder": d.ffcv_decoder, "channels_last": channels_last, "image_size": size}  # fmt: skip
    train_loader = FfcvLoader(train, t_idx, d.batch_size, train=True, order=d.ffcv_order, **common)
    val_loader = FfcvLoader(val, v_idx, d.eval_batch_size or 2 * d.batch_size, train=False, **common)
    return train_loader, val_loader
