"""Adaptive search specs: what `method: tpe | gp | cmaes | qmc | random` sweeps ask Optuna for, from ftl's sweep
files or from W&B sweep files as they are.

ftl's form:                                    W&B's form (mapped, and the mapping said in one line):
    recipe: fine_tune                              method: bayes            -> tpe
    method: tpe                                    metric: {name: val_top1, goal: maximize}
    metric: {name: val_top1, goal: maximize}       parameters:
    n_trials: 24          # the budget               learning_rate: {distribution: log_uniform_values,
    max_parallel: 4       # worker slots                             min: 1e-4, max: 1e-2}   -> optim.lr
    seed: 0                                          epochs: {value: 3}                          -> train.epochs
    space:                                           batch_size: {values: [16, 32]}             -> data.batch_size
      optim.lr: {loguniform: [1e-4, 1e-2]}         early_terminate: {type: hyperband, min_iter: 1, eta: 3}
      finetune.strategy: {choice: [full, gradual]} run_cap: 24              -> n_trials
      finetune.unfreeze_every: {int: [1, 3], when: {finetune.strategy: gradual}}
      train.epochs: {int: [2, 6], q: 2}
    early_stop: {type: asha, min_epochs: 1, reduction_factor: 3}   # asha | hyperband | median

A W&B file is read by launcher/wandb_sweep.py into this form. The study lives in SWEEP_DIR/search/study.journal (Optuna's journal file storage: no server, works offline, safe
on a shared file system); workers (jobs/search_worker.py) ask, train, tell. Parameters are asked define-by-run, in
the order written, so a `when:` condition sees the values asked before it. A trial's proposal depends on the seed
and its number (the sampler is reseeded per trial), so the same file and seed propose the same first trials.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from core import config as config_lib
from core.config import format_value
from core.errors import FtlError, did_you_mean

METHODS = ("tpe", "gp", "cmaes", "qmc", "random")  # adaptive: asked one trial at a time by workers
WANDB_METHODS = {"bayes": "tpe", "random": "random", "grid": "grid"}
PRUNERS = ("asha", "hyperband", "median")
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
WANDB_KEYS = {"method", "metric", "parameters", "early_terminate", "run_cap", "name", "description", "program",
              "command", "project", "recipe", "overrides", "max_parallel", "seed", "n_trials", "max_attempts"}  # fmt: skip


def space_hash(space: dict[str, Any]) -> str:
    """What must not change when a search is extended or resumed."""
    return hashlib.sha1(json.dumps(space, sort_keys=True, default=str).encode()).hexdigest()[:12]


def parse_metric(spec: dict[str, Any], path: Path) -> tuple[str, str]:
    """(metric name, 'max' | 'min') from `metric: NAME` + `mode:`, or `metric: {name, goal}` as W&B writes it."""
    metric, mode = spec.get("metric", "val_top1"), spec.get("mode")
    if isinstance(metric, dict):
        unknown = set(metric) - {"name", "goal", "target"}
        if unknown or "name" not in metric:
            raise FtlError(f"{path}: metric must be a name or {{name: ..., goal: maximize|minimize}}, got {metric!r}")
        goal = metric.get("goal", "maximize")
        if goal not in ("maximize", "minimize"):
            raise FtlError(f"{path}: metric.goal={goal!r} must be maximize or minimize")
        metric, mode = metric["name"], "max" if goal == "maximize" else "min"
    mode = mode or "max"
    if mode not in ("max", "min"):
        raise FtlError(f"{path}: mode={mode!r} must be max or min")
    return str(metric), mode


def parse_search(spec: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str]]:
    """The search block stored in sweep.json, and notes to print (what was mapped from W&B's schema)."""
    notes: list[str] = []
    method = spec.get("method")
    if method not in METHODS:
        raise FtlError(f"{path}: method={method!r} is not a method{did_you_mean(str(method), [*METHODS, 'grid'])}; "
                       f"use grid, random (with a `random:` block or a `space:` and n_trials) or {', '.join(METHODS)}")  # fmt: skip
    space = spec.get("space")
    if not isinstance(space, dict) or not space:
        raise FtlError(f"{path}: method={method} needs a search `space:` mapping keys to distributions "
                       f"({', '.join(DISTRIBUTIONS)})")  # fmt: skip
    n_trials = spec.get("n_trials")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise FtlError(f"{path}: n_trials (the budget; W&B: run_cap) is required for method={method}: a positive "
                       f"integer, got {n_trials!r}")  # fmt: skip
    max_parallel = spec.get("max_parallel", 4)
    if not isinstance(max_parallel, int) or isinstance(max_parallel, bool) or max_parallel < 1:
        raise FtlError(f"{path}: max_parallel={max_parallel!r} must be an integer >= 1 (worker slots)")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise FtlError(f"{path}: seed={seed!r} must be an integer >= 0")
    for key, dist in space.items():
        check_distribution(key, dist, path, list(space))
    stale = spec.get("stale_after_s", 300)
    if not isinstance(stale, (int, float)) or stale < 5:
        raise FtlError(f"{path}: stale_after_s={stale!r} must be a number of seconds >= 5")
    program = spec.get("program")
    block = {"method": method, "space": space, "n_trials": n_trials, "max_parallel": min(max_parallel, n_trials),
             "seed": seed, "early_stop": parse_pruner(spec.get("early_stop"), path), "stale_after_s": stale,
             "program": program if isinstance(program, str) and ":" in program else None}  # fmt: skip
    block["space_hash"] = space_hash(space)
    return block, notes


def check_distribution(key: str, dist: Any, path: Path, keys: list[str]) -> None:
    """One parameter of the space: a schema key, a known distribution, a sane range, a `when:` on earlier keys."""
    if key not in config_lib.schema_keys():
        raise FtlError(f"{path}: space.{key} is not a config key{did_you_mean(key, config_lib.schema_keys())}")
    if not isinstance(dist, dict):
        raise FtlError(f"{path}: space.{key}={dist!r}: use {{choice: [...]}}, {{uniform: [lo, hi]}}, "
                       "{loguniform: [lo, hi]} or {int: [lo, hi]}")  # fmt: skip
    kinds = [k for k in dist if k in DISTRIBUTIONS]
    extra = set(dist) - set(DISTRIBUTIONS) - {"q", "when", "probabilities", "type"}
    if len(kinds) != 1 or extra:
        raise FtlError(f"{path}: space.{key}: one of {', '.join(DISTRIBUTIONS)} (plus q, when, probabilities, type), "
                       f"got {sorted(dist)}")  # fmt: skip
    kind, args = kinds[0], dist[kinds[0]]
    where = f"{path}: space.{key}"
    if dist.get("type") not in (None, "int", "float"):
        raise FtlError(f"{where}: type={dist['type']!r} must be int or float")
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise FtlError(f"{where}: choice needs a non-empty list of values")
        probs = dist.get("probabilities")
        if probs is not None and (not isinstance(probs, list) or len(probs) != len(args)
                                  or not all(_number(x) and x >= 0 for x in probs) or not math.isclose(sum(probs), 1.0, rel_tol=1e-5)):
            raise FtlError(f"{where}: probabilities must be one number >= 0 per choice, summing to 1")  # fmt: skip
    else:
        if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
            raise FtlError(f"{where}: {kind} needs [low, high], got {args!r}")
        lo, hi = args
        if lo > hi:
            raise FtlError(f"{where}: {kind} [{lo}, {hi}] has min > max")
        if kind == "loguniform" and lo <= 0:
            raise FtlError(f"{where}: loguniform needs 0 < low (a log range), got [{lo}, {hi}]")
        q = dist.get("q")
        if q is not None and (not _number(q) or q <= 0):
            raise FtlError(f"{where}: q={q!r} must be a step > 0")
    when = dist.get("when")
    if when is not None:
        if not isinstance(when, dict) or not when:
            raise FtlError(f"{where}: when must map earlier keys of the space to a value (or a list of values)")
        for other in when:
            if other not in keys[: keys.index(key)]:
                raise FtlError(f"{where}: when.{other} must be a key asked before {key} in the space")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_pruner(block: Any, path: Path) -> dict[str, Any] | None:
    """early_stop: {type: asha | hyperband | median, min_epochs (W&B: min_iter), reduction_factor (eta), max_epochs
    (max_iter)} -> the pruner's settings."""
    if block is None:
        return None
    if not isinstance(block, dict):
        raise FtlError(f"{path}: early_stop must be a mapping with a type ({', '.join(PRUNERS)})")
    names = {"min_iter": "min_epochs", "eta": "reduction_factor", "max_iter": "max_epochs"}
    block = {names.get(k, k): v for k, v in block.items()}
    kind = block.pop("type", "asha")
    if kind not in PRUNERS:
        raise FtlError(f"{path}: early_stop.type={kind!r} is not a pruner{did_you_mean(str(kind), PRUNERS)}; use "
                       f"{', '.join(PRUNERS)}")  # fmt: skip
    allowed = {"min_epochs", "reduction_factor", "max_epochs"}
    unknown = set(block) - allowed - {"s", "strict"}
    if unknown:
        key = sorted(unknown)[0]
        raise FtlError(f"{path}: early_stop.{key} is not a key{did_you_mean(key, sorted(allowed))}; use "
                       f"type and {', '.join(sorted(allowed))} (W&B: min_iter, eta, max_iter)")  # fmt: skip
    out = {"type": kind, "min_epochs": block.get("min_epochs", 1), "reduction_factor": block.get("reduction_factor", 3),
           "max_epochs": block.get("max_epochs")}  # fmt: skip
    for key, low in (("min_epochs", 1), ("reduction_factor", 2), ("max_epochs", 1)):
        value = out[key]
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise FtlError(f"{path}: early_stop.{key}={value!r} must be an integer >= {low}")
    return out


def checked_overrides(space: dict[str, Any]) -> list[list[str]]:
    """What a dry run checks before anything runs: 50 draws of the space as the workers ask them (its rounding, its
    types) and every parameter at each end - not only the ends of the ranges (jobs/study.py `draws`)."""
    from jobs.study import draws

    return draws(space, 50)
