"""The FFCV path on real images: .beton conversion and its errors, the loader's sharding over 2 real processes,
device augmentation, and parity with the torch path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import config, engine
from core.config import AugmentConfig
from core.data.beton import convert, open_beton
from core.data.device_augment import DeviceAugment
from core.errors import FtlError
from tests.conftest import REPO, ftl, lfw_overrides, run_ftl

pytest.importorskip("ffcv")
pytestmark = pytest.mark.slow
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def read_raw(beton: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Images of a raw-mode .beton straight from the file (no FFCV decode): the round trip checks the bytes."""
    b = open_beton(beton)
    from ffcv.reader import Reader

    meta = Reader(str(beton)).metadata
    data = np.memmap(beton, np.uint8, mode="r")
    images = [np.array(data[m["data_ptr"] : m["data_ptr"] + m["height"] * m["width"] * 3]).reshape(m["height"], m["width"], 3)
              for m in meta["f0"]]  # fmt: skip
    assert (meta["f0"]["mode"] == 1).all()  # raw
    return images, b.labels


@pytest.fixture(scope="session")
def lfw_betons(lfw, tmp_path_factory) -> Path:
    """A copy of lfw with train.beton and val.beton beside its folders (where data.loader=ffcv or auto finds them),
    made once - never beside the shared lfw folders, where every loader would find them (the GPU loader reads a
    folder's .beton when there is one)."""
    import shutil

    root = Path(shutil.copytree(lfw, tmp_path_factory.mktemp("lfw-betons") / "lfw"))
    for split in ("train", "val"):
        convert(str(root / split))
    return root


@pytest.fixture(scope="module")
def indexed_folder(tmp_path_factory) -> Path:
    """37 classes of one real photo crop each (different sizes): a sample's label is its index."""
    import skimage.data

    root = tmp_path_factory.mktemp("idx") / "train"
    photo = skimage.data.astronaut()
    for i in range(37):
        (root / f"c{i:02d}").mkdir(parents=True)
        Image.fromarray(photo[i * 5 : i * 5 + 40 + i, i * 3 : i * 3 + 50]).save(root / f"c{i:02d}" / "x.png")
    return root


def test_convert_round_trip_raw_pixels_labels_sidecar(lfw, tmp_path):
    out = tmp_path / "train.beton"
    proc = ftl("data", "convert", lfw / "train", "--out", out, "--mode", "raw")
    assert proc.returncode == 0, proc.stderr
    assert "it/s" not in proc.stderr and "\r" not in proc.stderr  # no progress bar without a terminal (a log)
    images, labels = read_raw(out)
    folder = sorted((lfw / "train").glob("*/*.png"))  # ImageFolder order: class folders, then file names
    assert len(images) == len(folder) == 40
    assert labels.tolist() == [0] * 20 + [1] * 20
    for img, path in zip(images, folder):
        assert np.array_equal(img, np.asarray(Image.open(path).convert("RGB")))
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["classes"] == ["face", "non_face"] and meta["counts"] == {"face": 20, "non_face": 20}
    assert meta["beton_bytes"] == out.stat().st_size and len(meta["source_hash"]) == 64
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind
    # jpg mode with a max resolution: the images shrink; the same source gives the same source hash
    small = convert(str(lfw / "train"), tmp_path / "small.beton", mode="jpg", max_resolution=16, jpeg_quality=80)
    assert small["source_hash"] == meta["source_hash"] and small["mode"] == "jpg"
    from ffcv.reader import Reader

    assert Reader(str(tmp_path / "small.beton")).metadata["f0"]["width"].max() == 16


def test_corrupt_image_named_or_skipped(lfw, tmp_path):
    src = tmp_path / "src"
    for cls in ("face", "non_face"):
        (src / cls).mkdir(parents=True)
        for p in sorted((lfw / "train" / cls).glob("*.png"))[:5]:
            (src / cls / p.name).write_bytes(p.read_bytes())
    bad = sorted((src / "non_face").glob("*.png"))[3]
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    out = tmp_path / "x.beton"
    proc = ftl("data", "convert", src, "--out", tmp_path / "new" / "dirs" / "x.beton")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot read image {bad}" in proc.stderr and "--skip-bad" in proc.stderr
    assert not (tmp_path / "new").exists()  # the folders it made for its output are gone again
    proc = ftl("data", "convert", src, "--out", out)
    assert not out.exists() and not Path(f"{out}.json").exists() and not list(tmp_path.glob(".x.beton*"))
    proc = ftl("data", "convert", src, "--out", out, "--skip-bad")
    assert proc.returncode == 0 and "skipped 1 unreadable" in proc.stdout
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["num_samples"] == 9 and meta["skipped"] == [str(bad)] and meta["counts"] == {"face": 5, "non_face": 4}


