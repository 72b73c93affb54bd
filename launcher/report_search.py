"""The search section of `ftl report`: how an adaptive search went (Optuna's own plots, drawn from the study in the
sweep dir) - the best value so far against the trial number, and each parameter's importance (Optuna's default
fANOVA evaluator). Nothing here is hand-computed statistics."""

from __future__ import annotations

from typing import Any

from launcher import manifest as mf


def search_figures(man: mf.Manifest) -> tuple[Any | None, Any | None, str]:
    """(best-so-far figure, importance figure, a note when either cannot be drawn yet)."""
    import optuna

    from jobs.study import open_study

    from jobs.study import check_journal

    path = man.dir / "search" / "study.journal"
    check_journal(path, len(man.trials), man.dir)  # damage is named, not drawn around
    if not path.is_file():
        return None, None, "The search has not asked a trial yet."
    study = open_study(path, man.name, man.mode, man.search["method"], man.search["seed"])  # type: ignore[index]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return None, None, "No trial of the search has completed yet."
    history = optuna.visualization.plot_optimization_history(study, target_name=man.metric)
    history.update_layout(template="none", height=380, title=f"{man.metric}: each trial and the best so far")
    importance, note = None, ""
    if len(complete) >= 2 and len({k for t in complete for k in t.params}) >= 2:
        try:
            importance = optuna.visualization.plot_param_importances(study, target_name=man.metric)
            importance.update_layout(template="none", height=340, title="Parameter importances (fANOVA)")
        except (ValueError, RuntimeError) as e:  # e.g. every completed trial has the same value
            note = f"Importances not available yet ({e})."
    else:
        note = "Importances need two completed trials over at least two parameters."
    return history, importance, note
