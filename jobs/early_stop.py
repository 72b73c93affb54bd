"""ASHA-style early stopping of bad trials: Optuna's SuccessiveHalvingPruner over a journal file in the sweep dir.

Each trial reports its metric at every epoch; at the rungs (min_epochs, x reduction_factor, ...) a trial that is
not in the top 1/reduction_factor of those that reached the rung is stopped. The journal file is the only shared
state, so this works offline and across SLURM jobs on a shared file system; a requeued trial keeps its Optuna trial.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class AshaReporter:
    def __init__(self, run_dir: str | None, storage: str, study: str, metric: str = "val_top1", mode: str = "max",
                 min_epochs: int = 1, reduction_factor: int = 3):  # fmt: skip
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.metric = metric
        self.study = optuna.create_study(
            storage=JournalStorage(JournalFileBackend(storage)), study_name=study, load_if_exists=True,
            direction="maximize" if mode == "max" else "minimize",
            pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=min_epochs, reduction_factor=reduction_factor),
        )  # fmt: skip
        marker = Path(run_dir or ".") / "optuna_trial.json"
        if marker.is_file():  # requeued: continue the same Optuna trial
            self.trial = optuna.trial.Trial(self.study, json.loads(marker.read_text())["trial_id"])
        else:
            self.trial = self.study.ask()
            if run_dir:
                Path(run_dir).mkdir(parents=True, exist_ok=True)
                marker.write_text(json.dumps({"trial_id": self.trial._trial_id, "number": self.trial.number}))

    def __call__(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Report the epoch's metric; True when the trial should stop."""
        self.trial.report(metrics[self.metric], epoch)
        return self.trial.should_prune()

    def finish(self, result: dict[str, Any]) -> None:
        import optuna

        if result["status"] == "pruned":
            self.study.tell(self.trial, state=optuna.trial.TrialState.PRUNED)
        elif result["status"] == "completed":
            self.study.tell(self.trial, result.get(self.metric))
