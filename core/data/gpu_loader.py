"""The GPU data path (`data.loader: gpu`): CPU threads only read JPEG bytes; the device decodes whole batches
(`torchvision.io.decode_jpeg(list, device=...)`, nvJPEG on a GPU), crops, resizes and augments them.

- Sources: a .beton written by `ftl data convert` (read with numpy alone, core/data/beton_reader.py: no FFCV needed)
  or the ImageFolder files. JPEGs go to the device as bytes; anything else (raw-mode .beton samples, PNG and other
  files) is decoded by the reader threads on the CPU and copied over. A JPEG the batch decode refuses is found by
  decoding one by one, and named in an FtlError (the file, or the .beton and sample index).
- Geometry on the device: the random-resized crop of FFCV's CropDecoder (core/data/ffcv_decode.py), the same
  splitmix64 hash of (seed, epoch, sample index), here vectorised in numpy (the boxes are equal: tested), so crops do
  not depend on threads, workers or the point a run resumed from; validation takes FfcvLoader's centre crop (side
  crop_pct x the short side), both resized with antialiased bilinear interpolation. Per-image `F.interpolate` on crop
  views won over batched alternatives on this repo's 2-core CPU VM (64 crops of 280-360 px photos to 176 px, one
  thread; docs/gpu.md): 980 img/s (uint8 input, CPU only) / 630 img/s (float input) against 190 for
  `torchvision.ops.roi_align` over a zero-padded batch (sampling_ratio=-1) and 350 for one `grid_sample` over the
  padded batch (no antialiasing); on a GPU the per-image form costs two small kernels per image, and padding for a
  batched op would cost a copy per image anyway.
- Then `DeviceAugment` (flips, colour, erasing, normalisation, seeded per (seed, epoch, batch, rank)).
- Order and shards as FfcvLoader: a seeded shuffle per (seed, epoch); rank r takes every world-th sample; training
  shards trimmed to one length (every rank the same steps); validation keeps every sample (`exact_shards`).
- Threads: `num_workers` reader threads read the next batches' bytes (and CPU-decode non-JPEGs, pinning what the
  device copies on CUDA); one device thread decodes, crops and augments batch k+1 on its own CUDA stream while the
  training thread uses batch k. nvJPEG's batched decode blocks its caller until done (torchvision synchronises its
  decoder stream) and DeviceAugment's flips synchronise with `nonzero`: both stay off the training thread, whose hot
  path is a queue get and a stream wait on an event (no host sync). Host buffers are never reused by hand: JPEG
  bytes are consumed when the decode returns, and pinned copies come from PyTorch's caching host allocator, which
  keeps a block until the copies reading it have completed. Every thread takes the rank's GPU as its current device.
- Resume: `skip_batches(n)` slices the epoch's batch list (nothing read or decoded for the skipped batches).
"""

from __future__ import annotations

import math
import os
import queue
import re
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from core.config import AugmentConfig
from core.data.beton import beton_for
from core.data.beton_reader import JPG, BetonIndex, read_beton
from core.data.device_augment import DeviceAugment
from core.errors import FtlError

JPEG_MAGIC = b"\xff\xd8\xff"
BATCHES_AHEAD = 3  # finished device batches waiting for the training thread (FfcvLoader's batches_ahead)


# --- sources: a sample's bytes (a JPEG stream) or its CPU-decoded pixels (3 x H x W uint8) ---


class BetonSource:
    """Samples of a .beton: jpg-mode images as their JPEG bytes, raw-mode ones as pixels (no decode)."""

    def __init__(self, index: BetonIndex):
        self.index, self.labels, self.classes = index, index.labels, index.classes
        self._fd = os.open(index.path, os.O_RDONLY)

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def __len__(self) -> int:
        return self.index.num_samples

    def name(self, i: int) -> str:
        return f"{self.index.path} sample {i}"

    def read(self, i: int) -> tuple[bool, torch.Tensor]:
        data = torch.from_numpy(self.index.read_into(self._fd, i))
        if self.index.modes[i] == JPG:
            return True, data
        h, w = int(self.index.heights[i]), int(self.index.widths[i])
        return False, data.view(h, w, 3).permute(2, 0, 1).contiguous()


