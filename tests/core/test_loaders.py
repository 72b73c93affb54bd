"""One conformance suite for every training loader: torch (Accelerate-sharded DataLoader), ffcv (FfcvLoader) and gpu
(GpuLoader with device='cpu', reading image files or a .beton), on real images: the sample order is a function of
(seed, epoch, rank); shards are disjoint and complete; skip_batches(n) gives exactly the tail of the epoch; the
image size follows set_image_size; the same image gives close pixels and the same label everywhere. Then the GPU
loader's own parts: the numpy .beton reader against FFCV's Reader, crop boxes against CropDecoder's, corrupt
images named, threads stopped; and, with CUDA, batches that later ones never overwrite.

Every loader is built the way the engine builds it, `core.data.loaders.open_data` + `build_loaders`, and driven
through the interface the engine uses (set_epoch, skip_batches, set_image_size, iteration). Ranks are simulated in
one process: `build_loaders` reads the device, rank and world from the accelerator and, for the torch path, calls
its `prepare`; `RankAccelerator` answers with Accelerate's own `prepare_data_loader` (what `Accelerator.prepare`
calls, with create_accelerator's seedable sampler and data seed) for any num_processes / process_index, which a
real Accelerator cannot without a process group. The gpu backend is opened by hand (open_data refuses it without
CUDA, as the engine must).
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

# core.engine imports timm, which imports wandb, whose pydantic models ast.parse their source: at collection, before
# any FFCV Loader exists. Imported later, a garbage collection inside that parse can run a dead FFCV Loader's numba
# finalizer, which raises; formatting that traceback calls ast.parse again, and CPython 3.11 fails the outer parse
# ("SystemError: AST constructor recursion depth mismatch"), seen 3 runs in 6.
from core import config, engine
from core.config import AugmentConfig, DataConfig
from core.data.gpu_loader import (
    GpuLoader,
    build_gpu_loaders,
    center_crop_boxes,
    open_gpu_data,
    open_source,
    random_crop_boxes,
)
from core.errors import FtlError

# A garbage-collected FFCV Loader trips numba's dispatcher finalizer (see test_ffcv_decode.py): harmless.
pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              # torchvision 0.29 deprecates torchvision.io for TorchCodec (docs/gpu.md); it still decodes
              pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")]
MEAN, STD, CROP_PCT = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 0.875
AUG = AugmentConfig(scale=[0.35, 1.0], hflip=0.5, color_jitter=0.3, rotate=10, random_erasing=0.3)
# FFCV compiles a pipeline per Loader (seconds each): its cases are slow, like tests/core/test_ffcv.py
KINDS = ("torch", pytest.param("ffcv", marks=pytest.mark.slow), "gpu-files", "gpu-beton")
# The FFCV case failed before the fix in _ShardOrder (a resumed epoch gained the partial batch the whole epoch drops).
SKIP_KINDS = ("torch", pytest.param("ffcv", marks=pytest.mark.slow), "gpu-files", "gpu-beton")
CPU = torch.device("cpu")


def has_ffcv() -> bool:
    from core.data.beton import ffcv_available

    return ffcv_available()


@dataclass
class Data:
    """Train and val ImageFolder trees and their .beton files (by mode), made when first asked for."""

    train: Path
    val: Path

    def beton(self, split: str, mode: str = "jpg") -> Path:
        if not has_ffcv():
            pytest.skip("writing a .beton needs FFCV")
        from core.data.beton import convert

        folder = getattr(self, split)
        out = folder.parent / f"{folder.name}-{mode}.beton"
        if not out.is_file():
            convert(str(folder), out, mode=mode, workers=1)
        return out


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Data:
    """37 classes of one real photo crop each, as JPEG files of different sizes: a sample's label is its index."""
    import skimage.data

    root = tmp_path_factory.mktemp("indexed") / "train"
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    for i in range(37):
        (root / f"c{i:02d}").mkdir(parents=True)
        photo = photos[i % 3]
        Image.fromarray(photo[i * 3 : i * 3 + 40 + i, i * 2 : i * 2 + 60 - i]).save(root / f"c{i:02d}" / "x.jpg", quality=92)
    return Data(root, root)


