"""Benchmark on one CUDA GPU: how close `ftl train` gets to the model's own ceiling with each data loader.

1. ceiling: a bare `torch.compile`d ResNet-50 (timm, random init), channels_last, bf16 autocast, SGD, --size px,
   batch --batch, training on one synthetic batch that stays on the GPU: the images/s no loader can beat.
2. each loader alone (no model), on the same JPEGs, with the same work: random-resized crop (scale 0.35-1) to
   --size px, horizontal flip, normalisation, float NCHW batches on the GPU:
     torch     torchvision ImageFolder + DataLoader: PIL decode in --workers processes, pinned, non-blocking copy
     ffcv      FFCV's stock RandomResizedCropRGBImageDecoder pipeline on the .beton (needs FFCV)
     ftl-ffcv  ftl's FfcvLoader (crop inside the JPEG decode) on the .beton (needs FFCV)
     gpu       ftl's GpuLoader: --workers threads read JPEG bytes, nvJPEG decodes whole batches (the files; and
               gpu-beton, the .beton, when there is one)
   One warm-up epoch each, then one timed epoch (ended by a CUDA synchronise).
3. end to end: `python -m launcher.cli train base ...` with data.loader=torch / ffcv / gpu (model.name=resnet50,
   model.pretrained=null, data.image_size=--size, data.resize=crop (what ffcv and gpu do), data.batch_size=--batch,
   train.epochs=3, bf16, channels_last, compile on), each in a fresh run dir under --out; images/s from its
   per-epoch "(N.Ns)" lines: the median of the epochs after the first (the first compiles and warms up). The gpu run
   reads the .beton when there is one.
A table with each row's ratio to the ceiling; last line `e2e_vs_ceiling: X` (`ftl train` with data.loader=gpu).

Images: --images JPEGs (quality 90), longer side 80-100% of --source px, random crops of scikit-image's photos in
up to 100 classes, made once under --out (the directory name holds the parameters; made in parallel); or --data DIR, an
ImageFolder root of your own. When FFCV is installed, DIR.beton is written with ftl's converter (FFCV's loaders
need it). The GPU machine this was written for has no FFCV: the ffcv rows then say so and the rest still runs.

    python bench/gpu_throughput.py [--images 10240] [--source 360] [--size 176] [--batch 256] [--workers 16]
        [--steps 30] [--data DIR] [--out data/bench-gpu] [--skip-e2e] [--e2e-timeout 300]

About 6-8 minutes on an H200 (mostly ResNet-50 compiling, once per process). Without CUDA it stops with one line;
`--device cpu` runs the script itself on a CPU with tiny settings, to check it (the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import date
from multiprocessing import Pool
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SCALE, RATIO = (0.35, 1.0), (3 / 4, 4 / 3)
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle", "brick", "grass"]  # fmt: skip
MAX_CLASSES = 100


def _one_image(job: tuple[Path, int, int, int]) -> None:
    """Image i: a random crop (30-100% of the area) of photo i % 10, longer side 80-100% of `source`, as JPEG."""
    import numpy as np
    import skimage.data
    from PIL import Image

    root, i, source, classes = job
    img = getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()
    img = img[0] if isinstance(img, tuple) else img
    img = np.repeat(img[:, :, None], 3, 2) if img.ndim == 2 else img[:, :, :3]
    rng = np.random.default_rng(i)
    h, w = img.shape[:2]
    area, aspect = rng.uniform(0.3, 1.0) * h * w, np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch, cw = min(h, int(np.sqrt(area / aspect))), min(w, int(np.sqrt(area * aspect)))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    scale = int(source * rng.uniform(0.8, 1.0)) / max(ch, cw)
    out = root / f"c{i % classes:03d}" / f"{i:06d}.jpg"
    Image.fromarray(img[y : y + ch, x : x + cw]).resize((max(1, round(cw * scale)), max(1, round(ch * scale))),
                                                       Image.BILINEAR).save(out, quality=90)  # fmt: skip


def make_images(root: Path, n: int, source: int, workers: int) -> Path:
    """n JPEGs in min(100, n / 32) classes under root (kept for the next run)."""
    if (root / "done").is_file():
        return root
    classes = max(2, min(MAX_CLASSES, n // 32))
    for c in range(classes):
        (root / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    with Pool(workers) as pool:
        pool.map(_one_image, [(root, i, source, classes) for i in range(n)], chunksize=64)
    (root / "done").write_text("ok\n")
    return root


# --- 1. the ceiling ---


def ceiling(size: int, batch: int, steps: int, device, classes: int) -> float:
    import timm
    import torch
    import torch.nn.functional as F

    model = timm.create_model("resnet50", num_classes=classes).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    forward = torch.compile(model)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):  # compile and warm up
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- 2. loaders alone ---


class ToDevice:
    """Batches of a CPU loader moved to the device (non-blocking from pinned memory)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def torch_loader(root: Path, size: int, batch: int, workers: int, device):
    import torch
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    tf = v2.Compose([v2.RandomResizedCrop(size, scale=SCALE, ratio=RATIO, antialias=True), v2.RandomHorizontalFlip(),
                     v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])  # fmt: skip
    dl = DataLoader(ImageFolder(str(root), transform=tf), batch_size=batch, shuffle=True, num_workers=workers,
                    drop_last=True, persistent_workers=workers > 0, pin_memory=device.type == "cuda")  # fmt: skip
    return ToDevice(dl, device)


