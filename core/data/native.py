"""ftl's native JPEG crop decoder (jpeg_crop.c, plus resize.cpp), built on first use, loaded with ctypes.

Why native code: FFCV's stock random-resized-crop decoder decodes every JPEG whole and then crops. Decoding only
the crop, at the smallest libjpeg DCT scale that still covers the output, decodes a fraction of the pixels. That
needs libjpeg's scanline API (jpeg_crop_scanline / jpeg_skip_scanlines / scale_num), which neither FFCV nor OpenCV
expose. The file is tiny, so it is compiled with the system C compiler against the system libjpeg(-turbo) into
`$XDG_CACHE_HOME/ftl/native/` (default ~/.cache), under a name hashed from the source: an edited source builds
anew, and concurrent processes (the ranks of a distributed run) each compile to a temporary sibling and rename it
into place, so none ever loads half a file.

`load()` and `load_resize()` give ctypes functions with argtypes set, so numba's nopython code calls them directly
(as FFCV calls its own libffcv): pass arrays as `arr.ctypes.data`. `python -m core.data.native` builds it and prints its path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from core.errors import FtlError
from core.fileio import write_atomic

SOURCES = [Path(__file__).with_name("jpeg_crop.c"), Path(__file__).with_name("resize.cpp")]
FLAGS = ["-O3", "-shared", "-fPIC", "-I/usr/include/opencv4"]
LIBS = ["-ljpeg", "-lopencv_imgproc", "-lopencv_core", "-lstdc++"]  # the OpenCV FFCV's own libffcv links
FIX = "install a C/C++ compiler, libjpeg and OpenCV headers: `apt-get install -y g++ libjpeg62-turbo-dev libopencv-dev`"
_lib: ctypes.CDLL | None = None


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ftl" / "native"


def library_path() -> Path:
    """The built library (compiled now if this source has not been built yet)."""
    source = b"".join(p.read_bytes() for p in SOURCES)
    digest = hashlib.sha256(source + " ".join(FLAGS + LIBS).encode()).hexdigest()[:16]
    path = cache_dir() / f"jpeg_crop-{digest}.so"
    if not path.exists():
        _compile(path)
    return path


def _compile(path: Path) -> None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None or shutil.which(cc) is None:
        raise FtlError(f"ftl's JPEG crop decoder needs a C compiler, and none was found (cc/gcc); {FIX}")

    def build(tmp: Path) -> None:
        cmd = [cc, *FLAGS, "-o", str(tmp), *map(str, SOURCES), *LIBS]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            err = proc.stderr
            if "opencv" in err:
                raise FtlError(f"ftl's JPEG crop decoder needs OpenCV's headers and libraries (as FFCV does), which "
                               f"{cc} did not find; {FIX}")  # fmt: skip
            if "jpeglib.h" in err or "-ljpeg" in err:
                raise FtlError(f"ftl's JPEG crop decoder needs libjpeg's headers and library (jpeglib.h, -ljpeg), "
                               f"which {cc} did not find; {FIX}")  # fmt: skip
            first = next((line for line in err.splitlines() if "error" in line), err.strip()[-300:])
            raise FtlError(f"building ftl's JPEG crop decoder with {cc} failed: {first.strip()}; {FIX}")

    write_atomic(path, build)


def load() -> ctypes._CFuncPtr:
    """The ctypes function ftl_decode_crop(src, size, crop_y, crop_x, crop_h, crop_w, out_h, out_w, buf, buf_cap,
    geom) -> 0, or < 0 on an error (corrupt JPEG, bad crop, buffer too small). geom (5 int32) receives: rows
    decoded, decoded row width in pixels, x offset of the wanted crop in the row, its width and its height."""
    global _lib
    if _lib is None:
        _lib = ctypes.CDLL(str(library_path()))
        f = _lib.ftl_decode_crop
        c = ctypes
        f.argtypes = [c.c_void_p, c.c_ulong, c.c_int, c.c_int, c.c_int, c.c_int, c.c_int, c.c_int, c.c_void_p,
                      c.c_long, c.c_void_p]  # fmt: skip
        f.restype = c.c_int
        r = _lib.ftl_resize
        r.argtypes = [c.c_void_p, *[c.c_int] * 6, c.c_void_p, *[c.c_int] * 4]
        r.restype = None
    return _lib.ftl_decode_crop


def load_resize() -> ctypes._CFuncPtr:
    """The ctypes function ftl_resize(src, rows, cols, y0, y1, x0, x1, dst, out_h, out_w, interpolation, planar):
    OpenCV resize of rows y0..y1, columns x0..x1 of an RGB image (rows x cols) into dst, as out_h x out_w x 3 or,
    with planar=1, as 3 x out_h x out_w. interpolation: OpenCV's code (1 bilinear, 3 area)."""
    load()
    return _lib.ftl_resize


if __name__ == "__main__":
    try:
        load()
        print(library_path())
    except FtlError as e:
        raise SystemExit(f"error: {e}") from None
