"""Objectives for a search's `program: module:function` - a function of the trial's parameters instead of a
fine-tuning run. ftl's benchmarks and tests use these to measure the search machinery itself (utilisation,
overhead, faults) without training; a user can point `program` at their own function the same way.

A program gets (params: {key: value text}, run_dir, report(epoch, value) -> should_stop) and returns the metric
(None: it stopped early).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable


def quadratic(params: dict[str, Any], run_dir: Path, report: Callable[[int, float], bool]) -> float | None:
    """A smooth bowl over optim.lr (log scale, best at 1e-3) and optim.weight_decay (best at 0.05): maximised.
    `train.epochs` (default 3) epochs of `sleep_s` each (default 0), reported per epoch like a training run."""
    lr = float(params.get("optim.lr", 1e-3))
    wd = float(params.get("optim.weight_decay", 0.05))
    epochs = int(float(params.get("train.epochs", 3)))
    sleep_s = float(params.get("sleep_s", 0))
    score = 1.0 - (math.log10(lr) + 3) ** 2 / 4 - (wd - 0.05) ** 2 * 10
    for epoch in range(1, epochs + 1):
        time.sleep(sleep_s)
        if report(epoch, score * epoch / epochs):
            return None
    return score


def sleep(params: dict[str, Any], run_dir: Path, report: Callable[[int, float], bool]) -> float:
    """Sleeps `train.epochs` x 0.1 s (a trial of a chosen length) and returns a value that grows with the length;
    for utilisation measurements."""
    epochs = int(float(params.get("train.epochs", 1)))
    for epoch in range(1, epochs + 1):
        time.sleep(0.1)
        report(epoch, float(epoch))
    return float(epochs)


def die(params: dict[str, Any], run_dir: Path, report: Callable[[int, float], bool]) -> float:
    """Trial t00000 kills its own process (as an OOM kill, a segfault or an NCCL abort would): a poison trial;
    the others return a value."""
    import os
    import signal

    if run_dir.name == "t00000":
        os.kill(os.getpid(), signal.SIGKILL)
    return quadratic(params, run_dir, report) or 0.0


def hang(params: dict[str, Any], run_dir: Path, report: Callable[[int, float], bool]) -> float:
    """Never returns and ignores SIGTERM (a deadlocked data loader, a hung collective): only a kill ends it."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)


def nan(params: dict[str, Any], run_dir: Path, report: Callable[[int, float], bool]) -> float:
    """A metric that is not a number, as a diverged run reports: NaN, inf, -inf for trials 0, 1, 2 (and so on)."""
    return [float("nan"), float("inf"), float("-inf")][int(run_dir.name.lstrip("t") or 0) % 3]
