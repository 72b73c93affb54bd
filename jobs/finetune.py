"""FineTuneJob: one fine-tuning trial as a picklable callable (submitit runs it on a node; the CLI runs it here).

On SIGUSR2 (SLURM's warning before a time limit or preemption) or SIGTERM the engine is asked to stop at the
next update boundary; it saves a checkpoint and returns, and `checkpoint()` hands submitit a resubmission that
resumes the run exactly.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any


class FineTuneJob:
    def __init__(self, config: dict[str, Any], run_dir: str | None = None):
        self.config = config  # a plain dict: pickles without OmegaConf and survives version changes
        self.run_dir = run_dir
        self._stop = False

    def __call__(self) -> dict[str, Any]:
        from core import config as config_lib
        from core import engine

        cfg = config_lib.build([self.config], source="job config")
        if self.run_dir and (Path(self.run_dir) / "checkpoints" / "latest.json").is_file():
            cfg.resume = self.run_dir  # a requeued job continues where the last one stopped
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGUSR2,)}
        try:
            return engine.fit(cfg, self.run_dir, should_stop=lambda: self._stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _request_stop(self, signum, frame) -> None:
        self._stop = True

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook: resubmit this job; its run dir makes it resume from the latest checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(FineTuneJob(self.config, self.run_dir))