@pytest.fixture(scope="module")
def lfw_data(lfw) -> Data:
    return Data(lfw / "train", lfw / "val")


@pytest.fixture(scope="module")
def fmnist_data(fmnist) -> Data:
    return Data(fmnist / "train", fmnist / "val")


class RankAccelerator:
    """What build_loaders reads of an Accelerator, as rank `process_index` of `num_processes` on the CPU."""

    def __init__(self, rank: int, world: int, seed: int):
        self.device, self.process_index, self.num_processes, self.seed = CPU, rank, world, seed

    def prepare(self, *loaders):
        from accelerate.data_loader import prepare_data_loader

        return tuple(prepare_data_loader(dl, self.device, num_processes=self.num_processes,
                                         process_index=self.process_index, use_seedable_sampler=True,
                                         data_seed=self.seed) for dl in loaders)  # fmt: skip

    def skip_first_batches(self, loader, n: int):
        from accelerate.data_loader import skip_first_batches

        return skip_first_batches(loader, n)


@dataclass
class Pair:
    """A kind's (train, val) loaders, driven as the engine drives them."""

    kind: str
    train: Any
    val: Any

    def epoch(self, epoch: int, skip: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.train.set_epoch(epoch)
        self.train.skip_batches(skip)
        return [(x, y) for x, y in self.train]

    def labels(self, epoch: int) -> list[int]:
        return [int(v) for _, y in self.epoch(epoch) for v in y]

    def val_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(x, y) for x, y in self.val]

    def resize(self, size: int) -> None:
        for loader in (self.train, self.val):
            loader.set_image_size(size)


def build(kind: str, data: Data, *, seed: int = 0, rank: int = 0, world: int = 1, size: int = 32,
          aug: AugmentConfig = AUG, batch: int = 4) -> Pair:  # fmt: skip
    """`kind`'s loaders over data (torch / gpu-files: the folders; ffcv / gpu-beton: jpg .betons; gpu-raw: raw
    .betons), built by core.data.loaders.build_loaders for rank `rank` of `world`."""
    from omegaconf import OmegaConf

    from core.data.loaders import DataSource, build_loaders, open_data

    if kind in ("torch", "gpu-files"):
        dirs = str(data.train), str(data.val)
    else:
        dirs = tuple(str(data.beton(split, "raw" if kind == "gpu-raw" else "jpg")) for split in ("train", "val"))
    backend = kind.partition("-")[0]
    d = OmegaConf.structured(DataConfig(train_dir=dirs[0], val_dir=dirs[1], batch_size=batch, crop_pct=CROP_PCT,
                                        num_workers=1 if backend != "torch" else 0, loader=backend))  # fmt: skip
    if backend == "gpu":
        opened = open_gpu_data(d, seed)
        source = DataSource("gpu", opened.classes, (len(opened.train_indices), len(opened.val_indices)), opened)
    else:
        if backend == "ffcv" and not has_ffcv():
            pytest.skip("FFCV is not installed")
        source = open_data(d, seed, CPU, say=lambda _: None)
    train, val = build_loaders(source, d, seed, aug, MEAN, STD, size, RankAccelerator(rank, world, seed), False)
    return Pair(kind, train, val)


# --- conformance: every loader ---


@pytest.mark.parametrize("kind", KINDS)
def test_order_is_a_function_of_seed_epoch_and_rank(kind, indexed):
    a, b, other_seed = build(kind, indexed), build(kind, indexed), build(kind, indexed, seed=1)
    first = a.labels(0)
    assert first == b.labels(0) and sorted(first) == sorted(set(first)) and len(first) == 36  # 9 full batches of 4
    assert a.labels(1) != first and a.labels(1) == b.labels(1)  # reshuffled per epoch, the same on a rerun
    assert other_seed.labels(0) != first
    r0, r1 = build(kind, indexed, rank=0, world=2), build(kind, indexed, rank=1, world=2)
    assert r0.labels(0) == build(kind, indexed, rank=0, world=2).labels(0) != r1.labels(0)


