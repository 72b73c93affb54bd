"""W&B sweep files read with W&B's meaning - the rules of its sweeps controller (github.com/wandb/sweeps: the
parameter schema, `params.py`'s samplers, `hyperband_stopping.py`) - in ftl's terms, every mapping said once.

    distribution (inferred as W&B does when absent)      ftl space entry            values
    value                        constant                fixed override             as written
    values                       categorical             choice                     an element
    values + probabilities       categorical_w_prob.     choice + probabilities     drawn with those weights
    min, max both integers       int_uniform             int [min, max]             int, max included
    min, max (a float)           uniform                 uniform                    float
    q_uniform (q, default 1.0)   quantised uniform       on multiples of q          int when q is an int
    log_uniform_values           log-uniform             loguniform [min, max]      float
    q_log_uniform_values         quantised log-uniform   loguniform + q             rounded to q; int when q is
    log_uniform / q_log_uniform  W&B v1: min/max are natural-log exponents: [e^min, e^max]
    inv_log_uniform(_values)     1/x log-uniform: [e^-max, e^-min] (v1), [min, max] (values: the same draw)
    normal, log_normal, beta and their q_ forms: refused (unbounded: no Optuna sampler); say what to write

Also: `metric.goal` absent means minimize (W&B's default); `early_terminate` hyperband stops at W&B's bands
(`min_iter` x eta^k, or max_iter / eta^k for k <= s) - successive halving at those epochs; `run_cap` is the
budget (a grid: its first run_cap combinations), and without it a random or bayes sweep is refused (W&B would
run forever); `entity` / `project` become tracking.entity / tracking.project; `program` / `command` are noted and
ftl trains its recipe instead. Anything W&B itself rejects is refused with W&B's reason.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from core.errors import FtlError
from launcher import key_names

WANDB_KEYS = {"method", "metric", "parameters", "early_terminate", "run_cap", "name", "description", "program",
              "command", "entity", "project", "controller", "apiVersion", "kind", "job", "image_uri", "metrics",
              "scheduler"}  # fmt: skip
FTL_KEYS = {"recipe", "overrides", "max_parallel", "seed", "n_trials", "max_attempts", "stale_after_s"}
PARAM_KEYS = {"distribution", "min", "max", "q", "mu", "sigma", "a", "b", "values", "value", "probabilities",
              "parameters"}  # fmt: skip
UNBOUNDED = ("normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta")
METHODS = {"bayes": "tpe", "random": "random", "grid": "grid"}
SECTIONS = {"optimizer": "optim", "optim": "optim", "opt": "optim", "model": "model", "net": "model",
            "network": "model", "data": "data", "dataset": "data", "train": "train", "training": "train",
            "trainer": "train", "scheduler": "schedule", "schedule": "schedule", "sched": "schedule",
            "lr_scheduler": "schedule", "augment": "augment", "augmentation": "augment", "aug": "augment",
            "finetune": "finetune", "fine_tune": "finetune", "loss": "loss", "tracking": "tracking"}  # fmt: skip
# What W&B users call their metrics -> what ftl logs
METRIC_NAMES = {"val_acc": "val_top1", "val_accuracy": "val_top1", "valid_acc": "val_top1", "accuracy": "val_top1",
                "acc": "val_top1", "top1": "val_top1", "val/acc": "val_top1", "val/accuracy": "val_top1",
                "val/top1": "val_top1", "acc1": "val_top1", "val_acc1": "val_top1", "val_loss": "val_loss",
                "valid_loss": "val_loss", "val/loss": "val_loss", "validation_loss": "val_loss",
                "top5": "val_top5", "val_acc5": "val_top5", "acc5": "val_top5"}  # fmt: skip


def is_wandb(spec: dict[str, Any]) -> bool:
    return "parameters" in spec


def read(spec: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str]]:
    """A W&B sweep file as ftl's sweep spec (a grid, or a search with a space), and the notes of how it was read."""
    notes: list[str] = []
    _check_top_level(spec, path, notes)
    method = "bayes" if spec["method"] == "ax" else spec["method"]
    out: dict[str, Any] = {k: v for k, v in spec.items() if k in FTL_KEYS}
    out["overrides"] = [str(o) for o in out.get("overrides") or []]
    if "name" in spec:
        out["name"] = spec["name"]
    metric, mode = _metric(spec, path, method, notes)
    out["metric"], out["mode"] = metric, mode
    for key, target in (("entity", "tracking.entity"), ("project", "tracking.project")):
        if isinstance(spec.get(key), str):
            out["overrides"].append(f"{target}={spec[key]}")
            notes.append(f"{key} {spec[key]} -> {target}")
    for key in ("program", "command"):
        if key in spec:
            notes.append(f"{key} not run: ftl trains recipe {spec.get('recipe') or '(the default)'} with each trial's values")
    fixed, space = _parameters(spec["parameters"], path, method, notes)
    _check_metric(metric, mode, path)
    out["overrides"] += fixed
    if "early_terminate" in spec:
        out["early_stop"] = _early_terminate(spec["early_terminate"], path, notes)
    run_cap = spec.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        raise FtlError(f"{path}: run_cap={run_cap!r}: W&B needs an integer > 0 (the most runs the sweep makes)")
    if method == "grid":
        if space:
            out["grid"] = space
        else:
            notes.append("every parameter is a constant: one trial (as W&B's grid runs one)")
        if run_cap is not None:
            out["run_cap"] = run_cap
        return out, notes
    out["method"] = METHODS[method]
    if method == "bayes":
        notes.append("method bayes -> tpe")
    if "n_trials" not in out:
        if run_cap is None:
            raise FtlError(f"{path}: no run_cap: W&B would run this {method} sweep until stopped (as `wandb agent` "
                           "without --count); add run_cap: N to the file, or n_trials=N on the command line")  # fmt: skip
        out["n_trials"] = run_cap
        notes.append(f"run_cap {run_cap} -> n_trials")
    out["space"] = space
    if not space:
        raise FtlError(f"{path}: every parameter is a constant: a {method} search has nothing to search (W&B: "
                       "Need at least one searchable parameter); use method: grid for one run")  # fmt: skip
    return out, notes


