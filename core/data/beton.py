"""FFCV `.beton` files: conversion from ImageFolder trees and bundled datasets, and checked opening.

`convert` writes fields `image` (RGBImageField: jpg / raw / proportion, max resolution, JPEG quality) and `label`
(IntField) with FFCV's own multi-process DatasetWriter (and its progress bar) into a temporary sibling that is
renamed into place, then a sidecar `FILE.beton.json`: class names, counts per class, a hash of the source, the
options, and the .beton's size (a truncated copy is caught before FFCV reads garbage).

FFCV's writer hangs forever when a worker raises (its main loop waits for a sample count that never arrives), so
unreadable images never reach it as exceptions: the reader records them in shared memory and hands FFCV a 1x1
placeholder; afterwards the conversion fails naming the file, or (`skip_bad`) writes again without them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing.shared_memory
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import FtlError
from core.fileio import UMASK, write_json_atomic

MODES = ("jpg", "raw", "proportion")
FORMAT = "ftl-beton/1"
INSTALL_HINT = "install it with `pip install -e '.[ffcv]'` (after `apt-get install -y pkg-config libturbojpeg0-dev libopencv-dev`)"


def require_ffcv() -> None:
    """Import ffcv (every ftl import of it goes through here first) or raise an FtlError saying how to install it."""
    try:
        import numba

        # numba's OpenMP threading layer before TBB: with TBB, FFCV's decode threads and torch's OpenMP threads (the
        # device augmentation, on a CPU) get in each other's way: ~30% fewer images/s (bench/loader_throughput.py).
        # It must be set before `import ffcv`, which starts numba's threads.
        if numba.config.THREADING_LAYER == "default":
            numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
        import ffcv  # noqa: F401
    except ImportError as e:
        raise FtlError(f"FFCV is not installed ({e}); {INSTALL_HINT}") from None


def ffcv_available() -> bool:
    try:
        require_ffcv()
        return True
    except FtlError:
        return False


def sidecar_path(beton: str | Path) -> Path:
    return Path(f"{beton}.json")


class _Images:
    """Indexable (RGB uint8 HxWx3, label) samples for FFCV's writer. Runs in its forked workers: failures and a
    per-sample content digest go to arrays in shared memory that the parent reads afterwards."""

    def __init__(self, samples: list[tuple[Any, int]], arrays: np.ndarray | None = None):
        self.samples = samples  # (path, label) or (uint8 array, label)
        self.arrays = arrays
        n = len(samples)
        self._shm = multiprocessing.shared_memory.SharedMemory(create=True, size=max(1, n * 17))
        self.bad = np.ndarray((n,), np.uint8, self._shm.buf[:n])
        self.digests = np.ndarray((n, 16), np.uint8, self._shm.buf[n : 17 * n])
        self.bad[:] = 0

    def close(self) -> None:
        del self.bad, self.digests
        self._shm.close()
        self._shm.unlink()

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> np.ndarray:
        from PIL import Image

        source, _ = self.samples[index]
        if isinstance(source, np.ndarray):
            image = source if source.ndim == 3 else np.repeat(source[:, :, None], 3, axis=2)
            self.digests[index] = np.frombuffer(hashlib.blake2b(image.tobytes(), digest_size=16).digest(), np.uint8)
            return np.ascontiguousarray(image)
        data = Path(source).read_bytes()
        self.digests[index] = np.frombuffer(hashlib.blake2b(data, digest_size=16).digest(), np.uint8)
        with Image.open(source) as im:
            return np.asarray(im.convert("RGB"))  # convert() decodes fully: truncation raises here

    def __getitem__(self, index: int):
        try:
            image = self.load(index)
        except Exception:  # noqa: BLE001 - recorded; the parent re-reads the file to report why
            self.bad[index] = 1
            image = np.zeros((1, 1, 3), np.uint8)
        return image, self.samples[index][1]


def _why_unreadable(path: str) -> str:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.convert("RGB")
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return "unreadable"


def _source(src: str, split: str, per_class: int | None) -> tuple[list[tuple[Any, int]], list[str], str]:
    """(samples, class names, description) of an ImageFolder root or a bundled dataset name."""
    from core.data import bundled
    from core.data.datasets import scan_image_folder

    path = Path(src).expanduser()
    if not path.exists() and src in bundled.DATASETS:
        load, names = bundled.DATASETS[src]
        arrays = load()
        if split not in arrays:
            raise FtlError(f"--split {split}: {src} has splits {', '.join(arrays)}")
        images, labels = bundled.select(*arrays[split], None, per_class)
        return [(img, int(lab)) for img, lab in zip(images, labels)], list(names), f"{src}:{split}"
    if not path.is_dir():
        raise FtlError(f"{src}: no such directory or bundled dataset (bundled: {', '.join(bundled.DATASETS)})")
    folder = scan_image_folder(path, "SRC")
    samples = [(p, int(lab)) for p, lab in folder.samples]
    if per_class is not None:  # the first per_class images of each class, in folder order
        taken: dict[int, int] = {}
        kept = []
        for sample in samples:
            taken[sample[1]] = taken.get(sample[1], 0) + 1
            if taken[sample[1]] <= per_class:
                kept.append(sample)
        samples = kept
    return samples, list(folder.classes), str(path.resolve())


def _page_size(samples: list[tuple[Any, int]], mode: str, max_resolution: int | None) -> int:
    """FFCV pages (2 MiB at least) must hold the largest sample: a big raw image needs bigger pages."""
    from PIL import Image

    largest = 0
    if mode != "jpg" and max_resolution is None:
        for source, _ in samples:
            if isinstance(source, np.ndarray):
                largest = max(largest, source.shape[0] * source.shape[1] * 3)
            else:
                try:
                    with Image.open(source) as im:
                        largest = max(largest, im.width * im.height * 3)
                except Exception:  # noqa: BLE001 - reported by the conversion itself
                    pass
    elif max_resolution is not None:
        largest = max_resolution * max_resolution * 3
    return max(1 << 21, 1 << int(np.ceil(np.log2(largest + 4096))))


def convert(
    src: str,
    out: str | Path | None = None,
    *,
    mode: str = "jpg",
    max_resolution: int | None = None,
    jpeg_quality: int = 90,
    compress_probability: float = 0.5,
    skip_bad: bool = False,
    split: str = "train",
    per_class: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Convert SRC (an ImageFolder root or a bundled dataset name) into a .beton; returns the sidecar's content."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if mode not in MODES:
        raise FtlError(f"--mode {mode}: use one of {', '.join(MODES)}")
    if not 1 <= jpeg_quality <= 100:
        raise FtlError(f"--jpeg-quality {jpeg_quality}: use 1-100")
    if max_resolution is not None and max_resolution < 8:
        raise FtlError(f"--max-resolution {max_resolution}: use at least 8 (pixels of the longer side)")
    samples, classes, description = _source(src, split, per_class)
    if not samples:
        raise FtlError(f"{src}: no images found")
    if out is None:
        if not Path(src).expanduser().is_dir():
            raise FtlError(f"{src} is a bundled dataset: give --out FILE.beton")
        folder = Path(src).expanduser().resolve()
        out = folder.parent / f"{folder.name}.beton"
    out = Path(out).expanduser()
    if out.suffix != ".beton":
        raise FtlError(f"--out {out}: the file name must end in .beton")
    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]  # removed again if the convert fails
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        os.chmod(tmp_name, 0o666 & ~UMASK)
    except OSError as e:
        raise FtlError(f"cannot write {out}: {e.strerror}; choose a writable --out") from None
    tmp = Path(tmp_name)
    workers = workers or min(8, os.cpu_count() or 1)
    fields = {"image": RGBImageField(write_mode=mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality,
                                     compress_probability=compress_probability),
              "label": IntField()}  # fmt: skip
    page_size = _page_size(samples, mode, max_resolution)
    data = _Images(samples)
    started = time.perf_counter()
    try:
        with _progress_only_on_a_terminal():
            DatasetWriter(str(tmp), fields, page_size=page_size, num_workers=workers).from_indexed_dataset(data, chunksize=64)
        bad = np.flatnonzero(data.bad).tolist()
        bad_paths = [str(samples[i][0]) for i in bad]
        if bad and not skip_bad:
            raise FtlError(f"cannot read image {bad_paths[0]} ({_why_unreadable(bad_paths[0])}); "
                           f"{len(bad)} unreadable in all: fix or remove them, or pass --skip-bad to leave them out")  # fmt: skip
        keep = [i for i in range(len(samples)) if not data.bad[i]]
        if bad:  # write again without them (rare path: costs a second pass)
            if not keep:
                raise FtlError(f"{src}: none of the {len(samples)} images could be read (first: {bad_paths[0]})")
            with _progress_only_on_a_terminal():
                DatasetWriter(str(tmp), fields, page_size=page_size, num_workers=workers).from_indexed_dataset(
                    data, indices=np.array(keep), chunksize=64)  # fmt: skip
        source_hash = hashlib.sha256(data.digests[keep].tobytes() + json.dumps(
            [samples[i][1] for i in keep]).encode()).hexdigest()  # fmt: skip
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        counts = Counter(samples[i][1] for i in keep)
        meta = {
            "format": FORMAT, "source": description, "source_hash": source_hash, "classes": classes,
            "counts": {c: counts[k] for k, c in enumerate(classes)}, "num_samples": len(keep),
            "skipped": bad_paths, "mode": mode, "max_resolution": max_resolution, "jpeg_quality": jpeg_quality,
            "compress_probability": compress_probability if mode == "proportion" else None,
            "beton_bytes": tmp.stat().st_size, "seconds": round(time.perf_counter() - started, 2),
        }  # fmt: skip
        # The sidecar first: a .beton under its final name always has a matching sidecar (its size is checked).
        write_json_atomic(sidecar_path(out), meta)
        os.replace(tmp, out)
        meta["path"] = str(out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # before the folders it sits in (`finally` would be too late)
        for folder in made:  # nothing half-written left behind: the folders this convert created, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        tmp.unlink(missing_ok=True)
        data.close()
    return meta


@contextlib.contextmanager
def _progress_only_on_a_terminal():
    """FFCV's writer draws a tqdm bar on stderr: in a log file (a SLURM job, `> log`) it is hundreds of lines of
    carriage returns. Without a terminal its stderr goes nowhere (errors still arrive, as exceptions)."""
    if sys.stderr.isatty():
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        yield


@dataclass
class Beton:
    """A checked .beton: its path, sample count, labels (read from the metadata, no decoding) and class names."""

    path: Path
    num_samples: int
    labels: np.ndarray
    classes: list[str]
    meta: dict[str, Any]


def open_beton(path: str | Path, what: str = "data.train_dir") -> Beton:
    """Check that path is a complete ftl/FFCV .beton (header, field types, allocation table within the file, the
    sidecar's size) and read its labels; any problem is one FtlError naming the file and the fix."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.reader import Reader
    from ffcv.types import HeaderType

    from core.data.beton_reader import FIX as fix
    from core.data.beton_reader import beton_size

    path = Path(path).expanduser()
    size = beton_size(path, what, HeaderType.itemsize)
    try:
        reader = Reader(str(path))
    except Exception as e:  # noqa: BLE001 - FFCV raises assorted errors on garbage
        raise FtlError(f"{what}={path}: not a readable .beton ({type(e).__name__}: {e}); {fix}") from None
    kinds = {name: type(h) for name, h in reader.handlers.items()}
    if kinds.get("image") is not RGBImageField or kinds.get("label") is not IntField:
        raise FtlError(f"{what}={path}: expected fields image (RGB image) and label (int), found "
                       f"{', '.join(f'{k} ({v.__name__})' for k, v in kinds.items())}; {fix}")  # fmt: skip
    table, n = reader.alloc_table, int(reader.num_samples)
    if reader.header["alloc_table_ptr"] > size or len(reader.metadata) != n or not len(table):
        raise FtlError(f"{what}={path}: truncated or corrupt .beton (index past the end of the file); {fix}")
    if int((table["ptr"] + table["size"]).max()) > size:
        raise FtlError(f"{what}={path}: truncated .beton (image data past the end of the file); {fix}")
    sidecar = sidecar_path(path)
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    if meta and (meta.get("beton_bytes") != size or meta.get("num_samples") != n):
        raise FtlError(f"{what}={path}: {size} bytes / {n} samples, but {sidecar.name} says "
                       f"{meta.get('beton_bytes')} / {meta.get('num_samples')}: the file is incomplete or changed; {fix}")  # fmt: skip
    labels = np.asarray(reader.metadata["f1"]).astype(np.int64)  # field order: image, label
    classes = meta.get("classes") or [str(c) for c in range(int(labels.max()) + 1)]
    if labels.min() < 0 or labels.max() >= len(classes):
        raise FtlError(f"{what}={path}: labels {labels.min()}..{labels.max()} do not fit {len(classes)} classes; {fix}")
    return Beton(path, n, labels, list(classes), meta)


def beton_for(path: str | None) -> Path | None:
    """The .beton of a data dir: the path itself when it is one, else DIR.beton next to the folder (what
    `ftl data convert DIR` writes), or None."""
    if not path:
        return None
    p = Path(path).expanduser()
    if p.suffix == ".beton":
        return p
    sibling = p.parent / f"{p.name}.beton"
    return sibling if sibling.is_file() else None


def choose_loader(d: Any, say=print, device: Any = None, torch_only: str = "") -> str:
    """'torch', 'ffcv' or 'gpu' for data config d on `device`; `auto` picks the fastest the data and the device
    allow (see core/data/loaders.py) and says why in one line. torch_only: why only the torch path will do (an
    augmentation the device pipelines do not have), or ''."""
    is_beton = [p for p in (d.train_dir, d.val_dir) if p and str(p).endswith(".beton")]
    if d.loader == "gpu":
        if device is None or device.type != "cuda":
            raise FtlError("data.loader=gpu decodes JPEGs on a CUDA GPU, and this run has none; use data.loader=auto "
                           "(ffcv or torch on CPUs)")  # fmt: skip
        return "gpu"
    if d.loader == "torch":
        if is_beton:
            raise FtlError(f"data.train_dir/val_dir {is_beton[0]} is a .beton: set data.loader=ffcv (or auto)")
        return "torch"
    if d.loader == "ffcv":
        from core.data.beton import require_ffcv

        require_ffcv()
        return "ffcv"
    resize = getattr(d, "resize", "auto")
    if resize not in ("auto", "crop", "center"):  # squash / pad: only the torch path's transforms do them so far
        torch_only = torch_only or f"data.resize={resize}; the ffcv and gpu loaders crop"
    if torch_only:
        say(f"ftl: data.loader=auto -> torch ({torch_only})")
        return "torch"
    if device is not None and device.type == "cuda":
        from core.data.gpu_loader import nvjpeg_problem

        if (problem := nvjpeg_problem(device)) is None:
            say("ftl: data.loader=auto -> gpu (a CUDA device: JPEGs decoded there by nvJPEG, crops on the device)")
            return "gpu"
        say(f"ftl: data.loader=auto: not gpu ({problem})")
    missing = [f"{p}.beton" for p in (d.train_dir, d.val_dir) if p and beton_for(p) is None]
    if ffcv_available() and not missing:
        say("ftl: data.loader=auto -> ffcv (.beton files found)")
        return "ffcv"
    if is_beton:
        raise FtlError(f"data.train_dir/val_dir {is_beton[0]} is a .beton but FFCV is not installed; "
                       "install it with `pip install -e '.[ffcv]'`")  # fmt: skip
    why = "FFCV is not installed" if not ffcv_available() else f"no {missing[0]} (make it with `ftl data convert`)"
    say(f"ftl: data.loader=auto -> torch ({why})")
    return "torch"
