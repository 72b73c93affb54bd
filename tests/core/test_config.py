"""Recipe loading, overrides and the errors a user sees for bad keys, types and values."""

import pytest

from core import config
from core.errors import FtlError


def test_every_shipped_recipe_validates():
    names = sorted(p.stem for p in config.RECIPES_DIR.glob("*.yaml"))
    assert "demo" in names and "base" in names
    for name in names:
        cfg = config.load(name, ["data.train_dir=/tmp"])
        assert cfg.model.name


def test_overrides_are_typed_and_nested():
    cfg = config.load("base", ["data.train_dir=/tmp", "optim.lr=3e-4", "augment.scale=[0.5,1.0]", "train.epochs=7"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.train.epochs == 7 and list(cfg.augment.scale) == [0.5, 1.0]


def test_base_recipe_inheritance(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: demo\ntrain:\n  epochs: 9\n")
    cfg = config.load(child)
    assert cfg.train.epochs == 9 and cfg.name == "demo-fmnist" and cfg.data.image_size == 64


def test_a_base_is_found_next_to_its_recipe_from_any_directory(tmp_path, monkeypatch):
    """`base: parent.yaml` (or `base: parent`) beside the recipe: it was looked up in the working directory only."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "parent.yaml").write_text("base: demo\ntrain:\n  epochs: 4\n")
    (tmp_path / "mine" / "child.yaml").write_text("base: parent.yaml\noptim:\n  lr: 0.002\n")
    (tmp_path / "mine" / "bare.yaml").write_text("base: parent\n")
    monkeypatch.chdir(tmp_path)
    cfg = config.load(tmp_path / "mine" / "child.yaml")
    assert cfg.train.epochs == 4 and cfg.optim.lr == 0.002 and cfg.name == "demo-fmnist"
    assert config.load("mine/bare.yaml").train.epochs == 4


def test_unknown_key_suggests_closest():
    with pytest.raises(FtlError, match=r"unknown key 'optim.learning_rat'|unknown key 'optim.lrr'.*optim.lr"):
        config.load("base", ["optim.lrr=1"])


def test_unknown_key_in_recipe_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nmae: resnet18\n")
    with pytest.raises(FtlError, match=r"bad.yaml: unknown key 'model.nmae' \(did you mean: model.name"):
        config.load(bad)


def test_bad_type_names_key_and_value():
    with pytest.raises(FtlError, match=r"train.epochs.*abc"):
        config.load("base", ["data.train_dir=/tmp", "train.epochs=abc"])


def test_bad_choice_lists_allowed():
    with pytest.raises(FtlError, match=r"command line: train.precision='fp8' is not one of: auto, no, bf16, fp16"):
        config.load("base", ["data.train_dir=/tmp", "train.precision=fp8"])


def test_missing_required_and_ranges_reported_together():
    with pytest.raises(FtlError) as e:
        config.load("base", ["augment.hflip=2", "optim.lr=-1"])
    msg = str(e.value)
    assert "data.train_dir is required" in msg and "augment.hflip=2" in msg and "optim.lr=-1" in msg


def test_override_syntax_error():
    with pytest.raises(FtlError, match="not of the form key=value"):
        config.load("base", ["optim.lr"])


def test_unknown_recipe_suggests():
    with pytest.raises(FtlError, match="did you mean: demo"):
        config.load("demoo")


def test_save_and_reload_roundtrip(tmp_path):
    cfg = config.load("demo", ["optim.lr=0.01"])
    config.save(cfg, tmp_path / "config.yaml")
    assert config.from_yaml(tmp_path / "config.yaml") == cfg
