"""A run dir and what may happen to it - start a run, resume one, or refuse - decided before anything in it is
written.

    RUN_DIR/config.yaml          the resolved config (written once every check passed)
    RUN_DIR/metrics.jsonl        step and epoch records; progress.json, result.json
    RUN_DIR/checkpoints/step_*/  full training states (core/checkpoint.py)
    RUN_DIR/export/              best / last / ema weights + model.json

- A new run refuses a dir that already holds one (a config.yaml or a checkpoint): continuing it is `resume=DIR`.
- `resume=DIR` trains the run's own saved config. Overrides may change how it runs (workers, logging, checkpoint
  frequency, tracking) but not what it is (model, data, augmentation, optimizer, schedule, epochs, seed, ...)
  unless forced: a changed run would no longer be the run its checkpoints and metrics belong to.
- The checkpoint resumed is the newest complete one; one killed during its save (no trainer.json) is ignored. A
  complete one that fails its checksums stops the resume with one line naming the file and the previous
  checkpoint to resume from instead (`resume=DIR/checkpoints/step_N`). A run that never completed a checkpoint
  starts again from its beginning, with its saved config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core import config as config_lib
from core.checkpoint import checkpoint_problem
from core.errors import FtlError

# Keys a resume may change: how the run is executed and recorded, not what it trains.
RESUMABLE_CHANGES = ("resume", "name", "data.num_workers", "data.eval_batch_size", "data.ffcv_os_cache",
                     "train.checkpoint_every_steps", "train.keep_checkpoints", "train.log_every_steps",
                     "train.output_dir", "tracking.")  # fmt: skip


@dataclass
class RunPlan:
    """Where a fit() runs and from what: a new run, or a resume from `checkpoint` (None: from the beginning)."""

    run_dir: Path
    resuming: bool = False
    checkpoint: Path | None = None
    set_aside: list[Path] = field(default_factory=list)  # newer checkpoints, when resuming from an older one


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints whose save finished (trainer.json written last), oldest first. A checkpoint moved aside for a
    new save of the same step (`.old_step_N`: the save was killed before its rename) counts while no `step_N` is
    there: it is the newest complete one."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = {p.name: p for p in root.glob("step_*") if (p / "trainer.json").is_file()}
    for aside in root.glob(".old_step_*"):
        if (aside / "trainer.json").is_file():
            found.setdefault(aside.name.removeprefix(".old_"), aside)
    return [found[name] for name in sorted(found)]


def holds_run(run_dir: Path) -> bool:
    """A run started here: its config was written, or a checkpoint (even a half-written one) exists."""
    root = run_dir / "checkpoints"
    return (run_dir / "config.yaml").is_file() or (root.is_dir() and any(root.iterdir()))


def split_resume(resume: str | Path) -> tuple[Path, Path | None]:
    """resume=DIR or resume=DIR/checkpoints/step_N -> (run dir, the chosen checkpoint or None)."""
    path = Path(resume).expanduser()
    if path.parent.name == "checkpoints" and path.name.startswith("step_"):
        return path.parent.parent, path
    return path, None


def plan_run(resume: str | None, run_dir: str | Path | None, name: str, output_dir: str) -> RunPlan:
    """Decide where and from what a run starts; raise FtlError for every reason it cannot (nothing is written)."""
    if resume:
        return _plan_resume(resume, run_dir)
    path = Path(run_dir).expanduser() if run_dir else Path(output_dir) / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"
    if holds_run(path):
        raise FtlError(f"run dir {path} already holds a run; continue it with resume={path}, or pick another "
                       "--run-dir")  # fmt: skip
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FtlError(f"cannot write the run dir {path}: {parent} is not writable; set train.output_dir")
    return RunPlan(path)


def _plan_resume(resume: str, run_dir: str | Path | None) -> RunPlan:
    path, chosen = split_resume(resume)
    if run_dir is not None and Path(run_dir).expanduser().resolve() != path.resolve():
        raise FtlError(f"resume={resume} and --run-dir {run_dir} name different runs; give only resume=")
    if not path.is_dir():
        raise FtlError(f"resume={resume}: no such run dir")
    if not holds_run(path):
        raise FtlError(f"resume={resume}: {path} holds no run (no config.yaml, no checkpoint)")
    done = complete_checkpoints(path)
    if chosen is not None:
        if chosen not in done:
            names = ", ".join(p.name for p in done) or "none"
            raise FtlError(f"resume={resume}: no complete checkpoint {chosen.name} (complete: {names})")
        problem = checkpoint_problem(chosen)
        if problem:
            raise FtlError(f"resume={resume}: checkpoint {chosen.name} is damaged: {problem}")
        return RunPlan(path, True, chosen, [p for p in done if p.name > chosen.name])
    if not done:
        return RunPlan(path, True, None)  # killed before its first checkpoint: start again
    problem = checkpoint_problem(done[-1])
    if problem:
        earlier = f"resume from the previous one with resume={done[-2]}" if len(done) > 1 else "no earlier checkpoint is kept"
        raise FtlError(f"resume={path}: checkpoint {done[-1].name} is damaged ({problem}); {earlier}, or delete "
                       f"{done[-1]} to start from the one before it")  # fmt: skip
    return RunPlan(path, True, done[-1])


def _flat(cfg: DictConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix.rstrip(".")] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def changed_keys(saved: DictConfig, requested: DictConfig) -> list[str]:
    """Keys whose value differs between a run's saved config and the one requested, except RESUMABLE_CHANGES."""
    a, b = _flat(saved), _flat(requested)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not k.startswith(RESUMABLE_CHANGES))


def resume_config(resume: str, recipe: str | None, overrides: list[str], force: bool = False) -> DictConfig:
    """The config a `resume=DIR` trains with: the run's saved config plus the overrides (or, when a recipe is
    given, that recipe with the overrides), refused if it changes what the run is - unless force."""
    path, _ = split_resume(resume)
    saved_path = path / "config.yaml"
    if not saved_path.is_file():
        if recipe is None:
            raise FtlError(f"resume={resume}: {saved_path} is missing; give the recipe the run was started with")
        return config_lib.load(recipe, overrides)
    saved = config_lib.from_yaml(saved_path)
    if recipe is None:
        requested = config_lib.build([OmegaConf.to_container(saved), config_lib.parse_overrides(overrides)],  # type: ignore[list-item]
                                     source=f"{saved_path} + overrides")  # fmt: skip
    else:
        requested = config_lib.load(recipe, overrides)
    requested.resume = str(resume)
    changed = changed_keys(saved, requested)
    if changed and not force:
        a, b = _flat(saved), _flat(requested)
        shown = "; ".join(f"{k}: {a.get(k)!r} in the run, {b.get(k)!r} now" for k in changed[:4])
        more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
        fix = ("drop those overrides" if recipe is None else
               "resume with the run's own config (`ftl train resume=DIR`, without a recipe)")  # fmt: skip
        raise FtlError(f"resume={resume} would change what the run is: {shown}{more}; {fix}, or add --force")
    return requested