def _check_top_level(spec: dict[str, Any], path: Path, notes: list[str]) -> None:
    for key in spec:
        if key in WANDB_KEYS or key in FTL_KEYS:
            continue
        if key == "count":
            raise FtlError(f"{path}: count is `wandb agent --count`, not a sweep key (W&B: Additional properties are "
                           "not allowed ('count' was unexpected)); write run_cap: N for the sweep's budget")  # fmt: skip
        close = key_names.hint(key) if key in ("imputation",) else ""
        raise FtlError(f"{path}: W&B sweep key '{key}' is not one W&B accepts (Additional properties are not allowed "
                       f"('{key}' was unexpected)){close}; ftl reads {', '.join(sorted(WANDB_KEYS - {'apiVersion', 'kind'}))}"
                       f" and its own {', '.join(sorted(FTL_KEYS))}")  # fmt: skip
    if "method" not in spec:
        raise FtlError(f"{path}: W&B: 'method' is a required property; add method: grid, random or bayes")
    if spec["method"] == "ax":
        notes.append("method ax (W&B's Ax Bayesian optimization) -> ftl's Bayesian search (Optuna TPE)")
    elif spec["method"] not in METHODS:
        extra = (" (custom searches run W&B Launch schedulers; ftl's own methods are tpe, gp, cmaes, qmc: "
                 "`method: tpe` with ftl's `space:`)" if spec["method"] == "custom" else "")  # fmt: skip
        raise FtlError(f"{path}: method={spec['method']!r}: W&B's methods are grid, random and bayes{extra}")
    for key in ("job", "image_uri", "metrics", "scheduler"):
        if key in spec:
            raise FtlError(f"{path}: W&B key '{key}' belongs to W&B Launch / multi-objective sweeps, which ftl does not "
                           "run; remove it (ftl runs its recipe with one metric)")  # fmt: skip
    controller = spec.get("controller")
    if controller is not None:
        notes.append("controller not needed: ftl's workers ask the study themselves")
    if not isinstance(spec.get("parameters"), dict) or not spec["parameters"]:
        raise FtlError(f"{path}: parameters must map names to {{values: [...]}}, {{value: x}} or {{distribution, min, "
                       "max}} (W&B: parameters should be non-empty)")  # fmt: skip