class FolderSource:
    """ImageFolder samples: JPEG files as bytes; other files decoded here (torchvision, then PIL for the formats
    torchvision does not read, such as BMP or TIFF)."""

    def __init__(self, samples: list[tuple[str, int]], classes: list[str]):
        self.samples, self.classes = samples, classes
        self.labels = np.array([label for _, label in samples], np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, i: int) -> str:
        return str(self.samples[i][0])

    def read(self, i: int) -> tuple[bool, torch.Tensor]:
        path = self.samples[i][0]
        try:
            data = np.fromfile(path, np.uint8)
        except OSError as e:
            raise FtlError(f"cannot read image {path}: {e.strerror}") from None
        if data[:3].tobytes() == JPEG_MAGIC:
            return True, torch.from_numpy(data)
        try:
            return False, decode_image(torch.from_numpy(data), mode=ImageReadMode.RGB)
        except RuntimeError:
            pass
        try:
            from PIL import Image

            with Image.open(path) as im:
                return False, torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
        except Exception as e:  # noqa: BLE001 - any decoder failure: name the file
            raise FtlError(f"cannot read image {path}: {type(e).__name__}: {e}") from None


Source = BetonSource | FolderSource


def open_source(path: str, what: str) -> Source:
    """The .beton of a data dir (the path itself, or its DIR.beton sibling) when there is one, else its files."""
    from core.data.datasets import scan_image_folder

    beton = beton_for(path)
    if beton is not None:
        return BetonSource(read_beton(beton, what))
    folder = scan_image_folder(path, what)
    return FolderSource([(p, int(label)) for p, label in folder.samples], list(folder.classes))


@dataclass
class GpuData:
    """Training and validation sources with the sample indices each uses, and the class names."""

    train: Source
    train_indices: np.ndarray
    val: Source
    val_indices: np.ndarray
    classes: list[str]


def open_gpu_data(d: Any, seed: int) -> GpuData:
    """The sources of data config d: val_dir, or the torch path's seeded stratified split of train_dir (a .beton
    keeps ImageFolder's sample order, so both formats split alike)."""
    from core.data.datasets import stratified_split

    train = open_source(d.train_dir, "data.train_dir")
    classes = train.classes
    if d.val_dir:
        val = open_source(d.val_dir, "data.val_dir")
        if val.classes != classes:
            raise FtlError(f"data.val_dir={d.val_dir} has classes {val.classes[:3]}... but data.train_dir has "
                           f"{classes[:3]}...: give both the same class folders")  # fmt: skip
        data = GpuData(train, np.arange(len(train)), val, np.arange(len(val)), classes)
    else:
        if d.val_split <= 0:
            raise FtlError("data.val_dir is not set and data.val_split=0: set one of them")
        t_idx, v_idx = stratified_split(train.labels.tolist(), d.val_split, seed)
        data = GpuData(train, np.array(t_idx, np.int64), train, np.array(v_idx, np.int64), classes)
    if len(classes) < 2:
        raise FtlError(f"data.train_dir={d.train_dir} has {len(classes)} class; a classifier needs at least 2")
    return data


# --- crop boxes: FFCV CropDecoder's, vectorised ---

