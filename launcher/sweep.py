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

import yaml

from core import config as config_lib
from core.config import format_value
from core.errors import FtlError, did_you_mean

SWEEP_KEYS = ("recipe", "name", "overrides", "grid", "zip", "random", "seeds", "metric", "mode", "early_stop",
              "method", "space", "n_trials", "max_parallel", "seed", "stale_after_s", "program", "max_attempts",
              "run_cap")  # fmt: skip
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
    max_parallel: int | None = None  # a grid's trials at a time, from the file or the command line (None: the cluster's)


def trial_id(overrides: list[str]) -> str:
    """A trial's id: 64 bits of a hash of its overrides (the same file gives the same ids; at 10^7 trials two
    collide with probability ~3e-6)."""
    return hashlib.sha1("\n".join(sorted(overrides)).encode()).hexdigest()[:16]


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


SWEEP_SETTINGS = ("n_trials", "run_cap", "max_parallel", "seed", "max_attempts", "stale_after_s", "recipe")
SEARCH_ONLY = ("n_trials", "seed", "stale_after_s", "program", "space")


def find_sweep_file(path: str | Path) -> Path:
    """A path, or the name of a shipped sweep file (jobs/sweeps/NAME.yaml) - from any directory."""
    path = Path(path)
    if path.is_file():
        return path
    named = config_lib.RECIPES_DIR.parent / "sweeps" / f"{path}.yaml"
    if named.is_file():
        return named
    shipped = sorted(p.stem for p in named.parent.glob("*.yaml"))
    raise FtlError(f"sweep file not found: {path}{did_you_mean(str(path), shipped)} (a path, or a shipped sweep: "
                   f"{', '.join(shipped)})")  # fmt: skip


def load_sweep(path: str | Path, extra_overrides: list[str] | None = None, recipe: str | None = None) -> Sweep:
    """Read, expand and validate a sweep file (ftl's or W&B's); raise one FtlError naming the file, key and value.
    The command line may set the sweep's own settings (n_trials=40, max_parallel=1, recipe=NAME or `recipe`), add
    grid axes (a=1,2) and override any key: a single value for a swept key replaces its axis (said in a note)."""
    from launcher import search as search_lib
    from launcher import wandb_sweep

    path = find_sweep_file(path)
    spec = config_lib.read_yaml_mapping(path, "sweep file")
    extra, notes = list(extra_overrides or []), []
    for item in [o for o in extra if o.split("=", 1)[0] in SWEEP_SETTINGS]:  # n_trials=40 on the command line
        key, text = item.split("=", 1)
        spec[key] = yaml.load(text, Loader=config_lib.YamlLoader)
        extra.remove(item)
    if recipe:
        spec["recipe"] = recipe
    if wandb_sweep.is_wandb(spec):
        spec, notes = wandb_sweep.read(spec, path)
        if "recipe" not in spec:
            spec["recipe"] = "fine_tune"
            notes.append("recipe fine_tune (the file names none: --recipe NAME or recipe=NAME chooses)")
    for key in spec:
        if key not in SWEEP_KEYS:
            raise FtlError(f"{path}: unknown sweep key '{key}'{did_you_mean(key, SWEEP_KEYS)}")
    method = spec.get("method")
    if method not in (None, "grid", *search_lib.METHODS):
        search_lib.parse_search(spec, path)  # names the unknown method and what exists
    if "recipe" not in spec:
        raise FtlError(f"{path}: 'recipe' is required (the base recipe every trial starts from): add recipe: NAME, "
                       "or give --recipe NAME")  # fmt: skip
    metric, mode = search_lib.parse_metric(spec, path)
    max_attempts = spec.get("max_attempts", 3)
    if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
        raise FtlError(f"{path}: max_attempts={max_attempts!r} must be an integer >= 1 (how often a failing trial runs)")
    spec, fixed, cli_notes = _command_line(spec, extra, path)
    notes += cli_notes
    fixed = [*(str(o) for o in spec.get("overrides") or []), *fixed]
    if method in search_lib.METHODS:
        search, mapped = search_lib.parse_search(spec, path)
        notes += mapped
        trials = [Trial(f"w{i}", []) for i in range(search["max_parallel"])]
        sweep = Sweep(str(path), spec.get("name") or path.stem, str(spec["recipe"]), fixed, metric, mode,
                      search["early_stop"], trials, spec, search={**search, "max_attempts": max_attempts}, notes=notes,
                      max_attempts=max_attempts)  # fmt: skip
        validate(sweep, search_lib.checked_overrides(search["space"]))
        return sweep
    for key in SEARCH_ONLY:
        if key in spec:
            raise FtlError(f"{path}: {key} belongs to a search (method: tpe, gp, cmaes, qmc or random with a space); "
                           "a grid runs every combination: remove it (or cap a W&B grid with run_cap)")  # fmt: skip
    seeds = spec.get("seeds") or []
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise FtlError(f"{path}: seeds must be a list of ints, got {seeds!r}")
    blocks = [_grid(spec, path), _zip(spec, path), _random(spec, path), [[f"train.seed={s}"] for s in seeds] or [[]]]
    combos = [sum(parts, []) for parts in itertools.product(*blocks)]
    if spec.get("grid") == {} or not combos:
        raise FtlError(f"{path}: the sweep expands to no trial (empty grid?)")
    if spec.get("run_cap") is not None:
        notes.append(f"run_cap {spec['run_cap']} of {len(combos)} grid combinations: the first {min(spec['run_cap'], len(combos))} "
                     "in W&B's order")  # fmt: skip
        combos = combos[: spec["run_cap"]]
    trials = [Trial(trial_id(c), c) for c in combos]
    if len({t.id for t in trials}) != len(trials):
        raise FtlError(f"{path}: some trials have identical overrides; remove the duplicate values")
    early = search_lib.parse_pruner(spec.get("early_stop"), path)
    sweep = Sweep(str(path), spec.get("name") or path.stem, str(spec["recipe"]), fixed, metric, mode, early, trials,
                  spec, notes=notes, max_attempts=max_attempts, max_parallel=_max_parallel(spec, path, notes))  # fmt: skip
    validate(sweep)
    return sweep