def _metric(spec: dict[str, Any], path: Path, method: str, notes: list[str]) -> tuple[str, str]:
    from core.checks import METRICS

    metric = spec.get("metric")
    if metric is None:
        if method == "bayes":
            raise FtlError(f"{path}: W&B: Bayesian search requires \"metric\" section; add metric: {{name: val_top1, "
                           "goal: maximize}}")  # fmt: skip
        notes.append("no metric: trials are ranked by val_top1 (maximize)")
        return "val_top1", "max"
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        raise FtlError(f"{path}: metric must be {{name: ..., goal: minimize|maximize}} (W&B: 'name' is a required property)")
    unknown = set(metric) - {"name", "goal", "target", "impute", "impute_while_running"}
    if unknown:
        raise FtlError(f"{path}: metric.{sorted(unknown)[0]} is not a W&B metric key (W&B: Additional properties are "
                       "not allowed); metric takes name, goal, target")  # fmt: skip
    goal = metric.get("goal")
    if goal is None:
        notes.append(f"metric {metric['name']} without goal: minimized, as W&B does (add goal: maximize to maximize)")
        goal = "minimize"
    if goal not in ("minimize", "maximize"):
        fix = "maximize" if str(goal).lower().startswith("max") else "minimize"
        raise FtlError(f"{path}: metric.goal={goal!r}: W&B: {goal!r} is not one of ['minimize', 'maximize']; write "
                       f"goal: {fix}")  # fmt: skip
    for key in ("target", "impute", "impute_while_running"):
        if key in metric:
            notes.append(f"metric.{key} not used (ftl runs the budget; failed trials are not imputed)")
    name = metric["name"]
    if name not in METRICS and name in METRIC_NAMES:
        notes.append(f"metric {name} -> {METRIC_NAMES[name]}")
        name = METRIC_NAMES[name]
    return name, "max" if goal == "maximize" else "min"


def _check_metric(name: str, mode: str, path: Path) -> None:
    """A metric ftl's trials log (checked after the parameters: a file for another program fails on those first)."""
    from core.checks import METRICS

    if name not in METRICS and not name.startswith("val_ema_"):
        best = "val_loss" if mode == "min" else "val_top1"
        raise FtlError(f"{path}: metric.name={name!r} names no metric ftl logs (ftl logs {', '.join(METRICS)} every "
                       f"epoch, val_ema_* with train.ema); write metric: {{name: {best}, goal: "
                       f"{'minimize' if mode == 'min' else 'maximize'}}}")  # fmt: skip


# ---------------------------------------------------------------- parameters


def _parameters(params: dict[str, Any], path: Path, method: str, notes: list[str]) -> tuple[list[str], dict]:
    """(fixed overrides, the space or the grid) of a `parameters:` block, nested blocks flattened."""
    from core.config import format_value

    fixed, space = [], {}
    for name, key, p, where in _flatten(params, path, "parameters"):
        kind, entry = _distribution(key, p, where, path, method, notes)
        if kind == "constant":
            _check_constant(key, p["value"], where, path)
            fixed.append(f"{key}={format_value(p['value'])}")
        elif key in space:
            raise FtlError(f"{path}: {where} and another parameter both name {key}; keep one")
        else:
            space[key] = entry
        if key != name:
            notes.append(f"{name} -> {key}")
    return fixed, space


def _check_constant(key: str, value: Any, where: str, path: Path) -> None:
    """A `value:` is one constant; a list given to a key that takes one value was meant as `values:`."""
    from core import checks

    try:
        checks.coerce(key, value)
    except KeyError:  # a key the schema leaves open
        return
    except ValueError as e:
        fix = f"to sweep these, write values: {value!r}" if isinstance(value, list) else f"write a value {key} takes"

        raise FtlError(f"{path}: {where}.value={value!r}: {key}: {e}; {fix}") from None