@pytest.mark.slow
def test_ffcv_and_gpu_loaders_take_the_same_order(indexed):
    for rank, world in ((0, 1), (1, 3)):
        ffcv = build("ffcv", indexed, rank=rank, world=world)
        files, beton = build("gpu-files", indexed, rank=rank, world=world), build("gpu-beton", indexed, rank=rank, world=world)
        for epoch in (0, 2):
            assert ffcv.labels(epoch) == files.labels(epoch) == beton.labels(epoch)
        assert [int(v) for _, y in ffcv.val for v in y] == [int(v) for _, y in files.val for v in y]


@pytest.mark.parametrize("kind", KINDS)
def test_shards_are_disjoint_and_complete(kind, indexed):
    world = 3
    pairs = [build(kind, indexed, rank=r, world=world) for r in range(world)]
    for epoch in (0, 1):
        shards = [p.labels(epoch) for p in pairs]
        assert all(len(s) == len(shards[0]) == 12 for s in shards)  # 37 // 3 = 12 each: 3 batches, same steps
        assert len(set().union(*shards)) == 36  # disjoint
        assert len({len(p.train) for p in pairs}) == 1
    val = [[[int(v) for v in y] for _, y in p.val] for p in pairs]
    if kind == "torch":  # Accelerate pads with repeats; gather_for_metrics keeps the first n of the gathered order
        gathered = [label for batch in range(len(val[0])) for rank in range(world) for label in val[rank][batch]]
        assert gathered[:37] == list(range(37))
    else:  # exact shards: every sample once, on one rank
        flat = [label for shard in val for batch in shard for label in batch]
        assert sorted(flat) == list(range(37)) and pairs[0].val.exact_shards


@pytest.mark.parametrize("kind", SKIP_KINDS)
def test_skip_batches_gives_exactly_the_tail_of_the_epoch(kind, indexed):
    pair = build(kind, indexed, rank=1, world=2)
    full = pair.epoch(1)
    tail = pair.epoch(1, skip=2)
    assert len(full) == len(pair.train) == 4 and len(tail) == 2  # 18 samples on this rank: 4 batches of 4
    for (x, y), (tx, ty) in zip(full[2:], tail):
        assert torch.equal(y, ty) and torch.equal(x, tx)  # same samples, same crops, same device augmentation
    assert [y.tolist() for _, y in pair.epoch(1)] == [y.tolist() for _, y in full]  # the skip lasted one epoch


@pytest.mark.parametrize("kind", KINDS)
def test_set_image_size_changes_the_output_size(kind, indexed):
    pair = build(kind, indexed, size=24)
    assert pair.epoch(0)[0][0].shape == (4, 3, 24, 24) and pair.val_batches()[0][0].shape == (8, 3, 24, 24)
    pair.resize(40)
    x, y = pair.epoch(1)[0]
    assert x.shape == (4, 3, 40, 40) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert pair.val_batches()[-1][0].shape[1:] == (3, 40, 40)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["lfw_data", "fmnist_data"])
def test_same_images_give_close_pixels_and_equal_labels(dataset, request):
    """Validation (no randomness), same order everywhere: per-image channel means and spreads agree across the
    loaders (PNG files through PIL or torchvision, JPEGs in a .beton, raw pixels in a .beton), labels are equal."""
    data = request.getfixturevalue(dataset)
    kinds = ["torch", "ffcv", "gpu-files", "gpu-beton", "gpu-raw"]
    stats, labels = {}, {}
    for kind in kinds:
        batches = build(kind, data, size=32, batch=16).val_batches()
        images = torch.cat([x for x, _ in batches])
        labels[kind] = torch.cat([y for _, y in batches]).tolist()
        stats[kind] = torch.stack([images.mean((2, 3)), images.std((2, 3))], 1)  # (n, 2, 3)
        assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
    for kind in kinds[1:]:
        assert labels[kind] == labels["torch"], kind
        diff = (stats[kind] - stats["torch"]).abs()
        assert diff.mean() < 0.05 and diff.max() < 0.4, (kind, float(diff.mean()), float(diff.max()))
    # the GPU loader decodes PNG files and raw .beton pixels alike; JPEGs differ from them only by compression
    assert torch.allclose(stats["gpu-files"], stats["gpu-raw"], atol=1e-5)
    assert (stats["gpu-beton"] - stats["ffcv"]).abs().mean() < 0.03


