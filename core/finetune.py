"""Fine-tune phases: which stages train in which epoch (linear probe, full, freeze-then-unfreeze, gradual).

Stages come from timm's `group_matcher(coarse=True)`, so this works for any timm model: stage 0 is the stem,
the last stage holds the classifier head. A plan is a pure function of the epoch; the engine applies it at each
epoch start (and so after a resume) by switching `requires_grad`, and each phase gets its own LR cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.models import group_parameters
from torch import nn

from core.errors import FtlError

STRATEGIES = ("full", "linear-probe", "freeze-then-unfreeze", "gradual")


def stage_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names per coarse stage, from the input side to the head."""
    groups = group_parameters(model, model.group_matcher(coarse=True))
    return [list(names) for _, names in sorted(groups.items())]


@dataclass(frozen=True)
class Phase:
    start_epoch: int
    end_epoch: int  # exclusive
    first_trainable_stage: int  # stages from this index to the head train

    @property
    def epochs(self) -> int:
        return self.end_epoch - self.start_epoch


def plan_phases(strategy: str, epochs: int, n_stages: int, freeze_epochs: int = 1, unfreeze_every: int = 1) -> list[Phase]:
    """The phases of a run. gradual: head alone first, then one more stage every `unfreeze_every` epochs."""
    head = n_stages - 1
    if strategy == "full":
        return [Phase(0, epochs, 0)]
    if strategy == "linear-probe":
        return [Phase(0, epochs, head)]
    if strategy == "freeze-then-unfreeze":
        if freeze_epochs >= epochs:
            raise FtlError(
                f"finetune.freeze_epochs={freeze_epochs} leaves no unfrozen epoch in train.epochs={epochs}; "
                "lower freeze_epochs or use finetune.strategy=linear-probe"
            )
        return [Phase(0, freeze_epochs, head), Phase(freeze_epochs, epochs, 0)]
    if strategy == "gradual":
        phases, stage, start = [], head, 0
        while start < epochs:
            end = epochs if stage == 0 else min(epochs, start + unfreeze_every)
            phases.append(Phase(start, end, stage))
            start, stage = end, max(stage - 1, 0)
        return phases
    raise FtlError(f"finetune.strategy={strategy!r}: use one of {', '.join(STRATEGIES)}")


def phase_at(phases: list[Phase], epoch: int) -> int:
    return next(i for i, p in enumerate(phases) if p.start_epoch <= epoch < p.end_epoch)


def apply_phase(model: nn.Module, stages: list[list[str]], phase: Phase, always_frozen: set[str], train_bn: bool) -> None:
    """requires_grad for a phase: stages before `first_trainable_stage` are frozen (BatchNorm kept if train_bn)."""
    params = dict(model.named_parameters())
    bn_names = {f"{m_name}.{p_name}" if m_name else p_name for m_name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._NormBase) for p_name, _ in m.named_parameters(recurse=False)}  # fmt: skip
    for index, names in enumerate(stages):
        for name in names:
            trainable = index >= phase.first_trainable_stage or (train_bn and name in bn_names)
            params[name].requires_grad_(trainable and name not in always_frozen)
