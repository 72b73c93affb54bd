"""Benchmark: training-loader throughput (images/s) on the same JPEGs, augmentation and output size, for
(a) torchvision ImageFolder + DataLoader (2 workers), (b) the stock FFCV pipeline, (c) ftl's FFCV loader.

Images: real photos (scikit-image's sample pictures, one class per photo) cut into random crops and saved as JPEG
(quality 90) with the longer side near --source px; the .beton stores them in jpg mode. Augmentation everywhere:
random resized crop (scale 0.35-1) to --size px, horizontal flip, normalisation to float NCHW.
  (a) PIL decode + torchvision v2 RandomResizedCrop / flip / ToDtype / Normalize in 2 DataLoader workers
  (b) FFCV RandomResizedCropRGBImageDecoder, RandomHorizontalFlip, NormalizeImage (numba), ToTensor, ToTorchImage
      (NormalizeImage before ToTensor: after ToTorchImage it hangs on CPU in FFCV 1.0.2)
  (c) ftl.FfcvLoader: CropDecoder (crop inside the JPEG decode, scaled decoding), flip + normalise on the device
  (c0) the same with FFCV's stock decoder instead: c / c0 is the crop decoder's own gain
Each loader runs one warm-up epoch (numba compiles, page cache fills), then --epochs timed epochs; the loaders take
turns per epoch so machine noise hits all of them. Last lines: `speedup_vs_ffcv: Y`, then `speedup_vs_dataloader: X`.

    python bench/loader_throughput.py [--images 1536] [--source 256] [--size 128] [--batch 64] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALE, RATIO = (0.35, 1.0), (3 / 4, 4 / 3)
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle", "brick", "grass"]  # fmt: skip


def make_images(root: Path, n: int, source: int, seed: int = 0) -> Path:
    """n JPEGs in root/<photo>/<i>.jpg: random crops (30-100% of the area) of the photos, longer side 80-100% of
    `source` px. Kept between runs (the directory name holds the parameters)."""
    import skimage.data
    from PIL import Image

    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        img = img[0] if isinstance(img, tuple) else img
        photos.append(np.repeat(img[:, :, None], 3, 2) if img.ndim == 2 else img[:, :, :3])
    for i in range(n):
        k = i % len(photos)
        img = photos[k]
        h, w = img.shape[:2]
        area = rng.uniform(0.3, 1.0) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = min(h, int(np.sqrt(area / aspect))), min(w, int(np.sqrt(area * aspect)))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        longer = int(source * rng.uniform(0.8, 1.0))
        scale = longer / max(ch, cw)
        out = root / PHOTOS[k] / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[y : y + ch, x : x + cw]).resize((max(1, round(cw * scale)), max(1, round(ch * scale))),
                                                           Image.BILINEAR).save(out, quality=90)  # fmt: skip
    (root / "done").write_text("ok\n")
    return root


def torch_loader(root: Path, size: int, batch: int, workers: int):
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    tf = v2.Compose([v2.RandomResizedCrop(size, scale=SCALE, ratio=RATIO, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])  # fmt: skip
    ds = ImageFolder(str(root), transform=tf)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=True)


def stock_ffcv_loader(beton: Path, size: int, batch: int, workers: int):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage

    image = [RandomResizedCropRGBImageDecoder((size, size), SCALE, RATIO), RandomHorizontalFlip(),
             NormalizeImage(np.array(MEAN) * 255, np.array(STD) * 255, np.float32), ToTensor(), ToTorchImage()]  # fmt: skip
    return Loader(str(beton), batch_size=batch, num_workers=workers, order=OrderOption.RANDOM, os_cache=True,
                  drop_last=True, seed=0, pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze()]})  # fmt: skip


def ftl_loader(beton: Path, size: int, batch: int, workers: int, decoder: str = "ftl"):
    from core.config import AugmentConfig
    from core.data.beton import open_beton
    from core.data.ffcv_loader import FfcvLoader

    b = open_beton(beton)
    aug = AugmentConfig(scale=list(SCALE), ratio=list(RATIO), hflip=0.5)
    return FfcvLoader(b, np.arange(b.num_samples), batch, train=True, image_size=size, crop_pct=0.875, augment=aug,
                      mean=list(MEAN), std=list(STD), seed=0, device=torch.device("cpu"), num_workers=workers,
                      decoder=decoder)  # fmt: skip


def run_epoch(loader, epoch: int) -> tuple[int, float]:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    n, start = 0, time.perf_counter()
    for images, labels in loader:
        assert images.dtype == torch.float32 and images.shape[1] == 3, (images.dtype, images.shape)
        n += len(labels)
    return n, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1536)
    p.add_argument("--source", type=int, default=256, help="longer side of the source JPEGs (px)")
    p.add_argument("--size", type=int, default=128, help="output size after the random resized crop (px)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per loader (after one warm-up epoch)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--data", default="data/bench-loader", help="where the generated images and .beton live")
    args = p.parse_args()

    import numba

    from core.data.beton import convert, require_ffcv

    require_ffcv()  # ftl's numba settings, before any loader (the process's numba threads serve all three)

    root = make_images(Path(args.data) / f"jpg-{args.images}-{args.source}", args.images, args.source)
    beton = root.with_suffix(".beton")
    if not beton.is_file():
        convert(str(root), beton, mode="jpg", jpeg_quality=90)
    loaders = {"a_dataloader": torch_loader(root, args.size, args.batch, args.workers),
               "b_ffcv": stock_ffcv_loader(beton, args.size, args.batch, args.workers),
               "c0_ftl_stock_decoder": ftl_loader(beton, args.size, args.batch, args.workers, "stock"),
               "c_ftl": ftl_loader(beton, args.size, args.batch, args.workers)}  # fmt: skip
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    for name, loader in loaders.items():
        run_epoch(loader, 0)  # warm-up
    for epoch in range(1, args.epochs + 1):
        for name, loader in loaders.items():
            n, seconds = run_epoch(loader, epoch)
            rates[name].append(n / seconds)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"# {date.today()} {platform.node()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.images} JPEGs ~{args.source}px -> {args.size}px, batch {args.batch}, {args.workers} workers, "
          f"numba {numba.threading_layer()} threads")  # fmt: skip
    for k, v in rates.items():
        print(f"{k:21s} median {med[k]:8.0f} img/s  epochs: {' '.join(f'{x:.0f}' for x in v)}")
    print(f"ffcv_vs_dataloader: {med['b_ffcv'] / med['a_dataloader']:.2f}")
    print(f"crop_decoder_gain: {med['c_ftl'] / med['c0_ftl_stock_decoder']:.2f}")
    print(f"speedup_vs_ffcv: {med['c_ftl'] / med['b_ffcv']:.2f}")
    print(f"speedup_vs_dataloader: {med['c_ftl'] / med['a_dataloader']:.2f}")


if __name__ == "__main__":
    main()