# --- the GPU loader's own parts ---


@pytest.mark.parametrize("mode", ["jpg", "raw", "proportion"])
def test_beton_reader_matches_ffcv_reader(mode, lfw_data):
    path = lfw_data.beton("train", mode)  # (skips without FFCV)
    from ffcv.reader import Reader

    from core.data.beton import open_beton
    from core.data.beton_reader import read_beton

    ours, theirs, checked = read_beton(path), Reader(str(path)), open_beton(path)
    meta = theirs.metadata["f0"]
    assert ours.num_samples == int(theirs.num_samples) == 40 and ours.classes == checked.classes == ["face", "non_face"]
    assert np.array_equal(ours.labels, checked.labels) and np.array_equal(ours.labels, theirs.metadata["f1"])
    for key, mine in (("mode", ours.modes), ("height", ours.heights), ("width", ours.widths), ("data_ptr", ours.ptrs)):
        assert np.array_equal(mine, meta[key]), key
    table = dict(zip(theirs.alloc_table["ptr"].tolist(), theirs.alloc_table["size"].tolist()))
    assert ours.sizes.tolist() == [table[p] for p in meta["data_ptr"].tolist()]
    source = open_source(str(path), "data.train_dir")
    folder = sorted((lfw_data.train).glob("*/*.png"))
    for i in range(0, 40, 7):
        is_jpeg, data = source.read(i)
        assert is_jpeg == (meta["mode"][i] == 0)
        png = torch.from_numpy(np.array(Image.open(folder[i]).convert("RGB"))).permute(2, 0, 1)
        if is_jpeg:
            from torchvision.io import decode_jpeg

            assert data.numpy()[:3].tobytes() == b"\xff\xd8\xff"
            assert (decode_jpeg(data).float() - png.float()).abs().mean() < 4  # the stored JPEG of that face
        else:
            assert torch.equal(data, png)  # raw mode: the very pixels


def test_crop_boxes_match_ffcv_crop_decoder():
    if not has_ffcv():
        pytest.skip("FFCV is not installed")
    from core.data.ffcv_decode import _center_crop, crop_box

    rng = np.random.default_rng(0)
    h, w, idx = rng.integers(1, 700, 3000), rng.integers(1, 700, 3000), rng.integers(0, 2**40, 3000)
    for seed, epoch, scale, ratio in ((0, 0, (0.08, 1.0), (3 / 4, 4 / 3)), (2**63 + 5, 9, (0.35, 1.0), (0.75, 1.3333333)),
                                      (7, 1, (0.9, 1.0), (2.0, 3.0))):  # fmt: skip  (the last: fallbacks)
        ours = random_crop_boxes(h, w, idx, epoch, seed, scale, ratio)
        theirs = np.array([crop_box(a, b, i, epoch, seed, scale, ratio) for a, b, i in zip(h, w, idx)])
        assert np.array_equal(ours, theirs)
        assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 3] >= 1).all()
    assert np.array_equal(center_crop_boxes(h, w, 0.875), [_center_crop(a, b, 0.875) for a, b in zip(h, w)])