_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's step on a uint64 array (arithmetic wraps)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def random_crop_boxes(heights: np.ndarray, widths: np.ndarray, indices: np.ndarray, epoch: int, seed: int,
                      scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:  # fmt: skip
    """(n, 4) int64 boxes (i, j, h, w): ffcv_decode.crop_box for every sample at once (torchvision's sampling: 10
    tries of area and log-aspect, then the clamped-ratio centre fallback), draws hashed from (seed, epoch, index)."""
    height, width = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    u64 = lambda x: np.uint64(int(x) % 2**64)
    seeded = _mix(np.full(len(height), u64(seed), np.uint64))
    base = _mix(_mix(seeded ^ u64(epoch)) ^ np.asarray(indices).astype(np.uint64))
    draws = _mix(base[None, :] ^ np.arange(40, dtype=np.uint64)[:, None])  # draw d of try t: 4t + d
    u = ((draws >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)).reshape(10, 4, -1)
    log_r0, log_r1 = math.log(ratio[0]), math.log(ratio[1])
    area = (height * width).astype(np.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[:, 0])
    aspect = np.exp(log_r0 + (log_r1 - log_r0) * u[:, 1])
    w, h = np.rint(np.sqrt(target * aspect)).astype(np.int64), np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    t, cols = ok.argmax(0), np.arange(len(height))
    h, w = h[t, cols], w[t, cols]
    i = ((height - h + 1) * u[t, 2, cols]).astype(np.int64)
    j = ((width - w + 1) * u[t, 3, cols]).astype(np.int64)
    # no try fits: the whole image, its aspect clamped to the ratio range, centred
    in_ratio = width / height
    fw = np.where(in_ratio < math.exp(log_r0), width, np.where(in_ratio > math.exp(log_r1),
                  np.rint(height * math.exp(log_r1)).astype(np.int64), width))  # fmt: skip
    fh = np.where(in_ratio < math.exp(log_r0), np.rint(width / math.exp(log_r0)).astype(np.int64), height)
    fallback = ~ok.any(0)
    h, w = np.where(fallback, fh, h), np.where(fallback, fw, w)
    i, j = np.where(fallback, (height - h) // 2, i), np.where(fallback, (width - w) // 2, j)
    return np.stack([i, j, h, w], 1)


def center_crop_boxes(heights: np.ndarray, widths: np.ndarray, crop_pct: float) -> np.ndarray:
    """(n, 4) boxes: the centred square of side int(crop_pct x the short side), as FFCV's CropDecoder."""
    height, width = np.asarray(heights, np.int64), np.asarray(widths, np.int64)
    short = np.minimum(height, width)
    c = np.clip((crop_pct * short).astype(np.int64), 1, short)
    return np.stack([(height - c) // 2, (width - c) // 2, c, c], 1)


def resize_crops(images: list[torch.Tensor], boxes: np.ndarray, size: int) -> torch.Tensor:
    """Float (n, 3, size, size) in 0..255: each box of each 3 x H x W uint8 image, antialiased bilinear. The CPU
    resizes uint8 directly (1.6x faster than float); CUDA's antialiased kernel takes floating point only."""
    out = []
    for image, (i, j, h, w) in zip(images, boxes.tolist()):
        crop = image[None, :, i : i + h, j : j + w]
        crop = crop if crop.device.type == "cpu" else crop.float()
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out).float()


# --- the loader ---


@dataclass
class _HostBatch:
    """One batch as the reader threads leave it: JPEG bytes and CPU-decoded pixels with their places in the batch."""

    samples: np.ndarray  # indices into the source
    jpegs: list[torch.Tensor]
    jpeg_at: list[int]
    pixels: list[torch.Tensor]
    pixel_at: list[int]
    labels: torch.Tensor


class GpuLoader:
    """Iterating yields (float NCHW normalised images, int64 labels) on `device`, decoded there."""

    exact_shards = True  # evaluate() sums over ranks instead of gathering (shards may differ in length by one)

    def __init__(self, source: Source, indices: np.ndarray, batch_size: int, *, train: bool, image_size: int,
                 crop_pct: float, augment: AugmentConfig, mean: list[float], std: list[float], seed: int,
                 device: torch.device, num_workers: int = 2, rank: int = 0, world: int = 1,
                 channels_last: bool = False):  # fmt: skip
        self.source, self.indices = source, np.asarray(indices, np.int64)
        self.batch_size, self.train = batch_size, train
        self.size, self.crop_pct, self.seed, self.device = image_size, crop_pct, seed, torch.device(device)
        self.scale, self.ratio = tuple(augment.scale), tuple(augment.ratio)
        self.workers, self.rank, self.world = num_workers, rank, world
        self.augment = DeviceAugment(augment, mean, std, seed, train, channels_last, planar=True)
        self.length = len(self.indices) // world if train else None  # equal shards: every rank runs the same steps
        self.drop_last = train and len(self.indices) // world > batch_size
        self.epoch, self.skip, self.shuffle = 0, 0, train  # shuffle=False: the indices in order (previews)
        self.cuda = self.device.type == "cuda"
        if self.cuda and self.device.index is None:  # our threads start on device 0, not the rank's device
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None

    def _on_device(self):
        """The rank's GPU as a thread's current device: a new thread's is device 0, where pinning memory or
        launching work would create a second CUDA context on rank > 0."""
        return torch.cuda.device(self.device) if self.cuda else nullcontext()

    def order(self) -> np.ndarray:
        """This rank's samples of the current epoch, in order."""
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(order)
        return order[self.rank :: self.world][: self.length]

    def __len__(self) -> int:
        n = len(self.order()) if self.length is None else self.length
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_image_size(self, size: int) -> None:
        self.size = size  # read when the next iteration starts

    def skip_batches(self, n: int) -> None:
        """The next iteration leaves out the first n batches (mid-epoch resume), without reading them."""
        self.skip = n

    def __iter__(self):
        skip, self.skip = self.skip, 0
        order, bs = self.order(), self.batch_size
        batches = [order[k * bs : (k + 1) * bs] for k in range(skip, len(self))]
        done, stop = queue.Queue(maxsize=BATCHES_AHEAD), threading.Event()
        args = (batches, skip, self.epoch, self.size, done, stop)
        worker = threading.Thread(target=self._produce, args=args, name="ftl-gpu-decode", daemon=True)
        worker.start()
        current = torch.cuda.current_stream(self.device) if self.cuda else None
        try:
            while True:
                item = done.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                images, labels, ready = item
                if current is not None:  # made on the decode stream: order after it, keep its memory until used here
                    current.wait_event(ready)
                    images.record_stream(current)
                    labels.record_stream(current)
                yield images, labels
        finally:
            stop.set()
            worker.join()

    def _produce(self, batches: list[np.ndarray], first: int, epoch: int, size: int, done: queue.Queue,
                 stop: threading.Event) -> None:  # fmt: skip
        """The device thread: reads run ahead in the pool; each batch is decoded, cropped, resized and augmented."""

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    done.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ftl-gpu-read") if self.workers else None
        reads: deque[Future] = deque()
        try:
            with self._on_device(), torch.cuda.stream(self.stream) if self.cuda else nullcontext():
                ahead = max(2, self.workers)
                for k, samples in enumerate(batches):
                    while pool is not None and len(reads) < ahead and k + len(reads) < len(batches):
                        reads.append(pool.submit(self._read, batches[k + len(reads)]))
                    host = reads.popleft().result() if pool is not None else self._read(samples)
                    images, labels = self._to_device(host, epoch, first + k, size)
                    ready = torch.cuda.Event() if self.cuda else None
                    if ready is not None:
                        ready.record(self.stream)
                    if stop.is_set() or not put((images, labels, ready)):
                        return
            put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the training thread, which raises it
            put(e)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _read(self, samples: np.ndarray) -> _HostBatch:
        """A reader thread: the batch's bytes (JPEGs) and pixels (anything else, decoded here); pinned on CUDA."""
        jpegs, jpeg_at, pixels, pixel_at = [], [], [], []
        with self._on_device():
            for k, i in enumerate(samples.tolist()):
                is_jpeg, data = self.source.read(i)
                if is_jpeg:
                    jpegs.append(data)
                    jpeg_at.append(k)
                else:
                    pixels.append(data.pin_memory() if self.cuda else data)
                    pixel_at.append(k)
            labels = torch.from_numpy(self.source.labels[samples])
            return _HostBatch(samples, jpegs, jpeg_at, pixels, pixel_at, labels.pin_memory() if self.cuda else labels)

    def _to_device(self, host: _HostBatch, epoch: int, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images: list[Any] = [None] * len(host.samples)
        for k, image in zip(host.jpeg_at, self._decode_jpegs(host)):
            images[k] = image
        for k, pixels in zip(host.pixel_at, host.pixels):
            images[k] = pixels.to(self.device, non_blocking=True)
        heights, widths = np.array([im.shape[1] for im in images]), np.array([im.shape[2] for im in images])
        if self.train:
            boxes = random_crop_boxes(heights, widths, host.samples, epoch, self.seed, self.scale, self.ratio)
        else:
            boxes = center_crop_boxes(heights, widths, self.crop_pct)
        x = self.augment(resize_crops(images, boxes, size), epoch, batch, self.rank)
        return x, host.labels.to(self.device, non_blocking=True)

    def _decode_jpegs(self, host: _HostBatch) -> list[torch.Tensor]:
        """The batch's JPEGs decoded on the device in one call; after a failure, one by one to name the culprit (a
        JPEG nvJPEG refuses but libjpeg-turbo reads, such as CMYK, is decoded on the CPU and copied)."""
        if not host.jpegs:
            return []
        try:
            return decode_jpeg(host.jpegs, mode=ImageReadMode.RGB, device=self.device)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:
            pass
        out = []
        for k, data in zip(host.jpeg_at, host.jpegs):
            try:
                out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
                continue
            except torch.OutOfMemoryError:
                raise
            except RuntimeError as e:
                error = e
            if self.cuda:
                try:
                    out.append(decode_jpeg(data, mode=ImageReadMode.RGB).to(self.device))
                    continue
                except RuntimeError:
                    pass
            name = self.source.name(int(host.samples[k]))
            raise FtlError(f"cannot decode JPEG {name} ({_reason(error)}): fix or remove it (for a .beton: "
                           "`ftl data convert` it again)") from None  # fmt: skip
        return out


def build_gpu_loaders(d: Any, data: GpuData, seed: int, aug: AugmentConfig, mean: list[float], std: list[float],
                      size: int, device: torch.device, rank: int, world: int,
                      channels_last: bool = False) -> tuple[GpuLoader, GpuLoader]:  # fmt: skip
    """(train, val) GpuLoaders for data config d (batch_size, eval_batch_size, num_workers, crop_pct) over `data`,
    what open_gpu_data(d, seed) returned. On CUDA, first checks that this torchvision decodes JPEGs there."""
    if torch.device(device).type == "cuda" and (problem := nvjpeg_problem(device)):
        raise FtlError(f"data.loader=gpu: torchvision cannot decode JPEGs on {device} ({problem}); use "
                       "data.loader=ffcv or torch, or a torchvision built with nvJPEG")  # fmt: skip
    common = {"image_size": size, "crop_pct": d.crop_pct, "augment": aug, "mean": mean, "std": std, "seed": seed,
              "device": device, "num_workers": d.num_workers, "rank": rank, "world": world,
              "channels_last": channels_last}  # fmt: skip
    train = GpuLoader(data.train, data.train_indices, d.batch_size, train=True, **common)
    val = GpuLoader(data.val, data.val_indices, d.eval_batch_size or 2 * d.batch_size, train=False, **common)
    return train, val


def nvjpeg_problem(device: torch.device) -> str | None:
    """Why torchvision cannot decode JPEGs on `device` (a build without nvJPEG, no driver), or None: one 16 x 16
    JPEG, decoded there. A CUDA loader that could not would fall back to the CPU image by image, silently slow."""
    from torchvision.io import encode_jpeg

    try:
        tiny = encode_jpeg(torch.full((3, 16, 16), 128, dtype=torch.uint8))
        decode_jpeg([tiny], mode=ImageReadMode.RGB, device=device)
    except RuntimeError as e:
        return _reason(e)
    return None


def _reason(error: Exception) -> str:
    """The first line of a torch / torchvision error, without its source-location prefixes."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    line = re.sub(r"^\w+, \S+:\d+, ", "", line)  # torchvision: "decode_jpeg, /path/decode_jpeg.cpp:171, why"
    return re.sub(r"\[[^\]]*:\d+\] ", "", line)[:200]  # c10: "[04:38:16 /path/accelerator.h:57] why"
