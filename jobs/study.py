"""Optuna pieces shared by the search workers and the early-stopping reporter: the study in the sweep dir (journal
file storage: no server, works offline and on a shared file system), samplers, pruners, and define-by-run asks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import itertools
import math

from core.config import format_value


def make_sampler(method: str, seed: int):
    import optuna

    s = optuna.samplers
    return {"tpe": lambda: s.TPESampler(seed=seed, constant_liar=True), "gp": lambda: s.GPSampler(seed=seed),
            "cmaes": lambda: s.CmaEsSampler(seed=seed, warn_independent_sampling=False),
            "qmc": lambda: s.QMCSampler(seed=seed, scramble=True, warn_asynchronous_seeding=False),
            "random": lambda: s.RandomSampler(seed=seed)}[method]()  # fmt: skip


def make_pruner(block: dict[str, Any] | None):
    """early_stop {type: asha | hyperband | median, min_epochs, reduction_factor, max_epochs} -> an Optuna pruner."""
    import optuna

    p = optuna.pruners
    if not block:
        return p.NopPruner()
    kind = block.get("type", "asha")
    if kind == "asha":
        return p.SuccessiveHalvingPruner(min_resource=block.get("min_epochs", 1),
                                         reduction_factor=block.get("reduction_factor", 3))  # fmt: skip
    if kind == "hyperband":
        return p.HyperbandPruner(min_resource=block.get("min_epochs", 1), max_resource=block.get("max_epochs") or "auto",
                                 reduction_factor=block.get("reduction_factor", 3))  # fmt: skip
    return p.MedianPruner(n_warmup_steps=block.get("min_epochs", 1))


def open_study(storage_path: str | Path, name: str, mode: str, method: str = "random", seed: int = 0,
               pruner: dict[str, Any] | None = None):  # fmt: skip
    """Create or load the study kept in storage_path (a journal file, locked by a lock file next to it)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = Path(storage_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    return optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                               direction="maximize" if mode == "max" else "minimize",
                               sampler=make_sampler(method, seed), pruner=make_pruner(pruner))  # fmt: skip


def reseed(sampler, seed: int) -> None:
    """The sampler's random streams (its own, and those of the samplers it falls back to) restarted from `seed`,
    keeping the sampler itself - and the search-space cache it builds up over the study's trials."""
    from optuna.samplers._lazy_random_state import LazyRandomState

    for part in (sampler, getattr(sampler, "_random_sampler", None), getattr(sampler, "_independent_sampler", None)):
        if part is not None and hasattr(part, "_rng"):
            part._rng = LazyRandomState(seed)


def suggest(trial, space: dict[str, Any], method: str, seed: int) -> list[str]:
    """Ask a trial's parameters in the space's order (define-by-run: a `when:` sees the values asked before it),
    with the sampler reseeded by (seed, trial number): trial k's proposal does not depend on which worker asks."""
    if hasattr(trial, "study"):
        reseed(trial.study.sampler, seed * 100_003 + trial.number)
    values: dict[str, Any] = {}
    for key, dist in space.items():
        when = dist.get("when") or {}
        if any(values.get(k) not in (v if isinstance(v, list) else [v]) for k, v in when.items()):
            continue
        values[key] = ask(trial, key, dist)
    return [f"{k}={format_value(v)}" for k, v in values.items()]


def ask(trial, key: str, dist: dict[str, Any]) -> Any:
    """One parameter's value, as its distribution says: a choice (weighted: the sampler draws u in [0, 1) and the
    value is the one whose share of the cumulated probabilities holds u - W&B's categorical_w_probabilities), an
    integer on a step, a float on a step, or a log-uniform float rounded to q afterwards (W&B's
    q_log_uniform_values: Optuna steps only linear ranges); `type: int` makes it an integer."""
    if "choice" in dist:
        if dist.get("probabilities"):
            u = trial.suggest_float(f"{key}#u", 0.0, 1.0)
            edges = list(itertools.accumulate(dist["probabilities"]))
            return dist["choice"][next((i for i, edge in enumerate(edges) if u < edge), len(edges) - 1)]
        return trial.suggest_categorical(key, dist["choice"])
    if "int" in dist:
        lo, hi = dist["int"]
        return trial.suggest_int(key, int(lo), int(hi), step=int(dist.get("q") or 1))
    lo, hi = dist.get("uniform") or dist["loguniform"]
    log, q = "loguniform" in dist, dist.get("q")
    value = trial.suggest_float(key, float(lo), float(hi), log=log, step=None if log else q)
    if log and q:
        first, last = math.ceil(lo / q - 1e-9) * q, math.floor(hi / q + 1e-9) * q
        value = min(max(round(value / q) * q, first), max(last, first))
        value = round(value, 12)
    return int(round(value)) if dist.get("type") == "int" else value