def stock_ffcv_loader(beton: Path, size: int, batch: int, workers: int, device):
    import numpy as np
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToTensor, ToTorchImage
    from ffcv.transforms import ToDevice as FfcvToDevice

    crop, normalise = RandomResizedCropRGBImageDecoder((size, size), SCALE, RATIO), NormalizeImage(
        np.array(MEAN) * 255, np.array(STD) * 255, np.float32)  # fmt: skip
    if device.type == "cuda":  # FFCV's ImageNet example: normalise on the GPU
        to_device = [FfcvToDevice(device, non_blocking=True)]
        image = [crop, RandomHorizontalFlip(), ToTensor(), *to_device, ToTorchImage(), normalise]
    else:  # on the CPU, NormalizeImage before ToTensor (after ToTorchImage it hangs in FFCV 1.0.2)
        to_device, image = [], [crop, RandomHorizontalFlip(), normalise, ToTensor(), ToTorchImage()]
    return Loader(str(beton), batch_size=batch, num_workers=workers, order=OrderOption.RANDOM, os_cache=True,
                  drop_last=True, seed=0, pipelines={"image": image, "label": [IntDecoder(), ToTensor(), Squeeze(),
                                                                                *to_device]})  # fmt: skip


def ftl_loader(kind: str, path: Path, size: int, batch: int, workers: int, device):
    import numpy as np

    from core.config import AugmentConfig

    aug = AugmentConfig(scale=list(SCALE), ratio=list(RATIO), hflip=0.5)
    common = {"train": True, "image_size": size, "crop_pct": 0.875, "augment": aug, "mean": list(MEAN),
              "std": list(STD), "seed": 0, "device": device, "num_workers": workers}  # fmt: skip
    if kind == "ftl-ffcv":
        from core.data.beton import open_beton
        from core.data.ffcv_loader import FfcvLoader

        b = open_beton(path)
        return FfcvLoader(b, np.arange(b.num_samples), batch, **common)
    from core.data.gpu_loader import GpuLoader, open_source

    source = open_source(str(path), "--data")
    return GpuLoader(source, np.arange(len(source)), batch, **common)


def loader_rate(loader, device) -> float:
    """Images/s of one epoch after a warm-up epoch (numba / nvJPEG / worker start-up, page cache)."""
    rates = []
    for epoch in (0, 1):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        n, start = 0, time.perf_counter()
        for images, labels in loader:
            n += len(labels)
        sync(device)
        rates.append(n / (time.perf_counter() - start))
    return rates[-1]


# --- 3. end to end ---

EPOCH_LINE = re.compile(r"ftl: epoch (\d+)/\d+ .*\((\d+(?:\.\d+)?)s\)")
DATA_LINE = re.compile(r"ftl: data (\d+) train")


