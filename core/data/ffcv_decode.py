"""`CropDecoder`: an FFCV decoder for RGBImageField that crops inside the JPEG decode (core/data/native.py).

FFCV's stock RandomResizedCropRGBImageDecoder decodes each JPEG whole, then crops and resizes (cv2 INTER_AREA).
This one decodes only the crop's rows and columns, at the smallest libjpeg DCT scale M/8 that keeps the crop at
least as large as the output, then resizes exactly the wanted rectangle with OpenCV's bilinear filter (FFCV's
resize_crop uses INTER_AREA, as slow as the decode itself; after DCT scaling the remaining reduction is under 2x,
where plain bilinear aliases little); `planar=True` writes 3 x H x W, for a cheap float conversion. Raw-mode samples
are cropped and resized without a decode.

Crops are reproducible and independent of FFCV's thread scheduling: a sample's random numbers are a counter-based
hash (splitmix64) of (seed, epoch, sample index, draw number), never np.random. FFCV compiles the pipeline once per
Loader, so the epoch cannot be a compile-time constant: it lives in `self.control`, an int64 array owned by the
decoder whose address the compiled code holds as a constant, read at the start of every batch through a ctypes
memcpy (numba would freeze an array's contents, not follow it). `output_size` is read each epoch by
`declare_state_and_memory` (FFCV calls it when it allocates an epoch's buffers), so progressive resizing needs no
recompilation either.

A JPEG the native decoder rejects (corrupt header, unsupported colour space) is decoded whole by FFCV's imdecode
and cropped; if that fails too the sample comes out as zeros (the pipeline keeps going; corrupt data inside an
otherwise valid JPEG decodes to grey blocks, as libjpeg does).
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import replace

import numpy as np
from numba import njit

from core.data.beton import require_ffcv

require_ffcv()  # numba's threading layer before ffcv starts numba's threads
import ffcv.libffcv
from ffcv.fields.rgb_image import SimpleRGBImageDecoder
from ffcv.libffcv import imdecode
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.state import State

from core.data import native

JPG = 0  # ffcv.fields.rgb_image.IMAGE_MODES['jpg']
# ffcv's my_memcpy(src, dst, n) with the source as a plain integer address: numba code can pass an int constant.
_read_addr = ctypes.CFUNCTYPE(None, ctypes.c_uint64, ctypes.c_void_p, ctypes.c_uint64)(
    ctypes.cast(ffcv.libffcv.lib.my_memcpy, ctypes.c_void_p).value)  # fmt: skip

_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@njit(cache=False)
def _mix(x):
    """splitmix64's step: a well-mixed 64-bit hash of x (uint64 arithmetic wraps)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(cache=False)
def _uniform(seed, epoch, index, draw):
    """A float in [0, 1) from (seed, epoch, index, draw), all uint64."""
    h = _mix(_mix(_mix(_mix(seed) ^ epoch) ^ index) ^ draw)
    return np.float64(h >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=False)
def _random_crop(height, width, seed, epoch, index, s0, s1, log_r0, log_r1):
    """(i, j, h, w): torchvision's / FFCV's RandomResizedCrop sampling (10 tries, then the fallback)."""
    area = height * width
    for t in range(10):
        d = np.uint64(4 * t)
        target_area = area * (s0 + (s1 - s0) * _uniform(seed, epoch, index, d))
        aspect = math.exp(log_r0 + (log_r1 - log_r0) * _uniform(seed, epoch, index, d + np.uint64(1)))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            i = int((height - h + 1) * _uniform(seed, epoch, index, d + np.uint64(2)))
            j = int((width - w + 1) * _uniform(seed, epoch, index, d + np.uint64(3)))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < math.exp(log_r0):
        w = width
        h = round(w / math.exp(log_r0))
    elif in_ratio > math.exp(log_r1):
        h = height
        w = round(h * math.exp(log_r1))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


@njit(cache=False)
def _center_crop(height, width, pct):
    c = max(1, min(height, width, int(pct * min(height, width))))
    return (height - c) // 2, (width - c) // 2, c, c


def _u64(x: int) -> np.uint64:
    return np.uint64(int(x) % 2**64)