def test_truncated_or_garbage_beton_is_a_clear_error(lfw, tmp_path):
    good = tmp_path / "good.beton"
    convert(str(lfw / "train"), good)
    cut = tmp_path / "cut.beton"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FtlError, match="truncated"):
        open_beton(cut)  # no sidecar: caught by the allocation table reaching past the end
    Path(f"{cut}.json").write_text(Path(f"{good}.json").read_text())
    (tmp_path / "junk.beton").write_bytes(os.urandom(5000))
    proc = ftl("train", "base", *lfw_overrides(lfw, **{"data.train_dir": cut, "data.loader": "ffcv"}))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"data.train_dir={cut}" in proc.stderr and "ftl data convert" in proc.stderr
    with pytest.raises(FtlError, match="junk.beton"):
        open_beton(tmp_path / "junk.beton")


def test_loader_ffcv_without_ffcv_installed(lfw, tmp_path):
    """A real subprocess where `import ffcv` fails (a shadowing module raising ImportError)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "ffcv.py").write_text("raise ImportError('No module named ffcv')\n")
    env = {"PYTHONPATH": f"{shadow}{os.pathsep}{REPO}"}
    proc = run_ftl("train", "base", *lfw_overrides(lfw, **{"data.loader": "ffcv"}), env=env)
    assert proc.returncode == 2 and "pip install -e '.[ffcv]'" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_ftl("train", "base", *lfw_overrides(lfw, **{"data.loader": "auto", "train.epochs": 1}),
                   "--run-dir", tmp_path / "run", env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("data.loader=auto -> torch (FFCV is not installed)") == 1


def test_two_processes_get_disjoint_complete_shards(indexed_folder, tmp_path):
    convert(str(indexed_folder), tmp_path / "idx.beton", mode="raw")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29541", str(REPO / "tests" / "ffcv_shards.py"),
           str(tmp_path / "idx.beton"), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    val = [set(r["val"]) for r in ranks]
    assert not val[0] & val[1] and val[0] | val[1] == set(range(37))  # validation: disjoint and complete
    assert sum(len(r["val"]) for r in ranks) == 37 and ranks[0]["val_n"] == ranks[1]["val_n"] == 37
    for epoch in ("train0", "train1"):
        a, b = (set(r[epoch]) for r in ranks)
        assert not a & b and len(a) == len(b) == 16  # 2 batches of 8 each: equal steps, no sample twice
    assert ranks[0]["train0"] != ranks[0]["train1"]  # reshuffled per epoch


def test_device_augment_seeded_per_sample_and_normalised():
    aug = AugmentConfig(scale=[0.35, 1.0], hflip=0.5, random_erasing=0.5, brightness=0.3, rotate=10)
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    da = DeviceAugment(aug, MEAN, STD, seed=3, train=True)
    a, b = da(images.clone(), epoch=1, batch=2), da(images.clone(), epoch=1, batch=2)
    assert torch.equal(a, b) and a.shape == (16, 3, 32, 32) and a.dtype == torch.float32
    other = DeviceAugment(aug, MEAN, STD, seed=4, train=True)(images.clone(), epoch=1, batch=2)
    assert not torch.equal(a, other) and not torch.equal(a, da(images.clone(), epoch=2, batch=2))
    flips = DeviceAugment(AugmentConfig(hflip=0.5), MEAN, STD, seed=0, train=True)(images.clone())
    plain = DeviceAugment(AugmentConfig(), MEAN, STD, seed=0, train=False)(images.clone())
    flipped = [torch.equal(f, p.flip(2)) for f, p in zip(flips, plain)]
    kept = [torch.equal(f, p) for f, p in zip(flips, plain)]
    assert all(x or y for x, y in zip(flipped, kept)) and 2 <= sum(flipped) <= 14  # per-sample coin flips
    expected = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(plain, expected, atol=1e-5)
    with pytest.raises(FtlError, match="augment.policy"):
        DeviceAugment(AugmentConfig(policy="rand-m9-mstd0.5"), MEAN, STD, seed=0, train=True)


def test_parity_with_torch_path_batches_and_accuracy(lfw_betons, tmp_path):
    """Same recipe on both paths: batches of the same shape, dtype and normalisation; similar accuracy."""
    import shutil

    lfw = Path(shutil.copytree(lfw_betons, tmp_path / "lfw"))  # lfw/train.beton next to the folder: found by ffcv/auto
    common = lfw_overrides(lfw, **{"data.image_size": 96, "train.epochs": 8, "data.batch_size": 8, "optim.lr": 1e-3,
                                   "augment.scale": "[0.7,1.0]"})  # fmt: skip
    results, batches = {}, {}
    from core.data.datasets import build_loaders
    from core.data.ffcv_loader import build_ffcv_loaders
    from core.data.loaders import open_data
    from core.data.transforms import augment_config, eval_transform, train_transform

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    for loader in ("torch", "ffcv"):
        cfg = config.load("base", [*common, f"data.loader={loader}"])
        source, aug = open_data(cfg.data, 0, torch.device("cpu")), augment_config(cfg.augment)
        if loader == "torch":
            source.opened.train.make_transform = lambda n: train_transform(n, mean, std, aug)
            source.opened.val.make_transform = lambda n: eval_transform(n, mean, std)
            source.opened.train.set_image_size(96)
            train_loader, _ = build_loaders(source.opened, 8, None, 0, 0, pin_memory=False)
        else:
            train_loader, _ = build_ffcv_loaders(cfg.data, source.opened, 0, aug, mean, std, 96, torch.device("cpu"),
                                                 0, 1)  # fmt: skip
        batches[loader] = next(iter(train_loader))[0]
        results[loader] = engine.fit(cfg, tmp_path / loader)
    t, f = batches["torch"], batches["ffcv"]
    assert t.shape == f.shape == (8, 3, 96, 96) and t.dtype == f.dtype == torch.float32
    assert abs(t.mean() - f.mean()) < 0.25 and abs(t.std() - f.std()) < 0.25  # same normalisation of the same faces
    print({k: round(v["val_top1"], 3) for k, v in results.items()})
    from core.preview import augment_grid

    grid = Image.open(augment_grid(config.load("base", [*common, "data.loader=ffcv"]), tmp_path / "p.png", 3, 4))
    assert grid.size == (4 * 98 + 2, 3 * 98 + 2)  # the FFCV path's preview: 3 samples x 4 epochs of 96 px tiles
    assert results["ffcv"]["val_n"] == results["torch"]["val_n"] == 100
    assert results["ffcv"]["val_top1"] >= 0.85 and abs(results["ffcv"]["val_top1"] - results["torch"]["val_top1"]) <= 0.08


def test_auto_lr_on_ffcv_takes_the_range_tests_batch_from_the_runs_batches(lfw_betons, tmp_path):
    """The FFCV loader's batch size is fixed: a range test of fewer images a step uses the first ones of each."""
    over = lfw_overrides(lfw_betons, **{"data.loader": "ffcv", "data.image_size": 32, "data.batch_size": 16,
                                        "train.epochs": 2, "optim.lr": "auto", "lr_find.num_steps": 12,
                                        "lr_find.batch_size": 6, "lr_find.start_lr": 1e-6})  # fmt: skip
    assert engine.fit(config.load("fine_tune", over), tmp_path / "r")["status"] == "completed"
    found = json.loads((tmp_path / "r" / "lr_find.json").read_text())
    assert found["batch_size"] == 6 and found["chosen"] > 0