def test_other_formats_decode_on_the_cpu_to_the_pixels_the_torch_path_sees(tmp_path):
    """BMP (through PIL), RGBA PNG, greyscale and CMYK JPEGs: three channels, exactly PIL's RGB conversion."""
    import skimage.data
    from torchvision.io import ImageReadMode, decode_jpeg

    photo, root = skimage.data.astronaut(), tmp_path / "mixed"
    for k, (cls, name, mode, fmt) in enumerate([("a", "1.bmp", "RGB", "BMP"), ("a", "2.png", "RGBA", "PNG"),
                                                ("b", "3.jpg", "L", "JPEG"), ("b", "4.jpg", "CMYK", "JPEG")]):  # fmt: skip
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[k * 20 : k * 20 + 50, k * 30 : k * 30 + 70]).convert(mode).save(root / cls / name, fmt)
    source = open_source(str(root), "data.train_dir")
    for i, (path, _) in enumerate(source.samples):
        is_jpeg, data = source.read(i)
        pil = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        assert is_jpeg == path.endswith(".jpg")
        assert torch.equal(decode_jpeg(data, mode=ImageReadMode.RGB) if is_jpeg else data, pil), path
    loader = GpuLoader(source, np.arange(4), 4, train=True, image_size=24, crop_pct=CROP_PCT, augment=AUG, mean=MEAN,
                       std=STD, seed=0, device=CPU)  # fmt: skip
    [(x, y)] = list(loader)
    assert x.shape == (4, 3, 24, 24) and sorted(y.tolist()) == [0, 0, 1, 1]


def test_corrupt_or_unreadable_images_are_named(indexed, tmp_path):
    folder = Path(shutil.copytree(indexed.train, tmp_path / "train"))
    bad = folder / "c05" / "x.jpg"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated inside the JPEG header
    source = open_source(str(folder), "data.train_dir")
    loader = GpuLoader(source, np.arange(37), 37, train=False, image_size=16, crop_pct=1.0, augment=AUG, mean=MEAN,
                       std=STD, seed=0, device=CPU)  # fmt: skip
    with pytest.raises(FtlError, match=f"cannot decode JPEG {bad} "):
        list(loader)
    (folder / "c05" / "x.jpg").unlink()
    (folder / "c05" / "x.png").write_bytes(b"not an image at all")
    with pytest.raises(FtlError, match=f"cannot read image {folder / 'c05' / 'x.png'}"):
        list(GpuLoader(open_source(str(folder), "x"), np.arange(37), 8, train=False, image_size=16, crop_pct=1.0,
                       augment=AUG, mean=MEAN, std=STD, seed=0, device=CPU))  # fmt: skip
    # inside a .beton: sample 9's JPEG zeroed between its start and end markers (same size: the sidecar matches)
    beton = tmp_path / "idx.beton"
    shutil.copy(indexed.beton("train"), beton)
    shutil.copy(f"{indexed.beton('train')}.json", f"{beton}.json")
    source = open_source(str(beton), "data.train_dir")
    with open(beton, "r+b") as f:
        f.seek(int(source.index.ptrs[9]) + 2)
        f.write(b"\x00" * (int(source.index.sizes[9]) - 4))
    with pytest.raises(FtlError, match=f"cannot decode JPEG {beton} sample 9 "):
        list(GpuLoader(open_source(str(beton), "x"), np.arange(37), 16, train=False, image_size=16, crop_pct=1.0,
                       augment=AUG, mean=MEAN, std=STD, seed=0, device=CPU))  # fmt: skip


def test_truncated_or_foreign_beton_is_a_clear_error(indexed, tmp_path):
    from core.data.beton_reader import read_beton

    good = indexed.beton("train")
    cut = tmp_path / "cut.beton"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FtlError, match="truncated"):
        read_beton(cut)
    (tmp_path / "junk.beton").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(FtlError, match="junk.beton: not a readable .beton"):
        read_beton(tmp_path / "junk.beton")
    with pytest.raises(FtlError, match="no such .beton"):
        read_beton(tmp_path / "missing.beton", "data.val_dir")
    grown = tmp_path / "grown.beton"  # a sidecar from another file
    grown.write_bytes(good.read_bytes() + b"\0" * 10)
    shutil.copy(f"{good}.json", f"{grown}.json")
    with pytest.raises(FtlError, match="incomplete or changed"):
        read_beton(grown)


