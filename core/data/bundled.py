"""Real datasets that install offline, materialised as ImageFolder trees (`ftl data prepare NAME --out DIR`).

- fashion-mnist: Debian's `dataset-fashion-mnist` IDX files; train = official train, val = official test.
- lfw-subset: scikit-image's `lfw_subset()`, 100 faces and 100 non-faces (25x25 grey).
The tree is built in a temporary sibling and renamed into place, so DIR is either complete or absent.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from core.errors import FtlError, did_you_mean

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
]  # fmt: skip
MARKER = "ftl_dataset.json"

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images N×H×W, int labels N)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array: big-endian header, then the unsigned-byte payload."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR) -> Arrays:
    files = {s: (root / f"{p}-images-idx3-ubyte.gz", root / f"{p}-labels-idx1-ubyte.gz") for s, p in
             (("train", "train"), ("val", "t10k"))}  # fmt: skip
    for images, labels in files.values():
        if not images.is_file() or not labels.is_file():
            raise FtlError(f"{images} not found: install it with `apt-get install dataset-fashion-mnist`")
    return {s: (read_idx(i), read_idx(lab).astype(np.int64)) for s, (i, lab) in files.items()}


def load_lfw_subset(train_per_class: int = 50) -> Arrays:
    from skimage.data import lfw_subset

    faces = (lfw_subset() * 255).round().astype(np.uint8)  # 100 faces, then 100 non-faces
    labels = np.array([0] * 100 + [1] * 100)
    train = np.r_[0:train_per_class, 100 : 100 + train_per_class]
    val = np.setdiff1d(np.arange(200), train)
    return {"train": (faces[train], labels[train]), "val": (faces[val], labels[val])}


DATASETS: dict[str, tuple[Callable[[], Arrays], list[str]]] = {
    "fashion-mnist": (load_fashion_mnist, FASHION_MNIST_CLASSES),
    "lfw-subset": (load_lfw_subset, ["face", "non_face"]),
}


def select(images: np.ndarray, labels: np.ndarray, classes: Sequence[int] | None, limit: int | None):
    """Keep the given classes and the first `limit` images of each, in the official order."""
    keep = np.ones(len(labels), dtype=bool) if classes is None else np.isin(labels, classes)
    if limit is not None:
        rank = np.zeros(len(labels), dtype=np.int64)
        for c in np.unique(labels):
            rank[labels == c] = np.arange((labels == c).sum())
        keep &= rank < limit
    return images[keep], labels[keep]


def prepare(
    name: str,
    out: str | Path,
    per_class: int | None = None,
    val_per_class: int | None = None,
    classes: Sequence[int] | None = None,
    val_first: int | None = None,
) -> Path:
    """Write dataset `name` as out/{train,val}/<class>/<n>.png; a finished tree is left as it is.
    per_class / val_per_class keep the first N images of each class, val_first the first N val images overall
    (all in the official order); classes keeps only those class indices."""
    if name not in DATASETS:
        raise FtlError(f"unknown dataset '{name}'{did_you_mean(name, DATASETS)}; available: {', '.join(DATASETS)}")
    out = Path(out).expanduser()
    meta = {"name": name, "per_class": per_class, "val_per_class": val_per_class,
            "classes": list(classes) if classes is not None else None, "val_first": val_first}  # fmt: skip
    if out.exists():
        marker = out / MARKER
        stored = json.loads(marker.read_text()).get("request", {}) if marker.is_file() else None
        if stored is not None and {**dict.fromkeys(meta), **stored} == meta:  # options added later default to None
            return out
        if stored is None:
            raise FtlError(f"{out} already exists and was not written by `ftl data prepare`; choose another --out")
        differ = [f"{k} {stored.get(k)} there, {v} asked" for k, v in meta.items() if stored.get(k) != v]
        raise FtlError(f"{out} already holds {stored.get('name')} prepared with other options ({'; '.join(differ)}): "
                       "choose another --out (or remove it to prepare it again)")  # fmt: skip
    loader, names = DATASETS[name]
    if classes is not None and not all(0 <= c < len(names) for c in classes):
        raise FtlError(f"--classes {list(classes)}: {name} has classes 0-{len(names) - 1}")
    arrays = loader()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise FtlError(f"cannot write to {out.parent}: {e.strerror}; choose a writable --out") from None
    try:
        counts = {}
        for split, (images, labels) in arrays.items():
            images, labels = select(images, labels, classes, per_class if split == "train" else val_per_class)
            if split == "val" and val_first is not None:
                images, labels = images[:val_first], labels[:val_first]
            for i, (img, label) in enumerate(zip(images, labels)):
                folder = tmp / split / names[label]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(folder / f"{i:05d}.png")
            counts[split] = int(len(labels))
        (tmp / MARKER).write_text(json.dumps({"request": meta, "counts": counts, "classes": names}, indent=2))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
