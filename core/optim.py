"""Optimizers with discriminative learning rates, and per-update LR schedules with one cycle per fine-tune phase.

- Parameter groups: timm's `create_optimizer_v2` (no weight decay on norms and biases, `layer_decay`), or
  fastai-style spread: the peak LR on the head stage, peak / lr_spread on the stem, geometric in between.
  Each group carries `ftl_lr_scale`; its LR is always peak * scale.
- Schedules step once per optimizer update (one-cycle: torch OneCycleLR; cosine: timm), restarted at each phase;
  their whole state is the update count, so a resumed run replays to exactly the same LR and momentum.
"""

from __future__ import annotations

import warnings

import torch
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn

from core.errors import FtlError, did_you_mean

ALIASES = {"ranger": "lookahead_radam"}  # Ranger = RAdam + Lookahead


def optimizer_name(name: str) -> str:
    opt = ALIASES.get(name.lower(), name.lower())
    base = opt.removeprefix("lookahead_")
    valid = list_optimizers()
    if base not in valid:
        raise FtlError(f"optim.name={name!r} is not a timm optimizer{did_you_mean(base, valid + list(ALIASES))}")
    return opt


def spread_param_groups(
    stages: list[list[str]], model: nn.Module, lr_spread: float, weight_decay: float, no_decay_norm_bias: bool
) -> list[dict]:
    """One or two groups per stage (decay / no decay), LR scale spread geometrically from 1/lr_spread to 1."""
    params = dict(model.named_parameters())
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    n = len(stages)
    groups = []
    for i, names in enumerate(stages):
        scale = lr_spread ** (-(n - 1 - i) / max(n - 1, 1))
        live = [nm for nm in names if params[nm].requires_grad]
        no_decay = [nm for nm in live if no_decay_norm_bias and (params[nm].ndim <= 1 or nm in skip)]
        decay = [nm for nm in live if nm not in no_decay]
        for subset, wd in ((decay, weight_decay), (no_decay, 0.0)):
            if subset:
                groups.append({"params": [params[nm] for nm in subset], "weight_decay": wd, "ftl_lr_scale": scale,
                               "ftl_names": subset, "ftl_stage": i})  # fmt: skip
    return groups


def create_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    stages: list[list[str]] | None = None,
    lr_spread: float = 1.0,
    layer_decay: float | None = None,
    no_decay_norm_bias: bool = True,
) -> torch.optim.Optimizer:
    """A timm optimizer over the trainable parameters (phase-frozen ones included: they simply get no grads)."""
    opt = optimizer_name(name)
    if not any(p.requires_grad for p in model.parameters()):
        raise FtlError("every parameter is frozen: nothing to train (check model.freeze)")
    if lr_spread > 1 and layer_decay:
        raise FtlError("optim.lr_spread and optim.layer_decay both set: choose one way of spreading the LR")
    if lr_spread > 1:
        if stages is None:
            raise ValueError("lr_spread needs the model's stages")
        groups = spread_param_groups(stages, model, lr_spread, weight_decay, no_decay_norm_bias)
        optimizer = create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum)
    else:
        optimizer = create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                        layer_decay=layer_decay, filter_bias_and_bn=no_decay_norm_bias)  # fmt: skip
    for group in optimizer.param_groups:
        # timm schedulers multiply by 'lr_scale' themselves; ftl applies the scale once, under its own key
        group["ftl_lr_scale"] = group.pop("lr_scale", group.get("ftl_lr_scale", 1.0))
    set_peak_lr(optimizer, lr)
    return optimizer