def test_leaving_early_or_failing_stops_the_threads(indexed):
    before = threading.active_count()
    loader = build("gpu-files", indexed).val  # every sample, in order
    for _ in loader:
        break
    it = iter(loader)
    next(it)
    it.close()
    assert threading.active_count() == before
    loader.source.samples[5] = ("/nonexistent/x.jpg", 5)
    with pytest.raises(FtlError, match="cannot read image /nonexistent/x.jpg"):
        list(loader)
    assert threading.active_count() == before


def test_gpu_data_reads_the_beton_sibling_and_splits_like_the_torch_path(lfw_data, tmp_path):
    from omegaconf import OmegaConf

    from core.data.beton import choose_loader, convert
    from core.data.datasets import build_datasets

    shutil.copytree(lfw_data.val, tmp_path / "val")
    d = OmegaConf.structured(DataConfig(train_dir=str(tmp_path / "val"), val_split=0.25, batch_size=8, loader="gpu",
                                        crop_pct=CROP_PCT))  # (the engine resolves a None crop_pct to the model's)
    torch_split = build_datasets(d.train_dir, None, None, None, 0.25, seed=3)
    files = open_gpu_data(d, 3)
    assert (len(files.train_indices), len(files.val_indices)) == (len(torch_split.train), len(torch_split.val)) == (74, 26)
    assert [files.val.samples[i] for i in files.val_indices] == torch_split.val.samples  # the same held-out images
    if has_ffcv():
        convert(d.train_dir, workers=1)  # val.beton next to the folder: found without naming it
        beton = open_gpu_data(d, 3)
        assert type(beton.train).__name__ == "BetonSource" and np.array_equal(beton.val_indices, files.val_indices)
        files = beton
    train, val = build_gpu_loaders(d, files, 3, AUG, MEAN, STD, 24, CPU, 0, 1)
    assert val.batch_size == 16 and len(train) == 74 // 8 and len(val) == 2
    train.shuffle = False  # what a preview does: the indices in order, crops still seeded per sample
    assert torch.cat([y for _, y in train]).tolist()[:8] == [label for _, label in torch_split.train.samples][:8]
    assert torch.cat([y for _, y in val]).tolist() == [label for _, label in torch_split.val.samples]
    with pytest.raises(FtlError, match="val_split=0"):
        open_gpu_data(OmegaConf.merge(d, {"val_split": 0.0}), 0)
    with pytest.raises(FtlError, match="data.loader=gpu"):
        choose_loader(d, device=CPU)  # the engine refuses it on a CPU-only run