def crop_box(height: int, width: int, index: int, epoch: int, seed: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(i, j, h, w): the random crop CropDecoder takes of sample `index` (height x width) in `epoch`."""
    return _random_crop(int(height), int(width), _u64(seed), _u64(epoch), _u64(index), float(scale[0]),
                        float(scale[1]), math.log(ratio[0]), math.log(ratio[1]))  # fmt: skip


class CropDecoder(SimpleRGBImageDecoder):
    """Decoder for RGBImageField: random-resized crop (center_crop_pct=None) or centred square crop of side
    int(center_crop_pct * min(h, w)), resized to output_size (int or (h, w); may change between epochs).
    Call set_epoch(epoch) before each epoch: crops depend only on (seed, epoch, sample index).

    An Operation by way of SimpleRGBImageDecoder: FFCV takes the first op of a field's pipeline as its decoder only
    if it is an instance of the field's decoder class (PipelineSpec.accept_decoder), as its own decoders are."""

    def __init__(self, output_size: int | tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), seed: int = 0,
                 center_crop_pct: float | None = None, planar: bool = False):  # fmt: skip
        super().__init__()
        self.planar = planar
        self.output_size, self.scale, self.ratio, self.seed = output_size, tuple(scale), tuple(ratio), seed
        self.center_crop_pct = center_crop_pct
        self.control = np.zeros(1, np.int64)  # the epoch: read by the compiled code at each batch

    def set_epoch(self, epoch: int) -> None:
        self.control[0] = epoch

    def _size(self) -> tuple[int, int]:
        s = self.output_size
        return (int(s), int(s)) if np.isscalar(s) else (int(s[0]), int(s[1]))

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, tuple[AllocationQuery, AllocationQuery]]:
        h, w = self._size()
        u1 = np.dtype("<u1")
        max_pixels = np.uint64(self.metadata["height"].max()) * np.uint64(self.metadata["width"].max())
        # temp: one sample's decoded crop (at most the whole image), or a whole image for the imdecode fallback
        shape = (3, h, w) if self.planar else (h, w, 3)
        return (replace(previous_state, jit_mode=True, shape=shape, dtype=u1),
                (AllocationQuery(shape, u1), AllocationQuery((max_pixels * np.uint64(3),), u1)))  # fmt: skip

    def generate_code(self):
        mem_read = self.memory_read
        my_range = Compiler.get_iterator()
        imdecode_c = Compiler.compile(imdecode)
        planar, linear, area = int(self.planar), 1, 3  # OpenCV's INTER_LINEAR, INTER_AREA
        decode_crop, resize_c, read_addr = native.load(), native.load_resize(), _read_addr
        control_addr = self.control.ctypes.data  # constant: self.control lives as long as the decoder
        seed = _u64(self.seed)
        s0, s1 = float(self.scale[0]), float(self.scale[1])
        log_r0, log_r1 = math.log(self.ratio[0]), math.log(self.ratio[1])
        center = self.center_crop_pct is not None
        pct = float(self.center_crop_pct or 1.0)

        def decode(batch_indices, my_storage, metadata, storage_state):
            destination, temp_storage = my_storage
            control = np.zeros(1, np.int64)
            read_addr(control_addr, control.ctypes.data, 8)
            epoch = np.uint64(control[0])
            n = len(batch_indices)
            geoms = np.zeros((n, 5), np.int32)
            for dst_ix in my_range(n):
                source_ix = batch_indices[dst_ix]
                field = metadata[source_ix]
                image_data = mem_read(field["data_ptr"], storage_state)
                height, width = np.int64(field["height"]), np.int64(field["width"])
                if center:
                    i, j, h, w = _center_crop(height, width, pct)
                else:
                    i, j, h, w = _random_crop(height, width, seed, epoch, np.uint64(source_ix), s0, s1, log_r0, log_r1)
                out = destination[dst_ix]
                oh, ow = (out.shape[1], out.shape[2]) if planar else (out.shape[0], out.shape[1])
                if field["mode"] == JPG:
                    temp = temp_storage[dst_ix]
                    geom = geoms[dst_ix]
                    rc = decode_crop(image_data.ctypes.data, image_data.size, i, j, h, w, oh, ow, temp.ctypes.data,
                                     temp.size, geom.ctypes.data)  # fmt: skip
                    if rc == 0:
                        rows, row_w, x, cw, ch = geom[0], geom[1], geom[2], geom[3], geom[4]
                        resize_c(temp.ctypes.data, rows, row_w, 0, ch, x, x + cw, out.ctypes.data, oh, ow, linear,
                                 planar)  # fmt: skip
                    else:  # the native decoder refused it: whole-image decode (zeros if that fails too)
                        full = temp[: height * width * 3]
                        full[:] = 0
                        imdecode_c(image_data, full, height, width, height, width, 0, 0, 1, 1, False, False)
                        resize_c(full.ctypes.data, height, width, i, i + h, j, j + w, out.ctypes.data, oh, ow, area,
                                 planar)  # fmt: skip
                else:
                    resize_c(image_data.ctypes.data, height, width, i, i + h, j, j + w, out.ctypes.data, oh, ow, area,
                             planar)  # fmt: skip
            return destination[:n]

        decode.is_parallel = True
        return decode