def _max_parallel(spec: dict[str, Any], path: Path, notes: list[str]) -> int | None:
    value = spec.get("max_parallel")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FtlError(f"{path}: max_parallel={value!r} must be an integer >= 1 (trials at a time)")
    notes.append(f"max_parallel {value}: trials at a time (the cluster's max_parallel / array_parallelism)")
    return value


def _command_line(spec: dict[str, Any], extra: list[str], path: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    """The command line's key=value items: `a=1,2` a new grid axis (Hydra's syntax); a single value for a key the
    sweep varies replaces that axis (grid, zip, random or search space) - said in a note; the rest apply to every
    trial. Returns (spec, fixed overrides, notes)."""
    spec = dict(spec)
    fixed, notes = [], []
    search = spec.get("method") in (None, "grid")
    for item in extra:
        key = item.split("=", 1)[0].lstrip("+")
        values = config_lib.comma_values(item)
        if values:
            if not search:
                raise FtlError(f"{path}: {item}: a comma list on the command line is a grid axis; in a search, write "
                               f"{key} in the space (choice: [...])")  # fmt: skip
            grid = spec.get("grid") or {}
            if not isinstance(grid, dict):
                raise FtlError(f"{path}: grid must map keys to lists of values")
            spec["grid"] = {**grid, key: [config_lib.parse_override(f"{key}={v}")[1] for v in values]}
            continue
        swept = [block for block in ("grid", "zip") if key in (spec.get(block) or {})]
        swept += ["random"] if key in ((spec.get("random") or {}).get("params") or {}) else []
        swept += ["space"] if key in (spec.get("space") or {}) else []
        for block in swept:
            if block == "random":
                spec["random"] = {**spec["random"], "params": {k: v for k, v in spec["random"]["params"].items() if k != key}}
            else:
                spec[block] = {k: v for k, v in spec[block].items() if k != key}
            notes.append(f"{item} on the command line replaces the {'search space' if block == 'space' else block}'s {key} "
                         "(every trial gets it)")  # fmt: skip
        if "random" in swept and not spec["random"]["params"]:
            spec.pop("random")
        if "space" in swept and not spec["space"]:
            raise FtlError(f"{path}: {item} on the command line leaves the search space empty: nothing to search")
        fixed.append(item)
    return spec, fixed, notes


def validate(sweep: Sweep, check_overrides: list[list[str]] | None = None) -> None:
    """Build every trial's full config and check it with every rule of core/checks.py (types, ranges, rules between
    keys, required keys, names, data paths) and the sweep's metric; one FtlError naming the first bad trials.

    The recipe and sweep-wide overrides are merged once (OmegaConf); each trial is that plain dict with its own
    overrides set, each distinct override parsed and typed once - about 50 us a trial."""
    from core import checks
    from core.zoo import weights_for

    source = f"{sweep.path}"
    try:
        base = config_lib.read_recipe(config_lib.resolve_recipe(sweep.recipe))
        # not checked alone: a required key (data.train_dir) may come from every trial's grid or zip
        sweep.base_config = config_lib.build([base, config_lib.parse_overrides(sweep.overrides)], source, check=False)
    except FtlError as e:
        raise FtlError(f"{source}: {e}") from None
    base_values = config_lib.to_dict(sweep.base_config)
    sweep_keys = {config_lib.parse_override(o)[0] for o in sweep.overrides}
    follows = "model.pretrained" not in sweep_keys  # the recipe's weights follow a model.name set over it
    if follows and "model.name" in sweep_keys:
        base_values["model"] = {**base_values["model"], "pretrained": weights_for(base_values["model"]["name"],
                                                                                  base_values["model"]["pretrained"])}  # fmt: skip
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
        if follows and "model.name" in own and "model.pretrained" not in own:
            model = values["model"] = dict(values["model"])
            model["pretrained"] = weights_for(model["name"], model["pretrained"])
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
