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
