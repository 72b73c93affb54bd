"""Early stopping of bad trials: an Optuna pruner (successive halving / ASHA by default, Hyperband or median) over
the journal file in the sweep dir, reported at every epoch.

A grid sweep's trial opens its own Optuna trial here (and tells it at the end); a search trial reports to the trial
its worker asked for (`trial_id`), and the worker tells. The journal file is the only shared state, so this works
offline and across SLURM jobs on a shared file system; a requeued trial keeps its Optuna trial.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class EpochReporter:
    def __init__(self, run_dir: str | None, storage: str, study: str, metric: str = "val_top1", mode: str = "max",
                 pruner: dict[str, Any] | None = None, trial_id: int | None = None, min_epochs: int = 1,
                 reduction_factor: int = 3, lease=None):  # fmt: skip
        import optuna

        from jobs.study import open_study

        pruner = pruner or {"type": "asha", "min_epochs": min_epochs, "reduction_factor": reduction_factor}
        self.metric, self.study = metric, open_study(storage, study, mode, pruner=pruner)
        self.owned = trial_id is None  # a grid trial's own Optuna trial (told here); a search worker's (told there)
        self.lease = lease  # reports and tells only while this process owns the run dir (core/lease.py)
        marker = Path(run_dir or ".") / "optuna_trial.json"
        if trial_id is not None:
            self.trial = optuna.trial.Trial(self.study, trial_id)
        elif marker.is_file():  # requeued: continue the same Optuna trial
            self.trial = optuna.trial.Trial(self.study, json.loads(marker.read_text())["trial_id"])
        else:
            self.trial = self.study.ask()
            if run_dir:
                from core.fileio import write_json_atomic

                if lease is not None:
                    lease.check()
                write_json_atomic(marker, {"trial_id": self.trial._trial_id, "number": self.trial.number})

    def __call__(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Report the epoch's metric; True when the trial should stop."""
        import warnings

        if self.lease is not None:
            self.lease.check()
        with warnings.catch_warnings():  # a resumed trial reports its last epoch again: Optuna keeps the first
            warnings.simplefilter("ignore")
            self.trial.report(metrics[self.metric], epoch)
        return self.trial.should_prune()

    def finish(self, result: dict[str, Any]) -> None:
        import optuna

        if not self.owned:
            return
        if self.lease is not None:
            self.lease.check()
        if result["status"] == "pruned":
            self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
        elif result["status"] == "completed":
            self.study.tell(self.trial, result.get(self.metric))
