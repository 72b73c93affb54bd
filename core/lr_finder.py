"""The LR range test (fastai's `lr_find`): raise the LR exponentially over a few hundred updates, record the
smoothed loss, stop when it diverges, and suggest an LR (valley by default; minimum/10 and steepest too).

`lr_range_test` restores the model and optimizer exactly as they were. `suggest` is a pure function of the curve.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
import math
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


def suggest(lrs: list[float], losses: list[float]) -> dict[str, float]:
    """valley: the middle of the longest stretch of falling loss (fastai's default); minimum: the LR of the lowest
    loss / 10; steepest: where the loss falls fastest against log LR."""
    n = len(losses)
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


def lr_range_test(
    accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    loss_fn,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    diverge_factor: float = 4.0,
    beta: float = 0.98,
    forward: Callable | None = None,
) -> LRFindResult:
    """Run the test; every group's LR is scaled by its `ftl_lr_scale`, so discriminative ratios are kept. `model`'s
    weights are restored after; `forward` (default: model) computes the outputs, e.g. its torch.compile'd form."""
    forward = model if forward is None else forward
    model_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    rng_state = torch.get_rng_state()
    lrs, losses, avg, best, diverged = [], [], 0.0, math.inf, False
    model.train()
    batches = iter(loader)
    try:
        for step in range(num_steps):
            lr = start_lr * (end_lr / start_lr) ** (step / max(num_steps - 1, 1))
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("ftl_lr_scale", 1.0)
            try:
                images, targets = next(batches)
            except StopIteration:
                batches = iter(loader)
                images, targets = next(batches)
            loss = loss_fn(forward(images), targets)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            value = accelerator.reduce(loss.detach(), "mean").item()
            avg = beta * avg + (1 - beta) * value
            smoothed = avg / (1 - beta ** (step + 1))
            if not math.isfinite(smoothed) or (step > 0 and smoothed > diverge_factor * best):
                diverged = True
                break
            best = min(best, smoothed)
            lrs.append(lr)
            losses.append(smoothed)
    finally:
        accelerator.unwrap_model(model).load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        torch.set_rng_state(rng_state)
    return LRFindResult(lrs, losses, diverged, suggest(lrs, losses))


def choose(result: LRFindResult, which: str = "valley") -> float:
    """The suggested LR, or an FtlError when the curve gives none."""
    if which not in result.suggestions:
        raise FtlError(
            f"optim.lr=auto: the LR finder {'diverged' if result.diverged else 'stopped'} after "
            f"{len(result.lrs)} steps and gives no '{which}' suggestion; set optim.lr to a number "
            "(or lower lr_find.start_lr)"
        )
    return result.suggestions[which]


def save(result: LRFindResult, out_dir: Path, mark: str = "valley") -> tuple[Path, Path]:
    """Write lr_find.json and lr_find.png (loss against log LR, suggestions marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out_dir / "lr_find.json", out_dir / "lr_find.png"
    write_json_atomic(json_path, asdict(result))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    for name, lr in result.suggestions.items():
        y = result.losses[min(range(len(result.lrs)), key=lambda i: abs(result.lrs[i] - lr))]
        ax.plot([lr], [y], "o" if name == mark else "x", label=f"{name}: {lr:.2e}", markersize=8 if name == mark else 6)
    ax.legend()
    ax.set_title("LR range test" + (" (stopped on divergence)" if result.diverged else ""))
    fig.tight_layout()
    write_atomic(png_path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return json_path, png_path
