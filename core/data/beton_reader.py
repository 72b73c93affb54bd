"""A .beton reader in numpy alone, for machines without FFCV (the GPU loader reads JPEG bytes, never decodes here).

FFCV's layout (ffcv/types.py, reader.py, fields/rgb_image.py, fields/basics.py, memory_allocator.py), all
little-endian:
- header (`HEADER`, 24 bytes, C-aligned): version (2), number of fields, page size, number of samples, and the
  offset of the allocation table;
- one field descriptor per field (`FIELD_DESC`, 1041 bytes, aligned): type id (2 = RGBImageField, 1 = IntField),
  a NUL-terminated name of 16 bytes, 1024 bytes of arguments (unused by these two types);
- the metadata table right after them: one aligned record per sample, one member per field in field order
  (RGB image: mode (0 jpg, 1 raw), width, height, data_ptr; int: the value);
- the data pages; then, at `alloc_table_ptr`, the allocation table (sample_id, ptr, size) of every region the
  writer allocated. A sample's image bytes are [data_ptr, data_ptr + size) with size from the table entry at
  data_ptr: a JPEG stream in jpg mode, height x width x 3 RGB bytes in raw mode.

`read_beton` checks what `core.data.beton.open_beton` checks (same errors, same fixes), without FFCV.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import FtlError

VERSION = 2
HEADER = np.dtype([("version", "<u2"), ("num_fields", "<u2"), ("page_size", "<u4"), ("num_samples", "<u8"),
                   ("alloc_table_ptr", "<u8")], align=True)  # fmt: skip
FIELD_DESC = np.dtype([("type_id", "<u1"), ("name", ("<u1", 16)), ("arguments", ("<u1", (1024,)))], align=True)
ALLOC_TABLE = np.dtype([("sample_id", "<u8"), ("ptr", "<u8"), ("size", "<u8")])
IMAGE_META = np.dtype([("mode", "<u1"), ("width", "<u2"), ("height", "<u2"), ("data_ptr", "<u8")])
INT_META = np.dtype("<i8")
TYPE_IDS = {0: "float", 1: "int", 2: "RGB image", 3: "bytes", 4: "ndarray", 5: "json", 6: "torch tensor"}
JPG, RAW = 0, 1  # RGBImageField's modes


@dataclass
class BetonIndex:
    """A checked .beton's index: per sample its label, image mode, height, width, and where its bytes lie."""

    path: Path
    num_samples: int
    labels: np.ndarray  # int64
    modes: np.ndarray  # JPG or RAW
    heights: np.ndarray
    widths: np.ndarray
    ptrs: np.ndarray  # uint64 file offsets
    sizes: np.ndarray  # uint64 byte counts
    classes: list[str]
    meta: dict[str, Any]  # the sidecar's content ({} without one)

    def read_into(self, fd: int, index: int) -> np.ndarray:
        """Sample `index`'s bytes (a JPEG stream, or raw RGB) read with pread from the open file descriptor fd:
        the GIL is released while the kernel copies, so reader threads run in parallel."""
        size, ptr = int(self.sizes[index]), int(self.ptrs[index])
        out = np.empty(size, np.uint8)
        got = os.preadv(fd, [out], ptr)
        if got != size:
            raise FtlError(f"{self.path}: sample {index} ends past the end of the file (read {got} of {size} bytes): "
                           "the file changed or was cut; re-create it with `ftl data convert`")  # fmt: skip
        return out


FIX = "re-create it with `ftl data convert`"


def beton_size(path: Path, what: str, header_bytes: int) -> int:
    """The size of the .beton at path, after the checks every reader makes first (it exists, it is at least a
    header long); FtlError naming the file and the fix otherwise."""
    if not path.is_file():
        raise FtlError(f"{what}={path}: no such .beton file; create it with `ftl data convert SRC --out {path}`")
    size = path.stat().st_size
    if size < header_bytes:
        raise FtlError(f"{what}={path}: not a .beton ({size} bytes, shorter than its header); {FIX}")
    return size


