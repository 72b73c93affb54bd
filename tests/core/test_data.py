"""Bundled datasets, ImageFolder splits and data errors, on real images."""

import pytest
from PIL import Image

from core.config import AugmentConfig
from core.data import bundled
from core.data.datasets import build_datasets, stratified_split
from core.data.transforms import eval_transform, train_transform
from core.errors import FtlError


def test_fashion_mnist_subset_counts(fmnist):
    train = sorted(p.name for p in (fmnist / "train").iterdir())
    assert train == sorted(bundled.FASHION_MNIST_CLASSES)
    assert all(len(list((fmnist / "train" / c).glob("*.png"))) == 30 for c in train)
    assert all(len(list((fmnist / "val" / c).glob("*.png"))) == 10 for c in train)
    assert Image.open(next((fmnist / "train" / "bag").glob("*.png"))).size == (28, 28)


def test_fashion_mnist_first_images_in_official_order(tmp_path):
    arrays = bundled.load_fashion_mnist()
    images, labels = arrays["train"]
    assert images.shape == (60000, 28, 28) and labels[:3].tolist() == [9, 0, 0]  # the official first labels
    out = bundled.prepare("fashion-mnist", tmp_path / "f", per_class=2, val_per_class=1, classes=[5, 6, 7, 8, 9])
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(bundled.FASHION_MNIST_CLASSES[5:])
    assert (Image.open(out / "train" / "ankle_boot" / "00000.png").tobytes() == images[0].tobytes())


def test_prepare_is_idempotent_and_refuses_foreign_dir(tmp_path, lfw):
    assert bundled.prepare("lfw-subset", lfw, per_class=20) == lfw
    with pytest.raises(FtlError, match=r"already holds lfw-subset prepared with other options \(per_class 20 there, "
                                       r"10 asked\): choose another --out"):  # fmt: skip
        bundled.prepare("lfw-subset", lfw, per_class=10)
    (tmp_path / "mine").mkdir()
    with pytest.raises(FtlError, match="already exists and was not written by `ftl data prepare`"):
        bundled.prepare("lfw-subset", tmp_path / "mine")
    with pytest.raises(FtlError, match="unknown dataset 'lfw'.*lfw-subset"):
        bundled.prepare("lfw", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_lfw_subset_counts(lfw):
    assert len(list((lfw / "train" / "face").glob("*.png"))) == 20
    assert len(list((lfw / "val" / "non_face").glob("*.png"))) == 50


def test_stratified_split_is_seeded_and_stratified():
    targets = [0] * 50 + [1] * 30
    tr, va = stratified_split(targets, 0.2, seed=1)
    assert stratified_split(targets, 0.2, seed=1) == (tr, va)
    assert stratified_split(targets, 0.2, seed=2) != (tr, va)
    assert sorted(tr + va) == list(range(80))
    assert sum(targets[i] == 0 for i in va) == 10 and sum(targets[i] == 1 for i in va) == 6


def test_split_from_train_dir_only(lfw):
    s = build_datasets(str(lfw / "val"), None, None, None, val_split=0.25)
    assert len(s.train) == 74 and len(s.val) == 26 and s.classes == ["face", "non_face"]


def test_transforms_shapes_and_seeded_augmentation(lfw):
    aug = AugmentConfig(hflip=0.5, color_jitter=0.3)
    s = build_datasets(str(lfw / "train"), str(lfw / "val"), lambda n: train_transform(n, [0.5] * 3, [0.5] * 3, aug),
                       lambda n: eval_transform(n, [0.5] * 3, [0.5] * 3), image_size=48)  # fmt: skip
    x, y = s.train[3]
    assert x.shape == (3, 48, 48) and y in (0, 1)
    assert (s.train[3][0] == x).all()  # same (seed, epoch, index) -> same augmentation
    s.train.set_epoch(1)
    assert not (s.train[3][0] == x).all()
    assert s.val[0][0].shape == (3, 48, 48)


def test_data_errors(tmp_path, lfw):
    with pytest.raises(FtlError, match=r"data.train_dir=.*nope: no such directory"):
        build_datasets(str(tmp_path / "nope"), None, None, None)
    with pytest.raises(FtlError, match=r"data.num_classes=3 but .* has 2 class folders"):
        build_datasets(str(lfw / "train"), str(lfw / "val"), None, None, num_classes=3)
    (tmp_path / "v" / "other").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "v" / "other" / "a.png")
    with pytest.raises(FtlError, match="differ from data.train_dir"):
        build_datasets(str(lfw / "train"), str(tmp_path / "v"), None, None)


def test_corrupt_image_is_named(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / c / "ok.png")
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    s = build_datasets(str(tmp_path), str(tmp_path), None, None)
    with pytest.raises(FtlError, match=r"cannot read image .*broken.png"):
        [s.train[i] for i in range(len(s.train))]


def test_a_dataset_root_where_a_class_root_belongs_is_refused_with_the_fix(lfw):
    """data.train_dir=ROOT holding train/ and val/: read as classes it trained a 2-class "train vs val" model."""
    from core import checks
    from core.data.beton import _source

    fix = rf"set data.train_dir={lfw}/train data.val_dir={lfw}/val"
    with pytest.raises(FtlError, match=rf"data.train_dir={lfw} holds the dataset's splits \(train/, val/\), not its classes: {fix}"):
        build_datasets(str(lfw), None, None, None)
    assert checks.path_problems({"data": {"train_dir": str(lfw), "val_dir": None}}) == [
        f"data.train_dir={lfw}: holds the dataset's splits (train/, val/), not its classes: {fix.replace(chr(92), '')}"]
    with pytest.raises(FtlError, match=rf"SRC={lfw} holds the dataset's splits .* give one split, e.g. {lfw}/train"):
        _source(str(lfw), "train", None)
    assert build_datasets(f"{lfw}/train", f"{lfw}/val", None, None).classes == ["face", "non_face"]  # class roots