def draws(space: dict[str, Any], n: int, seed: int = 0) -> list[list[str]]:
    """n trials of the space as workers ask them (Optuna's random sampler), and each parameter at its ends (every
    choice; low and high, through the same rounding): what a dry run checks before anything is queued."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest(trial, space, "random", seed))
        study.tell(trial, 0.0)
    dists = distributions(space)
    lows = {k: (d.choices[0] if hasattr(d, "choices") else d.low) for k, d in dists.items()}
    for key, dist in dists.items():
        ends = list(dist.choices) if hasattr(dist, "choices") else [dist.low, dist.high]
        if key.endswith("#u"):
            ends = [0.0, 0.999999]
        for end in ends:
            out.append(suggest(optuna.trial.FixedTrial({**lows, key: end}), space, "random", seed))
    return out


def frozen_trial(study, optuna_id: int):
    """The study's record of one trial (its state and value), by its id in the storage."""
    return study._storage.get_trial(optuna_id)


def check_journal(path: Path, asked: int, sweep_dir: Path) -> None:
    """The study's journal checked before Optuna reads it: every line a complete JSON operation, and at least as
    many trials as the sweep's log has asked (a journal cut short lost them). Damage is one FtlError naming the
    file, the line and the repair; Optuna itself would skip a bad last line, or fail later on a bad line in the
    middle."""
    import json

    from optuna.storages.journal._storage import JournalOperation

    from core.errors import FtlError

    if not path.is_file():
        if asked:
            raise FtlError(f"{path} is missing but the sweep has asked {asked} trials; `ftl repair {sweep_dir}` "
                           "rebuilds it from the sweep's log")  # fmt: skip
        return
    fix = f"`ftl repair {sweep_dir}` rebuilds the study from the sweep's log (a copy of this file is kept)"
    created = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                raise FtlError(f"{path} line {number} is cut short (a write that did not finish); {fix}")
            try:
                op = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise FtlError(f"{path} line {number} is damaged (not JSON); {fix}") from None
            if not isinstance(op, dict) or "op_code" not in op:
                raise FtlError(f"{path} line {number} is not an Optuna journal operation; {fix}")
            created += op["op_code"] == JournalOperation.CREATE_TRIAL
    if created < asked:
        raise FtlError(f"{path} holds {created} trials but the sweep's log has asked {asked}: the journal lost "
                       f"trials (cut short or replaced); {fix}")  # fmt: skip


def distributions(space: dict[str, Any]) -> dict[str, Any]:
    """The Optuna distribution of each key of a search space (as `suggest` asks them)."""
    import optuna.distributions as d

    out: dict[str, Any] = {}
    for key, dist in space.items():
        if "choice" in dist and dist.get("probabilities"):
            out[f"{key}#u"] = d.FloatDistribution(0.0, 1.0)
        elif "choice" in dist:
            out[key] = d.CategoricalDistribution(dist["choice"])
        elif "int" in dist:
            out[key] = d.IntDistribution(int(dist["int"][0]), int(dist["int"][1]), step=int(dist.get("q") or 1))
        else:
            lo, hi = dist.get("uniform") or dist["loguniform"]
            log = "loguniform" in dist
            out[key] = d.FloatDistribution(float(lo), float(hi), log=log, step=None if log else dist.get("q"))
    return out


def params_of(overrides: list[str], space: dict[str, Any]) -> dict[str, Any]:
    """A trial's overrides (`key=value` as `suggest` wrote them) back as Optuna params of the space."""
    import optuna.distributions as d

    dists, params = distributions(space), {}
    for item in overrides:
        key, _, text = item.partition("=")
        dist = dists.get(key)
        if f"{key}#u" in dists:  # a weighted choice: the middle of its share of [0, 1)
            index = next(i for i, c in enumerate(space[key]["choice"]) if format_value(c) == text)
            probs = space[key]["probabilities"]
            params[f"{key}#u"] = sum(probs[:index]) + probs[index] / 2
        elif isinstance(dist, d.CategoricalDistribution):
            params[key] = next(c for c in dist.choices if format_value(c) == text)
        elif isinstance(dist, d.IntDistribution):
            params[key] = int(text)
        elif dist is not None:
            params[key] = float(text)
    return params
