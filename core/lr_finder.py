"""The LR range test (fastai's `lr_find`): raise the LR exponentially over a few hundred updates, record the
smoothed loss, stop when it diverges, and suggest an LR (valley by default; minimum/10 and steepest too).

`lr_range_test` trains like the run does (same loss, same gradient accumulation: one point per optimizer update)
on one stream of batches (the caller's single iterator), and restores the model and optimizer exactly as they
were. `suggest` is a pure function of the curve and only looks at the curve up to its lowest point: what comes
after is the divergence.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.errors import FtlError
from core.fileio import write_atomic, write_json_atomic


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed (debiased exponential moving average)
    diverged: bool
    suggestions: dict[str, float] = field(default_factory=dict)
    batch_size: int = 0  # images per micro-batch the test saw (per process)


def usable(losses: list[float]) -> int:
    """How many points of the curve come before divergence: up to and including the lowest loss."""
    return min(range(len(losses)), key=losses.__getitem__) + 1 if losses else 0


def suggest(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """valley: the middle of the longest stretch of falling loss (fastai's default); minimum: the LR of the lowest
    loss / 10; steepest: where the loss falls fastest against log LR. Only the points up to the lowest loss count
    (past it the loss is rising: divergence), so no suggestion comes from the divergent part of the curve."""
    n = usable(losses)
    lrs, losses = lrs[:n], losses[:n]
    if n < 5:
        return {}
    # valley: longest decreasing subsequence ending at each point, O(n^2) for a few hundred points
    lds, best_end, best_start = [1] * n, 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[i] > lds[best_end]:
            best_end, best_start = i, i - lds[i]
    third = (best_end - best_start) / 3
    valley = lrs[min(n - 1, best_start + int(third) + int(third / 2))]
    minimum = lrs[min(range(n), key=losses.__getitem__)] / 10
    logs = [math.log10(x) for x in lrs]
    skip = max(1, n // 10)  # the first points carry the moving average's warm-up noise
    slopes = {i: (losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(skip, n - 1)}
    steepest = lrs[min(slopes, key=slopes.__getitem__)]
    return {"valley": valley, "minimum": minimum, "steepest": steepest}


SHORT_RUN = 1000  # optimizer updates: a shorter run gets the short range test


def range_test_shape(num_steps: int | None, batch_size: int | None, start_lr: float | None, run_updates: int,
                     run_batch: int) -> tuple[int, int, float]:  # fmt: skip
    """The range test's (steps, images per step, start LR): what lr_find sets, else by the run's length. A run of
    SHORT_RUN updates or more gets fastai's test, 100 steps at the run's batch from 1e-7: at most a tenth of the
    run. A shorter one gets 40 steps of at most 32 images from 1e-5 (no fine-tune LR lies below it): fastai's
    test on a 300-image task is 20 passes over the data and cost 3-5x the whole run; the short one's picks
    matched it within the seed spread, where 16 images a step picked 2x lower and 25 steps of 64 were coarser for
    more cost (docs/transfer.md)."""
    short = run_updates < SHORT_RUN
    return (num_steps or (40 if short else 100), batch_size or (min(run_batch, 32) if short else run_batch),
            start_lr or (1e-5 if short else 1e-7))  # fmt: skip


def lr_range_test(
    accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    loss_fn,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    diverge_factor: float = 4.0,
    beta: float | None = None,
    forward: Callable | None = None,
    accum_steps: int = 1,
    progress: bool | None = None,
    prepare: Callable | None = None,
) -> LRFindResult:
    """Run the test over `batches`: one iterator of at least num_steps x accum_steps (images, targets) batches
    (what the engine gives: one stream for the whole test), or a re-iterable loader, passed through again when it
    ends. Each point is one optimizer update over accum_steps micro-batches, as in training. Every group's LR is
    scaled by its `ftl_lr_scale`, so discriminative ratios are kept. `model`'s weights, the optimizer and the RNG are
    restored after; `forward` (default: model) computes the outputs, e.g. its torch.compile'd form; `prepare`
    (images, targets) -> (images, targets) runs on each batch first (device placement, channels_last). A tqdm bar
    shows on a terminal (progress=None: when stderr is a TTY, main process only). The loss is smoothed by a
    debiased moving average whose memory scales with the test: beta None is 1 - 2 / num_steps within [0.8, 0.98]
    (fastai's 0.98 at its 100 steps), so a short test's curve does not lag its LR by most of its length."""
    from tqdm import tqdm

    forward = model if forward is None else forward
    beta = min(0.98, max(0.8, 1 - 2 / num_steps)) if beta is None else beta
    if not isinstance(batches, Iterator):
        batches = _cycle(batches)
    model_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    rng_state = torch.get_rng_state()
    lrs, losses, avg, best, diverged, seen = [], [], 0.0, math.inf, False, 0
    model.train()
    show = (sys.stderr.isatty() and accelerator.is_main_process) if progress is None else progress
    bar = tqdm(total=num_steps, desc="ftl lr-find", unit="step", leave=False, disable=not show)
    try:
        for step in range(num_steps):
            lr = start_lr * (end_lr / start_lr) ** (step / max(num_steps - 1, 1))
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("ftl_lr_scale", 1.0)
            total = 0.0
            for micro in range(accum_steps):
                try:
                    images, targets = next(batches)
                except StopIteration:
                    raise ValueError(f"lr_range_test: the batch stream ended at step {step} of {num_steps}") from None
                if prepare is not None:
                    images, targets = prepare(images, targets)
                seen = seen or len(images)
                # gradients sync across processes only on the last micro-batch, as in training
                with accelerator.no_sync(model) if micro < accum_steps - 1 else contextlib.nullcontext():
                    loss = loss_fn(forward(images), targets)
                    accelerator.backward(loss / accum_steps)
                total += loss.detach() / accum_steps
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = accelerator.reduce(total, "mean").item()
            bar.update(1)
            avg = beta * avg + (1 - beta) * value
            smoothed = avg / (1 - beta ** (step + 1))
            if not math.isfinite(smoothed) or (step > 0 and smoothed > diverge_factor * best):
                diverged = True
                break
            best = min(best, smoothed)
            lrs.append(lr)
            losses.append(smoothed)
    finally:
        bar.close()
        accelerator.unwrap_model(model).load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        torch.set_rng_state(rng_state)
    return LRFindResult(lrs, losses, diverged, suggest(lrs, losses), seen)


def _cycle(loader: Iterable) -> Iterator:
    while True:
        yield from loader


def choose(result: LRFindResult, which: str = "valley", fallback: float | None = None) -> float:
    """The suggested LR; when the curve gives none, `fallback` if given, else an FtlError. (A later phase's test on
    a model that already fits its data can see the loss rise from the first points: nothing before divergence.)"""
    if which not in result.suggestions:
        if fallback is not None:
            return fallback
        raise FtlError(
            f"optim.lr=auto: the LR finder {'diverged' if result.diverged else 'stopped'} after "
            f"{len(result.lrs)} steps and gives no '{which}' suggestion; set optim.lr to a number "
            "(or lower lr_find.start_lr)"
        )
    return result.suggestions[which]


def save(result: LRFindResult, out_dir: Path, mark: str = "valley", stem: str = "lr_find",
         title: str = "LR range test") -> tuple[Path, Path]:  # fmt: skip
    """Write <stem>.json and <stem>.png (loss against log LR, suggestions marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    write_json_atomic(json_path, asdict(result))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses)
    ax.set_xscale("log")
    if result.losses:
        ax.set_ylim(*y_range(result.losses))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    for name, lr in result.suggestions.items():
        y = result.losses[min(range(len(result.lrs)), key=lambda i: abs(result.lrs[i] - lr))]
        ax.plot([lr], [y], "o" if name == mark else "x", label=f"{name}: {lr:.2e}", markersize=8 if name == mark else 6)
    if result.suggestions:
        ax.legend()
    ax.set_title(title + (" (stopped on divergence)" if result.diverged else ""))
    fig.tight_layout()
    write_atomic(png_path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return json_path, png_path


def y_range(losses: list[float]) -> tuple[float, float]:
    """The plot's loss axis: from a little below the lowest loss to a little above the starting loss, so the
    divergent tail (up to diverge_factor x the best) does not squash the part that matters."""
    low, top = min(losses), max(losses[: max(1, len(losses) // 10)])
    top = max(top, low + 1e-3)
    pad = 0.05 * (top - low)
    return low - pad, top + pad