def e2e_rate(loader: str, root: Path, out: Path, args) -> tuple[float | None, str]:
    """(images/s, note): `ftl train` with data.loader=loader; the median epoch after the first."""
    run_dir = out / "runs" / f"{loader}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "launcher.cli", "train", "base", f"data.train_dir={root}", "data.val_split=0.02",
           "model.name=resnet50", "model.pretrained=null", f"data.image_size={args.size}", "data.resize=crop",
           f"data.batch_size={args.batch}", "train.epochs=3", f"data.loader={loader}",
           f"data.num_workers={args.workers}",
           "train.precision=bf16" if args.device == "cuda" else "train.precision=no", "model.channels_last=true",
           f"model.compile={'true' if args.device == 'cuda' else 'false'}", "--run-dir", str(run_dir)]  # fmt: skip
    env = {**os.environ, **({"ACCELERATE_USE_CPU": "1"} if args.device == "cpu" else {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.e2e_timeout, cwd=REPO, env=env,
                              check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, f"timed out after {args.e2e_timeout}s"
    epochs = {int(e): float(s) for e, s in EPOCH_LINE.findall(proc.stdout)}
    train_images = DATA_LINE.search(proc.stdout)
    if proc.returncode != 0 or len(epochs) < 2 or train_images is None:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        return None, f"failed (exit {proc.returncode}): {tail[:150]}"
    steady = statistics.median(s for e, s in epochs.items() if e > 1)
    images = (int(train_images.group(1)) // args.batch) * args.batch  # full batches (drop_last)
    return images / steady, "epochs " + " ".join(f"{s:.1f}s" for _, s in sorted(epochs.items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10240)
    p.add_argument("--source", type=int, default=360, help="longer side of the generated JPEGs (px)")
    p.add_argument("--size", type=int, default=176, help="training image size (px)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader workers / threads")
    p.add_argument("--steps", type=int, default=30, help="timed steps of the ceiling")
    p.add_argument("--data", help="an ImageFolder root to use instead of generated images (DIR.beton if present)")
    p.add_argument("--out", default="data/bench-gpu", help="where generated images and run dirs go")
    p.add_argument("--skip-e2e", action="store_true", help="only the ceiling and the loaders alone")
    p.add_argument("--e2e-timeout", type=int, default=300, help="seconds per `ftl train` run")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: check the script itself, tiny")
    args = p.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu_throughput.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")
        sys.exit(2)
    if args.device == "cpu":  # a check of the script, not a measurement
        args.images, args.size, args.batch = min(args.images, 96), min(args.size, 32), min(args.batch, 16)
        args.steps = 2
    device = torch.device(args.device)
    from core.data.beton import convert, ffcv_available

    out = Path(args.out)
    root = Path(args.data) if args.data else make_images(out / f"jpg-{args.images}-{args.source}", args.images,
                                                          args.source, args.workers)  # fmt: skip
    beton = root.parent / f"{root.name}.beton"
    has_ffcv = ffcv_available()
    if has_ffcv and not beton.is_file():
        convert(str(root), beton, mode="jpg", jpeg_quality=90, workers=args.workers)
    n_images = sum(1 for _ in root.glob("*/*"))
    classes = sum(1 for d in root.iterdir() if d.is_dir())
    rows: list[tuple[str, float | None, str]] = []

    top = ceiling(args.size, args.batch, args.steps, device, classes)
    rows.append(("ceiling (synthetic batch, compiled)", top, "ResNet-50, bf16, channels_last"))
    no_ffcv = "skipped: FFCV is not installed"
    # FFCV's loaders last: numba's OpenMP threads keep spinning a while after a batch, taking cores from what follows
    makers = {"gpu": lambda: ftl_loader("gpu", root, args.size, args.batch, args.workers, device),
              "gpu-beton": lambda: ftl_loader("gpu", beton, args.size, args.batch, args.workers, device),
              "torch": lambda: torch_loader(root, args.size, args.batch, args.workers, device),
              "ffcv": lambda: stock_ffcv_loader(beton, args.size, args.batch, args.workers, device),
              "ftl-ffcv": lambda: ftl_loader("ftl-ffcv", beton, args.size, args.batch, args.workers, device)}  # fmt: skip
    for name, make in makers.items():
        if name in ("ffcv", "ftl-ffcv") and not has_ffcv:
            rows.append((f"loader alone: {name}", None, no_ffcv))
        elif name == "gpu-beton" and not beton.is_file():
            rows.append((f"loader alone: {name}", None, f"skipped: no {beton.name}"))
        else:
            rows.append((f"loader alone: {name}", loader_rate(make(), device), ""))
    e2e = {}
    if not args.skip_e2e:
        for loader in ("torch", "ffcv", "gpu"):
            if loader == "ffcv" and not (has_ffcv and beton.is_file()):
                rows.append(("ftl train: ffcv", None, no_ffcv))
                continue
            e2e[loader], note = e2e_rate(loader, root, out, args)
            rows.append((f"ftl train: {loader}", e2e[loader], note))

    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"# {date.today()} {platform.node()} {gpu_name}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{n_images} JPEGs ~{args.source}px -> {args.size}px, batch {args.batch}, {args.workers} workers")
    print(f"{'':38s} {'img/s':>8s}  {'vs ceiling':>10s}")
    for name, rate, note in rows:
        shown = f"{rate:8.0f}  {rate / top:10.2f}" if rate is not None else f"{'-':>8s}  {'-':>10s}"
        print(f"{name:38s} {shown}  {note}")
    alone = {name.split(": ")[1]: rate for name, rate, _ in rows if name.startswith("loader alone") and rate}
    if alone.get("gpu") and alone.get("torch"):
        print(f"gpu_vs_dataloader_alone: {alone['gpu'] / alone['torch']:.2f}")
    if e2e.get("gpu") and e2e.get("torch"):
        print(f"e2e_gpu_vs_torch: {e2e['gpu'] / e2e['torch']:.2f}")
    if e2e.get("gpu"):
        print(f"e2e_vs_ceiling: {e2e['gpu'] / top:.2f}")
    else:
        print("e2e_vs_ceiling: n/a (no ftl train run with data.loader=gpu)")


if __name__ == "__main__":
    main()
