"""Shared fixtures: real bundled datasets prepared once per test session, in a temporary directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def lfw(tmp_path_factory) -> Path:
    """scikit-image's lfw_subset: 20 faces + 20 non-faces to train on, 100 to validate."""
    from core.data import bundled

    return bundled.prepare("lfw-subset", tmp_path_factory.mktemp("data") / "lfw", per_class=20)


@pytest.fixture(scope="session")
def fmnist(tmp_path_factory) -> Path:
    """Fashion-MNIST, first 30 train / 10 val images of each class (Debian's dataset-fashion-mnist)."""
    from core.data import bundled

    return bundled.prepare("fashion-mnist", tmp_path_factory.mktemp("data") / "fmnist", per_class=30, val_per_class=10)


def lfw_overrides(lfw: Path, **extra) -> list[str]:
    base = {"data.train_dir": lfw / "train", "data.val_dir": lfw / "val", "data.image_size": 64,
            "data.batch_size": 16, "data.num_workers": 0, "train.epochs": 2, "train.log_every_steps": 1}  # fmt: skip
    return [f"{k}={v}" for k, v in {**base, **extra}.items()]


def run_ftl(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `ftl` console script."""
    ftl = Path(sys.executable).parent / "ftl"
    return subprocess.run([str(ftl), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)  # fmt: skip
