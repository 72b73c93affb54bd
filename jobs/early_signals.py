"""Stop signals that land while a job is still starting, before its own handlers exist.

SLURM preempts with SIGTERM (USR2 with `--signal`, before a time limit), and Python's default for both is to die:
a signal during the seconds of imports and unpickling would end the trial FAILED instead of requeued. `hold()` is
the first thing a job process runs (jobs/boot.py under SLURM, jobs/run_trial.py locally): from then on such a
signal is recorded in `received`, and the job honours it as a stop request once it can (jobs/finetune.py).
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
received: list[int] = []


def _record(signum, frame) -> None:
    received.append(signum)


def hold() -> list[int]:
    """Record the stop signals from now on (until the job installs its own handlers); returns the record."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _record)
    return received