def test_ffcv_resume_mid_epoch_is_bit_exact(lfw_betons, tmp_path):
    """The FFCV path keeps exact resume: seeded order, seeded crops in the decoder, seeded device augmentation."""
    import shutil

    from safetensors.torch import load_file

    from tests.conftest import stop_after as _stop_after

    lfw = Path(shutil.copytree(lfw_betons, tmp_path / "lfw"))
    over = lfw_overrides(lfw, **{"data.loader": "ffcv", "data.num_workers": 2, "data.batch_size": 8,
                                 "train.deterministic": "true", "model.head_dropout": 0.3, "augment.color_jitter": 0.2,
                                 "augment.rotate": 10, "augment.random_erasing": 0.3, "augment.mixup": 0.4,
                                 "augment.cutmix": 1.0, "train.ema": "true", "data.image_size": "[[0,48],[1,64]]"})  # fmt: skip
    cfg = config.load("fine_tune", over)
    full = engine.fit(cfg, tmp_path / "full")
    part = engine.fit(cfg, tmp_path / "part", should_stop=_stop_after(7))
    assert part["status"] == "interrupted" and (part["epoch"], part["step_in_epoch"]) == (1, 2)
    resumed = engine.fit(config.load("fine_tune", [*over, f"resume={tmp_path / 'part'}"]))
    for name in ("last", "ema"):
        a = load_file(str(tmp_path / "full" / "export" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "part" / "export" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed["val_top1"] == full["val_top1"] and resumed["global_step"] == full["global_step"]


def test_two_process_ddp_training_on_ffcv(lfw_betons, tmp_path):
    """`ftl train` under torchrun (2 CPU processes) on .beton files: ranks agree, validation counts every image once."""
    import re
    import shutil

    lfw = Path(shutil.copytree(lfw_betons, tmp_path / "lfw"))
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", "29543", "-m", "launcher.cli", "train", "base",
           *lfw_overrides(lfw, **{"data.num_workers": 1, "data.loader": "ffcv"}), "--run-dir", str(tmp_path / "ddp")]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    finals = dict(re.findall(r"ftl: rank (\d): (final val_top1 \S+ val_top5 \S+ val_loss \S+)", proc.stdout))
    assert set(finals) == {"0", "1"} and finals["0"] == finals["1"], proc.stdout
    digests = dict(re.findall(r"ftl: rank (\d): weights ([0-9a-f]{16})$", proc.stdout, re.M))  # each rank's own weights
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], proc.stdout
    assert "ffcv loader; 2 process(es)" in proc.stdout
    assert json.loads((tmp_path / "ddp" / "result.json").read_text())["val_n"] == 100