def _flatten(params: dict[str, Any], path: Path, where: str, section: str | None = None):
    """(name as written, ftl key, spec, where) for every parameter; a nested `parameters:` block is a section
    (`optimizer: {parameters: {lr: ...}}` -> optim.lr), refused with its path when it names none."""
    for name, p in params.items():
        name, here = str(name), f"{where}.{name}"
        if isinstance(p, dict) and "parameters" in p:
            inner = SECTIONS.get(name.lower()) if section is None else None
            if inner is None and section is not None:
                raise FtlError(f"{path}: {here}: '{section}.{name}' names no ftl config key (ftl's sections hold plain "
                               f"keys, not nested blocks); name it by its ftl key (e.g. {section}.lr)")  # fmt: skip
            if inner is None or set(p) != {"parameters"} or not isinstance(p["parameters"], dict):
                raise FtlError(f"{path}: {here}: a nested parameters block names an ftl section ({', '.join(sorted(set(SECTIONS.values())))})"
                               f"; '{name}' is none - write its parameters by their keys (e.g. optim.lr)")  # fmt: skip
            yield from _flatten(p["parameters"], path, f"{here}.parameters", inner)
            continue
        key, _ = key_names.resolve(f"{section}.{name}" if section else name)
        if key is None and section:
            key, _ = key_names.resolve(name)
            key = key if key and key.startswith(f"{section}.") else None
        if key is None:
            raise FtlError(f"{path}: {here}: '{name}' names no ftl config key{key_names.hint(name)}")
        yield (f"{section}.{name}" if section else name), key, _translated(name, p, here, path), here


def _translated(name: str, p: Any, where: str, path: Path) -> Any:
    """A parameter whose values mean another key's values (`freeze_backbone: [true, false]` -> model.freeze
    backbone / none), its value(s) translated."""
    if not isinstance(p, dict) or key_names.value_table(name) is None:
        return p
    try:
        if "values" in p and isinstance(p["values"], list):
            return {**p, "values": [key_names.translate(name, v) for v in p["values"]]}
        if "value" in p:
            return {**p, "value": key_names.translate(name, p["value"])}
    except ValueError as e:
        raise FtlError(f"{path}: {where}: {e}; write values among those") from None
    raise FtlError(f"{path}: {where}: {name} is a choice: write values: [true, false] (or value:)")


def _number(p: dict[str, Any], key: str, where: str, path: Path, notes: list[str]) -> float | int:
    """A numeric field. Text is refused as W&B refuses it - with the fix for the usual cause: a quoted number, or
    `1e-3` read by a YAML 1.1 parser (W&B's) as a string."""
    value = p[key]
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise FtlError(f"{path}: {where}.{key}={value!r} is not a number") from None
        raise FtlError(f"{path}: {where}.{key}={value!r} is text: YAML 1.1 reads {value} as a string (W&B: is not of "
                       f"type 'number'); write {number!r} unquoted, with a dot before the exponent (1.0e-3)")  # fmt: skip
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FtlError(f"{path}: {where}.{key}={value!r} is not a number")
    return value