@pytest.mark.slow
def test_engine_trains_and_resumes_bit_exact_on_the_gpu_loader(lfw, tmp_path, monkeypatch):
    """`ftl train`'s engine on the gpu backend (JPEG files; the CPU standing in for the GPU, which the engine's
    choice of loader would refuse): a run stopped mid-epoch and resumed ends with the weights of an uninterrupted
    one, through progressive resizing, seeded crops, device augmentation and MixUp / CutMix."""
    from safetensors.torch import load_file

    from core.data import beton
    from tests.conftest import lfw_overrides

    calls = []
    stop_after_7 = lambda: calls.append(1) or len(calls) >= 7  # polled once per update

    for png in sorted(lfw.glob("*/*/*.png")):  # the faces as JPEG files
        out = tmp_path / "lfw" / png.relative_to(lfw).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(png).convert("RGB").save(out, quality=95)
    monkeypatch.setattr(beton, "choose_loader", lambda d, say=print, device=None, torch_only="": "gpu")
    over = lfw_overrides(tmp_path / "lfw", **{"data.loader": "gpu", "data.num_workers": 2, "data.batch_size": 8,
                                              "train.deterministic": "true", "augment.color_jitter": 0.2,
                                              "augment.rotate": 10, "augment.random_erasing": 0.3, "augment.mixup": 0.4,
                                              "augment.cutmix": 1.0, "data.image_size": "[[0,48],[1,64]]",
                                              "data.resize": "crop"})  # fmt: skip
    cfg = config.load("fine_tune", over)
    full = engine.fit(cfg, tmp_path / "full")
    part = engine.fit(cfg, tmp_path / "part", should_stop=stop_after_7)
    assert part["status"] == "interrupted" and (part["epoch"], part["step_in_epoch"]) == (1, 2)
    resumed = engine.fit(config.load("fine_tune", [*over, f"resume={tmp_path / 'part'}"]))
    a = load_file(str(tmp_path / "full" / "export" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "export" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val_top1"] == full["val_top1"] and resumed["global_step"] == full["global_step"]
    assert full["val_n"] == 100 and full["val_top1"] >= 0.7  # faces vs non-faces, learnt from decoded JPEGs


# --- CUDA only ---

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("flips", [True, False])  # without flips nothing in the decode thread waits for the GPU
def test_cuda_batches_are_not_overwritten_while_the_gpu_is_busy(indexed, lfw_data, tmp_path, flips):
    """Iterate while the default stream is kept busy, keeping every batch without copying it; afterwards each must
    equal the batch a calm, synchronised pass produced. JPEG files and PNG files (CPU-decoded, pinned, copied)."""
    folder = Path(shutil.copytree(indexed.train, tmp_path / "mixed"))
    for k, png in enumerate(sorted(lfw_data.train.glob("*/*.png"))[:10]):
        shutil.copy(png, folder / f"c{k:02d}" / "y.png")
    aug = AugmentConfig(scale=[0.35, 1.0], hflip=0.5 if flips else 0.0, color_jitter=0.3, random_erasing=0.3)
    source = open_source(str(folder), "data.train_dir")
    loader = GpuLoader(source, np.arange(len(source)), 4, train=True, image_size=64, crop_pct=CROP_PCT, augment=aug,
                       mean=MEAN, std=STD, seed=0, device=torch.device("cuda"), num_workers=4)  # fmt: skip
    loader.set_epoch(3)
    calm = []
    for x, y in loader:
        torch.cuda.synchronize()
        calm.append((x.cpu(), y.cpu()))
    busy = torch.randn(4096, 4096, device="cuda")
    loader.set_epoch(3)
    kept = []
    for x, y in loader:
        for _ in range(8):
            busy = torch.nn.functional.normalize(busy @ busy, dim=1)  # the default stream stays ~ms behind
        kept.append((x, y))
    torch.cuda.synchronize()
    assert len(kept) == len(calm) == len(loader)
    for (x, y), (cx, cy) in zip(kept, calm):
        assert torch.equal(y.cpu(), cy) and torch.equal(x.cpu(), cx)


@cuda
def test_cuda_decode_matches_cpu_and_names_corrupt_jpegs(indexed, tmp_path):
    source = open_source(str(indexed.train), "data.train_dir")
    kw = {"train": False, "image_size": 48, "crop_pct": CROP_PCT, "augment": AUG, "mean": MEAN, "std": STD, "seed": 0}
    on_gpu = torch.cat([x.cpu() for x, _ in GpuLoader(source, np.arange(37), 8, device=torch.device("cuda"), **kw)])
    on_cpu = torch.cat([x for x, _ in GpuLoader(source, np.arange(37), 8, device=CPU, **kw)])
    assert (on_gpu - on_cpu).abs().mean() < 0.05  # nvJPEG vs libjpeg-turbo IDCTs, float vs uint8 resizing
    folder = Path(shutil.copytree(indexed.train, tmp_path / "train"))
    bad = folder / "c11" / "x.jpg"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(FtlError, match=f"cannot decode JPEG {bad} "):
        list(GpuLoader(open_source(str(folder), "x"), np.arange(37), 16, device=torch.device("cuda"), **kw))