def read_beton(path: str | Path, what: str = "data.train_dir") -> BetonIndex:
    """Read and check a .beton written by `ftl data convert` (fields image and label); any problem is one
    FtlError naming the file and the fix."""
    path = Path(path).expanduser()
    size = beton_size(path, what, HEADER.itemsize)
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(HEADER.itemsize), HEADER)[0]
        n, num_fields = int(header["num_samples"]), int(header["num_fields"])
        if int(header["version"]) != VERSION or not 0 < num_fields < 64:
            raise FtlError(f"{what}={path}: not a readable .beton (version {int(header['version'])}, "
                           f"{num_fields} fields; expected version {VERSION}); {FIX}")  # fmt: skip
        descs = np.frombuffer(f.read(FIELD_DESC.itemsize * num_fields), FIELD_DESC)
        if len(descs) != num_fields:
            raise FtlError(f"{what}={path}: truncated .beton (field descriptors past the end of the file); {FIX}")
        names = [bytes(d["name"]).split(b"\0")[0].decode("ascii", "replace") for d in descs]
        kinds = {name: TYPE_IDS.get(int(d["type_id"]), f"type {int(d['type_id'])}") for name, d in zip(names, descs)}
        if names != ["image", "label"] or kinds["image"] != "RGB image" or kinds["label"] != "int":
            raise FtlError(f"{what}={path}: expected fields image (RGB image) and label (int), found "
                           f"{', '.join(f'{k} ({v})' for k, v in kinds.items())}; {FIX}")  # fmt: skip
        # FFCV's metadata record: one member per field, aligned like a C struct (get_metadata_type)
        record = np.dtype([("f0", IMAGE_META), ("f1", INT_META)], align=True)
        table_ptr = int(header["alloc_table_ptr"])
        meta_end = HEADER.itemsize + descs.nbytes + record.itemsize * n
        if table_ptr > size or meta_end > size:
            raise FtlError(f"{what}={path}: truncated or corrupt .beton (index past the end of the file); {FIX}")
        metadata = np.frombuffer(f.read(record.itemsize * n), record)
        f.seek(table_ptr)
        rest = f.read()  # whole entries only, as FFCV's np.fromfile reads them (trailing bytes: the sidecar check)
        table = np.frombuffer(rest[: len(rest) - len(rest) % ALLOC_TABLE.itemsize], ALLOC_TABLE)
    if len(metadata) != n or not len(table):
        raise FtlError(f"{what}={path}: truncated or corrupt .beton (index past the end of the file); {FIX}")
    if int((table["ptr"] + table["size"]).max()) > size:
        raise FtlError(f"{what}={path}: truncated .beton (image data past the end of the file); {FIX}")
    image = metadata["f0"]
    order = np.argsort(table["ptr"])
    ptrs_sorted, sizes_sorted = table["ptr"][order], table["size"][order]
    at = np.minimum(np.searchsorted(ptrs_sorted, image["data_ptr"]), len(order) - 1)
    if not np.array_equal(ptrs_sorted[at], image["data_ptr"]):
        raise FtlError(f"{what}={path}: corrupt .beton (an image points outside its allocation table); {FIX}")
    sidecar = Path(f"{path}.json")
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    if meta and (meta.get("beton_bytes") != size or meta.get("num_samples") != n):
        said = f"{meta.get('beton_bytes')} / {meta.get('num_samples')}"
        raise FtlError(f"{what}={path}: {size} bytes / {n} samples, but {sidecar.name} says {said}: the file is "
                       f"incomplete or changed; {FIX}")  # fmt: skip
    labels = metadata["f1"].astype(np.int64)
    classes = meta.get("classes") or [str(c) for c in range(int(labels.max()) + 1)]
    if labels.min() < 0 or labels.max() >= len(classes):
        raise FtlError(f"{what}={path}: labels {labels.min()}..{labels.max()} do not fit {len(classes)} classes; {FIX}")
    return BetonIndex(path, n, labels, image["mode"].copy(), image["height"].astype(np.int64),
                      image["width"].astype(np.int64), image["data_ptr"].copy(), sizes_sorted[at], list(classes),
                      meta)  # fmt: skip