def _distribution(key: str, p: Any, where: str, path: Path, method: str, notes: list[str]) -> tuple[str, Any]:
    """(W&B distribution, ftl space entry - or grid values for method: grid) of one parameter, W&B's rules."""
    if not isinstance(p, dict):
        raise FtlError(f"{path}: {where}={p!r}: a parameter is {{values: [...]}}, {{value: x}} or {{distribution: ..., "
                       f"min: ..., max: ...}} (W&B: Invalid configuration for hyperparameter '{where}')")  # fmt: skip
    extra = sorted(set(p) - PARAM_KEYS)
    if extra:
        raise FtlError(f"{path}: {where}.{extra[0]} is not a W&B parameter key (it matches no W&B distribution); use "
                       "values, value, probabilities, or distribution with min, max, q")  # fmt: skip
    if "value" in p and "values" in p:
        raise FtlError(f"{path}: {where} has both value and values, which W&B rejects (it matches none of its parameter "
                       "schemas); keep one")  # fmt: skip
    dist = p.get("distribution") or _inferred(p, where, path)
    if "values" in p and (not isinstance(p["values"], list) or not p["values"]):
        raise FtlError(f"{path}: {where}.values={p['values']!r} must be a non-empty list (W&B: is not of type 'array'); "
                       f"write values: [{p['values']!r}] or value: {p['values']!r}")  # fmt: skip
    if dist in UNBOUNDED:
        raise FtlError(f"{path}: {where}: distribution {dist} has no bounds, and ftl's samplers (Optuna) draw from "
                       "bounded ranges; use uniform (or log_uniform_values) over the range you mean, e.g. mu +- 2 sigma")  # fmt: skip
    if dist == "constant":
        return "constant", [p.get("value")]
    if dist in ("categorical", "categorical_w_probabilities"):
        return _categorical(p, dist, where, path, method)
    if dist not in ("int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values", "q_log_uniform",
                    "q_log_uniform_values", "inv_log_uniform", "inv_log_uniform_values"):  # fmt: skip
        raise FtlError(f"{path}: {where}: distribution {dist!r} is not one of W&B's")
    for needed in ("min", "max"):
        if needed not in p:
            raise FtlError(f"{path}: {where}: distribution {dist} needs min and max")
    lo, hi = _number(p, "min", where, path, notes), _number(p, "max", where, path, notes)
    if lo >= hi:
        raise FtlError(f"{path}: {where}: min {lo} is not less than max {hi} (W&B's check)")
    q = _number(p, "q", where, path, notes) if "q" in p else 1.0
    if q <= 0:
        raise FtlError(f"{path}: {where}.q={q} must be > 0")
    if dist == "int_uniform":
        if not all(isinstance(v, int) for v in (lo, hi)):
            raise FtlError(f"{path}: {where}: int_uniform needs integer min and max (W&B), got {lo}, {hi}")
        return dist, list(range(lo, hi + 1)) if method == "grid" else {"int": [lo, hi]}
    if dist == "q_uniform":
        return dist, _q_uniform(lo, hi, q, method)
    if method == "grid":
        raise FtlError(f"{path}: {where}: W&B's grid search takes categorical, constant, int_uniform or q_uniform "
                       f"parameters, not {dist} (Parameter {where} is a disallowed type with grid search)")  # fmt: skip
    if dist == "uniform":
        return dist, {"uniform": [lo, hi]}
    if dist in ("log_uniform", "q_log_uniform"):  # W&B v1: exponents
        notes.append(f"{where}: {dist} takes natural-log exponents: [e^{lo:g}, e^{hi:g}] = [{math.exp(lo):.3g}, "
                     f"{math.exp(hi):.3g}] (W&B: use {dist}_values for limit values)")  # fmt: skip
        lo, hi = math.exp(lo), math.exp(hi)
    elif dist == "inv_log_uniform":
        lo, hi = math.exp(-hi), math.exp(-lo)
    elif lo <= 0:
        raise FtlError(f"{path}: {where}: {dist} needs min > 0 (a log range), got {lo}")
    entry: dict[str, Any] = {"loguniform": [lo, hi]}
    if dist.startswith("q_"):
        entry.update(q=q, type="int" if isinstance(q, int) else "float")
    return dist, entry


def _inferred(p: dict[str, Any], where: str, path: Path) -> str:
    """W&B's inference when `distribution` is absent (the first of its parameter schemas that matches)."""
    if "values" in p and "probabilities" in p:
        return "categorical_w_probabilities"
    if "values" in p:
        return "categorical"
    if "value" in p:
        return "constant"
    if "min" in p and "max" in p:
        ints = all(isinstance(p[k], int) and not isinstance(p[k], bool) for k in ("min", "max"))
        return "int_uniform" if ints else "uniform"
    raise FtlError(f"{path}: {where}: {sorted(p)} matches no W&B distribution (W&B infers values, value, or min/max; "
                   "mu/sigma need distribution: normal)")  # fmt: skip


def _categorical(p: dict[str, Any], dist: str, where: str, path: Path, method: str) -> tuple[str, Any]:
    values = p["values"]
    if dist == "categorical":
        return dist, list(values) if method == "grid" else {"choice": list(values)}
    probs = p.get("probabilities")
    if not isinstance(probs, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in probs):
        raise FtlError(f"{path}: {where}.probabilities must be a list of numbers >= 0")
    if len(probs) != len(values):
        raise FtlError(f"{path}: {where}: values {values} and probabilities {probs} are not the same length (W&B's check)")
    if not math.isclose(sum(probs), 1.0, rel_tol=1e-5):
        raise FtlError(f"{path}: {where}: probabilities {probs} do not sum to 1 (W&B's check)")
    if method == "grid":
        raise FtlError(f"{path}: {where}: W&B's grid search does not take probabilities (every value is run once); "
                       "remove them, or use method: random")  # fmt: skip
    return dist, {"choice": list(values), "probabilities": list(probs)}


