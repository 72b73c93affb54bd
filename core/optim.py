"""Optimizers (timm's `create_optimizer_v2`) and per-update LR schedules (one-cycle, cosine, constant).

Schedules step once per optimizer update, so the learning rate is a function of the update count alone and a
resumed run continues on exactly the same curve.
"""

from __future__ import annotations

import torch
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn

from core.errors import FtlError, did_you_mean

ALIASES = {"ranger": "lookahead_radam"}  # Ranger = RAdam + Lookahead


def create_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """A timm optimizer over the trainable parameters; norms and biases get no weight decay."""
    opt = ALIASES.get(name.lower(), name.lower())
    base = opt.removeprefix("lookahead_")
    valid = list_optimizers()
    if base not in valid:
        raise FtlError(f"optim.name={name!r} is not a timm optimizer{did_you_mean(base, valid + list(ALIASES))}")
    if not any(p.requires_grad for p in model.parameters()):
        raise FtlError("every parameter is frozen: nothing to train (check model.freeze)")
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, momentum=momentum)


class UpdateSchedule:
    """An LR scheduler stepped once per optimizer update; torch and timm schedulers behind one `step()`."""

    def __init__(self, scheduler, timm_style: bool):
        self.scheduler = scheduler
        self.timm_style = timm_style
        self.updates = 0

    def step(self) -> None:
        self.updates += 1
        if self.timm_style:
            self.scheduler.step_update(self.updates)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return {"updates": self.updates, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.scheduler.load_state_dict(state["scheduler"])


def create_schedule(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_updates: int,
    updates_per_epoch: int,
    warmup_epochs: float = 0.0,
    pct_start: float = 0.25,
    min_lr: float = 1e-6,
) -> UpdateSchedule:
    """onecycle: torch OneCycleLR (fastai's shape: /25 warmup, cosine anneal, momentum cycled);
    cosine: timm's cosine with linear warmup; constant: the optimizer's lr throughout."""
    if name == "onecycle" and total_updates >= 3:
        # Keep both phases at least a step long: OneCycleLR divides by each phase's length.
        pct_start = min(max(pct_start, 1.5 / total_updates), 1 - 1.5 / total_updates)
        defaults = optimizer.defaults
        cycle_momentum = "betas" in defaults or defaults.get("momentum", 0) > 0
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_updates,
            pct_start=pct_start,
            div_factor=25.0,
            final_div_factor=1e5,
            cycle_momentum=cycle_momentum,
            base_momentum=0.85,
            max_momentum=0.95,
        )
        return UpdateSchedule(sched, timm_style=False)
    if name == "cosine":
        sched, _ = create_scheduler_v2(
            optimizer,
            sched="cosine",
            num_epochs=max(1, round(total_updates / max(updates_per_epoch, 1))),
            warmup_epochs=warmup_epochs,
            warmup_lr=min_lr,
            min_lr=min_lr,
            step_on_epochs=False,
            updates_per_epoch=max(updates_per_epoch, 1),
        )
        return UpdateSchedule(sched, timm_style=True)
    if name in ("constant", "onecycle"):  # onecycle over < 3 updates has no shape: constant
        return UpdateSchedule(torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), timm_style=False)
    raise FtlError(f"schedule.name={name!r}: use onecycle, cosine or constant")
