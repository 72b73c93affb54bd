"""Optuna pieces shared by the search workers and the early-stopping reporter: the study in the sweep dir (journal
file storage: no server, works offline and on a shared file system), samplers, pruners, and define-by-run asks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
    reseed(trial.study.sampler, seed * 100_003 + trial.number)
    values: dict[str, Any] = {}
    for key, dist in space.items():
        when = dist.get("when") or {}
        if any(values.get(k) not in (v if isinstance(v, list) else [v]) for k, v in when.items()):
            continue
        if "choice" in dist:
            values[key] = trial.suggest_categorical(key, dist["choice"])
        elif "int" in dist:
            lo, hi = dist["int"]
            values[key] = trial.suggest_int(key, int(lo), int(hi), step=int(dist.get("q") or 1))
        else:
            lo, hi = dist.get("uniform") or dist["loguniform"]
            log = "loguniform" in dist
            values[key] = trial.suggest_float(key, float(lo), float(hi), log=log, step=None if log else dist.get("q"))
    return [f"{k}={format_value(v)}" for k, v in values.items()]


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
        if "choice" in dist:
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
        if isinstance(dist, d.CategoricalDistribution):
            params[key] = next(c for c in dist.choices if format_value(c) == text)
        elif isinstance(dist, d.IntDistribution):
            params[key] = int(text)
        elif dist is not None:
            params[key] = float(text)
    return params
