"""Sweep files -> trials: grid (cartesian), zip (lock-step lists), random (Optuna's RandomSampler) and seeds.

A sweep file (jobs/sweeps/*.yaml):

    recipe: fine_tune            # base recipe (name or path)
    name: lr-grid
    overrides: [data.train_dir=data/fmnist/train]   # applied to every trial
    grid: {optim.lr: [1e-3, 3e-3], finetune.strategy: [full, gradual]}
    zip: {model.name: [mobilenetv2_100, tf_efficientnet_lite0], model.pretrained: [mobilenetv2_100.tv_in1k, ...]}
    random: {n: 8, seed: 0, params: {optim.lr: {loguniform: [1e-4, 1e-2]}, data.batch_size: {choice: [32, 64]}}}
    seeds: [0, 1]
    metric: val_top1             # what "best" means
    mode: max
    early_stop: {min_epochs: 1, reduction_factor: 3}   # optional ASHA (launcher/early_stop.py)

Trials are the product grid x zip x random x seeds. A trial id is a hash of its overrides, so expanding the same
file twice gives the same ids. Every override is validated against the recipe schema before anything runs; this
module imports no torch, so a 10,000-trial sweep expands in well under a second.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core import config as config_lib
from core.config import format_value
from core.errors import FtlError, did_you_mean

SWEEP_KEYS = ("recipe", "name", "overrides", "grid", "zip", "random", "seeds", "metric", "mode", "early_stop",
              "method", "space", "n_trials", "max_parallel", "seed", "stale_after_s", "program", "max_attempts")  # fmt: skip
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")


@dataclass
class Trial:
    id: str
    overrides: list[str]  # the trial's own key=value overrides (sweep-wide ones excluded)


@dataclass
class Sweep:
    path: str
    name: str
    recipe: str
    overrides: list[str]
    metric: str
    mode: str
    early_stop: dict[str, Any] | None
    trials: list[Trial] = field(default_factory=list)  # a search's: its worker slots w0, w1, ...
    spec: dict[str, Any] = field(default_factory=dict)  # the file as read
    base_config: Any = None  # the recipe + sweep-wide overrides, built once by validate()
    search: dict[str, Any] | None = None  # an adaptive search (launcher/search.py); None: trials fixed up front
    notes: list[str] = field(default_factory=list)  # what was read how (a W&B file's mapping), said once
    max_attempts: int = 3  # a trial that failed (or whose worker died) this often is not run again


def trial_id(overrides: list[str]) -> str:
    return hashlib.sha1("\n".join(sorted(overrides)).encode()).hexdigest()[:10]


def _as_list(block: str, key: str, values: Any, path: str) -> list:
    if not isinstance(values, list) or not values:
        raise FtlError(f"{path}: {block}.{key} must be a non-empty list of values, got {values!r}")
    return values


def _grid(spec: dict, path: str) -> list[list[str]]:
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict):
        raise FtlError(f"{path}: grid must map keys to lists of values")
    axes = [[f"{k}={format_value(v)}" for v in _as_list("grid", k, vs, path)] for k, vs in grid.items()]
    return [list(c) for c in itertools.product(*axes)]


def _zip(spec: dict, path: str) -> list[list[str]]:
    block = spec.get("zip") or {}
    if not isinstance(block, dict):
        raise FtlError(f"{path}: zip must map keys to lists of equal length")
    lists = {k: _as_list("zip", k, v, path) for k, v in block.items()}
    lengths = {len(v) for v in lists.values()}
    if len(lengths) > 1:
        raise FtlError(f"{path}: zip lists differ in length ({', '.join(f'{k}: {len(v)}' for k, v in lists.items())})")
    n = lengths.pop() if lengths else 1
    return [[f"{k}={format_value(v[i])}" for k, v in lists.items()] for i in range(n)]


def _random(spec: dict, path: str) -> list[list[str]]:
    block = spec.get("random")
    if not block:
        return [[]]
    if not isinstance(block, dict) or not isinstance(block.get("n"), int) or block["n"] < 1:
        raise FtlError(f"{path}: random needs n (a positive int) and params")
    params = block.get("params") or {}
    if not isinstance(params, dict) or not params:
        raise FtlError(f"{path}: random.params must map keys to distributions ({', '.join(DISTRIBUTIONS)})")
    import optuna  # deferred: only random sweeps pay for it

    distributions = {k: _distribution(k, v, path) for k, v in params.items()}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=block.get("seed", 0)))
    samples = []
    for _ in range(block["n"]):
        trial = study.ask(distributions)
        samples.append([f"{k}={format_value(trial.params[k])}" for k in params])
        study.tell(trial, 0.0)
    return samples


def _distribution(key: str, spec: Any, path: str):
    import optuna.distributions as d

    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise FtlError(f"{path}: random.params.{key}={spec!r}: use one of {{{': ..., '.join(DISTRIBUTIONS)}: ...}}")
    kind, args = next(iter(spec.items()))
    try:
        if kind == "choice":
            return d.CategoricalDistribution(_as_list("random.params", key, args, path))
        lo, hi = args
        if kind == "int":
            return d.IntDistribution(int(lo), int(hi))
        return d.FloatDistribution(float(lo), float(hi), log=kind == "loguniform")
    except (TypeError, ValueError) as e:
        raise FtlError(f"{path}: random.params.{key}: {kind} needs [low, high] with low <= high ({e})") from None


SEARCH_SETTINGS = ("n_trials", "run_cap", "max_parallel", "seed", "max_attempts")  # sweep-level settings a command line may set


def load_sweep(path: str | Path, extra_overrides: list[str] | None = None) -> Sweep:
    """Read, expand and validate a sweep file (ftl's or W&B's); raise one FtlError naming the file, key and value."""
    from launcher import search as search_lib

    path = Path(path)
    if not path.is_file():
        named = config_lib.RECIPES_DIR.parent / "sweeps" / f"{path}.yaml"
        if not named.is_file():
            raise FtlError(f"sweep file not found: {path}")
        path = named
    spec = config_lib.read_yaml_mapping(path, "sweep file")
    extra = list(extra_overrides or [])
    for item in [o for o in extra if o.split("=", 1)[0] in SEARCH_SETTINGS]:  # n_trials=40 on the command line
        spec[item.split("=", 1)[0]] = config_lib.parse_override(f"optim.lr={item.split('=', 1)[1]}")[1]
        extra.remove(item)
    notes: list[str] = []
    if search_lib.is_wandb(spec):
        search_lib.check_wandb_keys(spec, path)
    if search_lib.is_wandb(spec) and spec.get("method") == "grid":
        spec, notes = _wandb_grid(spec, path)
    adaptive = search_lib.is_wandb(spec) or spec.get("method") in search_lib.METHODS
    allowed = search_lib.WANDB_KEYS if search_lib.is_wandb(spec) else SWEEP_KEYS
    for key in spec:
        if key not in allowed:
            raise FtlError(f"{path}: unknown sweep key '{key}'{did_you_mean(key, allowed)}")
    if spec.get("method") not in (None, "grid", *search_lib.METHODS, *search_lib.WANDB_METHODS):
        search_lib.parse_search(spec, path)  # names the unknown method and what exists
    if "recipe" not in spec:
        if not search_lib.is_wandb(spec):
            raise FtlError(f"{path}: 'recipe' is required (the base recipe every trial starts from)")
        spec = {**spec, "recipe": "fine_tune"}
        notes.append("recipe fine_tune (a W&B sweep file names none: add `recipe:` to choose)")
    metric, mode = search_lib.parse_metric(spec, path)
    max_attempts = spec.get("max_attempts", 3)
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise FtlError(f"{path}: max_attempts={max_attempts!r} must be an integer >= 1 (how often a failing trial runs)")
    if adaptive:
        search, mapped = search_lib.parse_search(spec, path)
        notes += mapped
        fixed = [*(spec.get("overrides") or []), *extra]
        trials = [Trial(f"w{i}", []) for i in range(search["max_parallel"])]
        sweep = Sweep(str(path), spec.get("name") or path.stem, str(spec["recipe"]), [str(o) for o in fixed], metric,
                      mode, search["early_stop"], trials, spec, search={**search, "max_attempts": max_attempts}, notes=notes,
                      max_attempts=max_attempts)  # fmt: skip
        validate(sweep, search_lib.corner_overrides(search["space"]))
        return sweep
    seeds = spec.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise FtlError(f"{path}: seeds must be a list of ints, got {seeds!r}")
    axes = {o.split("=", 1)[0]: values for o in extra if (values := config_lib.comma_values(o))}  # Hydra: a=1,2
    if axes:
        grid = spec.get("grid") or {}
        if not isinstance(grid, dict):
            raise FtlError(f"{path}: grid must map keys to lists of values")
        spec = {**spec, "grid": {**grid, **{k: [config_lib.parse_override(f"{k}={v}")[1] for v in vs]
                                          for k, vs in axes.items()}}}  # fmt: skip
    fixed = [*(spec.get("overrides") or []), *(o for o in extra if o.split("=", 1)[0] not in axes)]
    blocks = [_grid(spec, path), _zip(spec, path), _random(spec, path), [[f"train.seed={s}"] for s in seeds] or [[]]]
    combos = [sum(parts, []) for parts in itertools.product(*blocks)]
    if spec.get("grid") == {} or not combos:
        raise FtlError(f"{path}: the sweep expands to no trial (empty grid?)")
    trials = [Trial(trial_id(c), c) for c in combos]
    if len({t.id for t in trials}) != len(trials):
        raise FtlError(f"{path}: some trials have identical overrides; remove the duplicate values")
    early = search_lib.parse_pruner(spec.get("early_stop"), path)
    sweep = Sweep(str(path), spec.get("name") or path.stem, str(spec["recipe"]), [str(o) for o in fixed], metric,
                  mode, early, trials, spec, notes=notes, max_attempts=max_attempts)  # fmt: skip
    validate(sweep)
    return sweep


def _wandb_grid(spec: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str]]:
    """A W&B `method: grid` file as ftl's grid: every parameter a list of values (or one value)."""
    from launcher.search import _ftl_key

    grid, notes = {}, []
    for name, p in (spec.get("parameters") or {}).items():
        key = _ftl_key(str(name), path)
        if key != name:
            notes.append(f"{name} -> {key}")
        if isinstance(p, dict) and "values" in p:
            grid[key] = list(p["values"])
        elif isinstance(p, dict) and "value" in p:
            grid[key] = [p["value"]]
        else:
            raise FtlError(f"{path}: parameters.{name}: a grid needs values (or value), not a distribution; use "
                           "method: bayes or random for distributions")  # fmt: skip
    out = {k: v for k, v in spec.items() if k in ("recipe", "overrides", "metric", "name")}
    if "early_terminate" in spec:
        et = spec["early_terminate"]
        out["early_stop"] = {"type": "hyperband", **{k: v for k, v in et.items() if k != "type"}}
    return {**out, "grid": grid}, notes