def set_peak_lr(optimizer: torch.optim.Optimizer, peak: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = peak * group["ftl_lr_scale"]


def param_group_table(optimizer: torch.optim.Optimizer, named: dict[int, str]) -> str:
    """A table of the optimizer's groups: layers, peak lr, weight decay and parameter count."""
    rows = [f"{'group':>5}  {'layers':<44} {'peak lr':>9} {'wd':>7} {'params':>10}"]
    for i, g in enumerate(optimizer.param_groups):
        names = g.get("ftl_names") or [named.get(id(p), "?") for p in g["params"]]
        span = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
        span = span if len(span) <= 44 else span[:41] + "..."
        count = sum(p.numel() for p in g["params"])
        peak = g.get("max_lr") or g.get("initial_lr") or g["lr"]  # one-cycle's initial_lr is its start (peak / 25)
        rows.append(f"{i:>5}  {span:<44} {peak:>9.2e} {g['weight_decay']:>7.3g} {count:>10,}")
    return "\n".join(rows)


def create_schedule(optimizer, name: str, total_updates: int, updates_per_epoch: int, warmup_epochs: float = 0.0,
                    pct_start: float = 0.25, min_lr: float = 1e-6):  # fmt: skip
    """One LR cycle over total_updates from each group's current lr as its peak:
    onecycle: torch OneCycleLR (fastai's shape: /25 warmup, cosine anneal to /1e5, momentum cycled);
    cosine: timm's cosine with linear warmup; constant: the peak throughout."""
    peaks = [g["lr"] for g in optimizer.param_groups]
    if name == "onecycle" and total_updates >= 3:
        # Keep both phases at least a step long: OneCycleLR divides by each phase's length.
        pct_start = min(max(pct_start, 1.5 / total_updates), 1 - 1.5 / total_updates)
        defaults = optimizer.defaults
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peaks, total_steps=total_updates, pct_start=pct_start, div_factor=25.0,
            final_div_factor=1e5, cycle_momentum="betas" in defaults or defaults.get("momentum", 0) > 0,
            base_momentum=0.85, max_momentum=0.95,
        )  # fmt: skip
    if name == "cosine":
        sched, _ = create_scheduler_v2(
            optimizer, sched="cosine", num_epochs=max(1, round(total_updates / max(updates_per_epoch, 1))),
            warmup_epochs=warmup_epochs, warmup_lr=min_lr, min_lr=min_lr, step_on_epochs=False,
            updates_per_epoch=max(updates_per_epoch, 1),
        )  # fmt: skip
        return sched
    if name in ("constant", "onecycle"):  # onecycle over < 3 updates has no shape: constant
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise FtlError(f"schedule.name={name!r}: use onecycle, cosine or constant")


class PhasedSchedule:
    """One schedule cycle per fine-tune phase, stepped once per optimizer update. `peaks` is each phase's peak LR
    (one number: every phase's); a phase whose peak is None (optim.lr=auto, found when the phase starts) gets it
    through `set_peak` before its first update."""

    def __init__(self, optimizer, name: str, peaks: float | list[float | None], phase_updates: list[int],
                 updates_per_epoch: int, warmup_epochs: float = 0.0, pct_start: float = 0.25,
                 min_lr: float = 1e-6):  # fmt: skip
        self.optimizer = optimizer
        self.peaks = list(peaks) if isinstance(peaks, list) else [peaks] * len(phase_updates)
        self.phase_updates = phase_updates
        self.kwargs = {"name": name, "updates_per_epoch": updates_per_epoch, "warmup_epochs": warmup_epochs,
                       "pct_start": pct_start, "min_lr": min_lr}  # fmt: skip
        self.updates = 0
        self._start(0)

    def _start(self, phase: int) -> None:
        while not self.phase_updates[phase] and phase + 1 < len(self.phase_updates):
            phase += 1  # an empty phase (finetune.freeze_epochs=0) has no update to schedule
        self.phase, self.in_phase, self.scheduler = phase, 0, None
        if self.peaks[phase] is not None:
            set_peak_lr(self.optimizer, self.peaks[phase])
            self.scheduler = create_schedule(self.optimizer, total_updates=self.phase_updates[phase], **self.kwargs)

    def set_peak(self, phase: int, peak: float) -> None:
        """A phase's peak LR once known; the current phase starts its cycle with it (before its first update)."""
        self.peaks[phase] = peak
        if phase == self.phase and self.in_phase == 0:
            self._start(phase)

    def step(self) -> None:
        if self.scheduler is None:
            raise RuntimeError(f"PhasedSchedule: phase {self.phase} has no peak LR yet (set_peak first)")
        self.updates += 1
        self.in_phase += 1
        if hasattr(self.scheduler, "step_update"):
            self.scheduler.step_update(self.in_phase)  # timm: LR as a function of the update count
        else:
            self.scheduler.step()
        if self.in_phase >= self.phase_updates[self.phase] and self.phase + 1 < len(self.phase_updates):
            self._start(self.phase + 1)

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self._start(0)
        self.updates = 0
        with warnings.catch_warnings():  # torch warns that the optimizer has not stepped yet in this process
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(state["updates"]):  # replay: exact, and cheap next to one training step
                self.step()