def _q_uniform(lo: float, hi: float, q: float, method: str) -> Any:
    """W&B's q_uniform: round(uniform(min, max) / q) * q - the multiples of q in [min, max] (an int when q is an
    int). Its grid is numpy's arange(min, max, q): from min, max excluded."""
    integer = isinstance(q, int) and isinstance(lo, int) and isinstance(hi, int)
    if method == "grid":
        count = math.ceil((hi - lo) / q - 1e-9)
        return [lo + i * q if integer else round(lo + i * q, 12) for i in range(count)]
    first, last = math.ceil(lo / q - 1e-9) * q, math.floor(hi / q + 1e-9) * q
    if integer:
        return {"int": [int(first), int(last)], "q": q}
    return {"uniform": [round(first, 12), round(last, 12)], "q": q}


def _early_terminate(et: Any, path: Path, notes: list[str]) -> dict[str, Any]:
    """W&B's hyperband stopping as successive halving from its first band: bands min_iter x eta^k, or
    max_iter / eta^k for k = 1..s (hyperband_stopping.py); a run is stopped at a band when its best is not in the
    top 1/eta there - what Optuna's SuccessiveHalvingPruner does at those epochs."""
    if not isinstance(et, dict) or et.get("type") != "hyperband":
        kind = et.get("type") if isinstance(et, dict) else et
        raise FtlError(f"{path}: early_terminate type {kind!r}: W&B: Invalid early stopping type, must be one of "
                       "[\"hyperband\"]; write type: hyperband")  # fmt: skip
    unknown = sorted(set(et) - {"type", "min_iter", "max_iter", "s", "eta", "strict"})
    if unknown:
        raise FtlError(f"{path}: early_terminate.{unknown[0]} is not a W&B hyperband key; use min_iter, or max_iter "
                       "and s, with eta")  # fmt: skip
    eta = et.get("eta", 3)
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or eta <= 1:
        raise FtlError(f"{path}: early_terminate.eta={eta!r} must be a number > 1 (W&B)")
    if not float(eta).is_integer():
        raise FtlError(f"{path}: early_terminate.eta={eta}: ftl keeps the top 1/eta of trials at each stop with a whole "
                       f"eta; write eta: {max(2, round(eta))}")  # fmt: skip
    if "max_iter" in et:
        if not isinstance(et.get("s"), int) or isinstance(et.get("s"), bool):
            raise FtlError(f"{path}: early_terminate: max_iter needs s, the number of bands (W&B)")
        band, bands = float(et["max_iter"]), []
        for _ in range(et["s"]):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
        if not bands:
            raise FtlError(f"{path}: early_terminate: W&B: Bands must be an array of length at least 1. Try increasing "
                           "s, decreasing eta, or increasing min_iter.")  # fmt: skip
        first = min(bands)
    elif "min_iter" in et:
        first = et["min_iter"]
        if not isinstance(first, int) or isinstance(first, bool) or first < 1:
            raise FtlError(f"{path}: early_terminate.min_iter={first!r} must be an integer >= 1 (W&B)")
    else:
        raise FtlError(f"{path}: early_terminate: W&B: invalid config for hyperband stopping: either \"max_iter\" or "
                       "\"min_iter\" must be specified; add min_iter: 1")  # fmt: skip
    if "strict" in et:
        notes.append("early_terminate.strict not used (W&B's controller does not read it either)")
    notes.append(f"early_terminate hyperband -> successive halving: first stop at epoch {first}, then every x{int(eta)}")
    return {"type": "asha", "min_epochs": first, "reduction_factor": int(eta),
            "max_epochs": et.get("max_iter") if isinstance(et.get("max_iter"), int) else None}  # fmt: skip