def validate(sweep: Sweep, check_overrides: list[list[str]] | None = None) -> None:
    """Build every trial's full config and check it with every rule of core/checks.py (types, ranges, rules between
    keys, required keys, names, data paths) and the sweep's metric; one FtlError naming the first bad trials.

    The recipe and sweep-wide overrides are merged once (OmegaConf); each trial is that plain dict with its own
    overrides set, each distinct override parsed and typed once - about 50 us a trial."""
    from core import checks

    source = f"{sweep.path}"
    try:
        base = config_lib.read_recipe(config_lib.resolve_recipe(sweep.recipe))
        # not checked alone: a required key (data.train_dir) may come from every trial's grid or zip
        sweep.base_config = config_lib.build([base, config_lib.parse_overrides(sweep.overrides)], source, check=False)
    except FtlError as e:
        raise FtlError(f"{source}: {e}") from None
    base_values = config_lib.to_dict(sweep.base_config)
    base_key_problems = {f"{sec}.{leaf}": checks.key_problems(f"{sec}.{leaf}", v) for sec, vals in base_values.items()
                         if isinstance(vals, dict) for leaf, v in vals.items()}  # fmt: skip
    typed: dict[str, tuple[str, Any, list[str]]] = {}
    bad: dict[str, list[Trial]] = {}  # problem -> the trials that have it
    checked = [Trial(trial_id(o), o) for o in check_overrides] if check_overrides is not None else sweep.trials
    for trial in checked or [Trial("base", [])]:
        values, problems, copied, own = dict(base_values), [], set(), set()
        for override in trial.overrides:
            if override not in typed:
                typed[override] = _typed_override(override)
            key, value, value_problems = typed[override]
            problems += value_problems
            own.add(key)
            section, _, leaf = key.partition(".")
            if leaf:
                if section not in copied:
                    values[section], _ = dict(values[section]), copied.add(section)
                values[section][leaf] = value
            else:
                values[section] = value
        if not problems:
            problems = [p for k, ps in base_key_problems.items() if ps and k not in own for p in ps]
            problems += checks.cross_problems(values) + checks.name_problems(values) + checks.path_problems(values)
            if sweep.metric not in checks.logged_metrics(values):
                problems.append(f"metric {sweep.metric!r} is not logged by this trial (it logs "
                                f"{', '.join(sorted(checks.logged_metrics(values)))})")  # fmt: skip
        for problem in problems:
            bad.setdefault(problem, []).append(trial)
    if bad:
        n_bad = len({t.id for ts in bad.values() for t in ts})
        shown = []
        for problem, trials in list(bad.items())[:3]:
            first = trials[0]
            who = "every trial" if len(trials) == len(checked) else (
                f"trial {first.id} ({' '.join(first.overrides) or 'no overrides'})"
                + (f" and {len(trials) - 1} more" if len(trials) > 1 else ""))  # fmt: skip
            shown.append(f"{problem} [{who}]")
        more = f"; and {len(bad) - 3} more problems" if len(bad) > 3 else ""
        what = "values of the space" if check_overrides is not None else "trials"
        raise FtlError(f"{source}: {n_bad} of {len(checked)} {what} cannot run: " + " | ".join(shown) + more)


def _typed_override(override: str) -> tuple[str, Any, list[str]]:
    """'optim.lr=1e-3' -> ('optim.lr', 0.001, problems of that value alone), typed as the schema says."""
    from core import checks

    try:
        key, value = config_lib.parse_override(override)
        config_lib.parse_overrides([override])  # an unknown key: named, with the closest ones
    except FtlError as e:
        return override, None, [str(e).removeprefix("override: ")]
    try:
        value = checks.coerce(key, value)
    except KeyError:  # a key the schema leaves open
        return key, value, []
    except ValueError as e:
        return key, value, [f"{override}: {e}"]
    return key, value, checks.key_problems(key, value)
