"""Small offline transfer tasks of different domains for bench/transfer_quality.py, built as ImageFolder trees
(`ROOT/{train,val}/<class>/<n>.png`), each built once into a temporary sibling and renamed into place.

    fmnist     Fashion-MNIST (Debian dataset-fashion-mnist): grey 28x28 clothes, 10 classes
    digits     scikit-learn's digits: grey 8x8 handwritten digits, 10 classes
    lfw        scikit-image's lfw_subset: grey 25x25 faces vs non-faces, 2 classes
    cards      GNOME's playing-card themes (Debian gnome-cards-data, rendered by rsvg-convert from librsvg2-bin):
               colour, portrait (about 3:4) clip-art, the card's rank (13 classes) across 30 artistic styles;
               the rank is printed in the corners, which a centre crop of a portrait card cuts away
    garments   Fashion-MNIST's four upper-body classes (t-shirt, pullover, coat, shirt): a fine-grained subset for
               the metric-learning comparison
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

CARDS_DIR = Path("/usr/share/aisleriot/cards")
RANKS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "jack", "queen", "king"]
SUITS = ["club", "diamond", "heart", "spade"]


def _write(root: Path, split: str, items: list[tuple[np.ndarray | Image.Image, str]]) -> None:
    for i, (image, label) in enumerate(items):
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(folder / f"{i:05d}.png")


def _build(out: Path, make: Callable[[Path], None]) -> Path:
    if (out / "train").is_dir() and (out / "val").is_dir():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        make(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def fmnist(out: Path, per_class: int = 30, val: int = 500, classes: tuple[int, ...] | None = None) -> Path:
    from core.data.bundled import FASHION_MNIST_CLASSES, load_fashion_mnist, select

    def make(tmp: Path) -> None:
        arrays = load_fashion_mnist()
        for split, limit in (("train", per_class), ("val", None)):
            images, labels = select(*arrays[split], classes, limit)
            if split == "val":
                images, labels = images[:val], labels[:val]
            _write(tmp, split, [(img, FASHION_MNIST_CLASSES[y]) for img, y in zip(images, labels)])

    return _build(out, make)


def garments(out: Path, per_class: int = 60, val: int = 600) -> Path:
    return fmnist(out, per_class, val, classes=(0, 2, 4, 6))


def digits(out: Path, per_class: int = 20, val: int = 500) -> Path:
    from sklearn.datasets import load_digits

    def make(tmp: Path) -> None:
        x, y = load_digits(return_X_y=True)
        images = (x.reshape(-1, 8, 8) * 255 / 16).round().astype(np.uint8)
        rank = np.zeros(len(y), dtype=int)
        for c in range(10):
            rank[y == c] = np.arange((y == c).sum())
        train = np.flatnonzero(rank < per_class)
        rest = np.flatnonzero(rank >= per_class)[:val]
        _write(tmp, "train", [(images[i], str(y[i])) for i in train])
        _write(tmp, "val", [(images[i], str(y[i])) for i in rest])

    return _build(out, make)


def lfw(out: Path, per_class: int = 20) -> Path:
    from core.data.bundled import prepare

    return prepare("lfw-subset", out, per_class=per_class)


def cards(out: Path, per_class: int = 12, val_per_class: int = 30, height: int = 64, seed: int = 0) -> Path:
    """Each card of every theme rendered at `height` px (portrait, on white), then per rank a seeded draw of
    (theme, suit) cards: per_class to train, val_per_class to validate."""
    themes = sorted(CARDS_DIR.glob("*.svgz"))
    if not themes or not shutil.which("rsvg-convert"):
        raise SystemExit("cards task: apt-get install gnome-cards-data librsvg2-bin")

    render = out.parent / f".cards-render-{height}"  # every card of every theme, kept for rebuilds

    def one(job: tuple[Path, str]) -> Path:
        theme, card = job
        path = render / f"{theme.stem.encode().hex()}-{card}.png"
        if not path.is_file():
            subprocess.run(["rsvg-convert", f"--export-id={card}", "-h", str(height), "-b", "white", "-o",
                            str(path), str(theme)], check=True, capture_output=True)  # fmt: skip
        return path

    def make(tmp: Path) -> None:
        render.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(4) as pool:
            paths = list(pool.map(one, [(t, f"{s}_{r}") for t in themes for s in SUITS for r in RANKS]))
        # a few themes draw some cards as loose parts (the element is a strip or a corner): keep whole cards only
        paths = [p for p in paths if 0.55 <= Image.open(p).width / Image.open(p).height <= 0.85]
        rng = random.Random(seed)
        splits: dict[str, list] = {"train": [], "val": []}
        for rank in RANKS:
            mine = [p for p in paths if p.stem.split("-")[-1].split("_", 1)[1] == rank]
            rng.shuffle(mine)
            for split, chosen in (("train", mine[:per_class]), ("val", mine[per_class : per_class + val_per_class])):
                splits[split] += [(Image.open(p).convert("RGB"), f"{RANKS.index(rank):02d}_{rank}") for p in chosen]
        for split, items in splits.items():
            _write(tmp, split, items)

    return _build(out, make)


QUALITY_TASKS: dict[str, Callable[[Path], Path]] = {"fmnist": fmnist, "digits": digits, "lfw": lfw, "cards": cards}
TASKS: dict[str, Callable[[Path], Path]] = {**QUALITY_TASKS, "garments": garments}  # garments: the metric-learning run
