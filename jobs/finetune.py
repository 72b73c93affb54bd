"""FineTuneJob: one fine-tuning trial as a picklable callable. submitit runs it on SLURM nodes (one task per GPU),
the local executor and `ftl train` run it here.

- Distributed: under submitit with several tasks, RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT are
  exported from SLURM (submitit's TorchDistributedEnvironment), so the engine's Accelerator joins the group with
  no nested `accelerate launch`.
- Preemption / time limit: SLURM sends USR2 before a time limit (`--signal`), SIGTERM when it preempts or cancels.
  Either asks the engine to stop at the next update boundary; the engine saves an exact checkpoint on every rank.
  After USR2, submitit's own handler calls `checkpoint()` and requeues; after SIGTERM, SLURM requeues the job
  itself (PreemptMode=REQUEUE) or ends it (a cancel). The requeued job resumes from the checkpoint exactly. A
  signal that lands while the job is still starting is a stop request too (jobs/early_signals.py).
- One writer: the job takes its run dir's lease (core/lease.py) before writing anything there; a job that finds
  a newer lease (it was adopted or resumed elsewhere while paused) stops without writing.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from jobs import early_signals

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)  # a time limit's warning (--signal) and a preemption or cancel


class FineTuneJob:
    def __init__(self, recipe: str | None, overrides: list[str], run_dir: str | None = None,
                 early_stop: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                 stop_signals: tuple[int, ...] = STOP_SIGNALS, resume_existing: bool = True, lease=None,
                 requeue: bool = True):  # fmt: skip
        self.recipe = recipe
        self.overrides = list(overrides)
        self.run_dir = run_dir
        self.early_stop = early_stop  # {storage, study, metric, mode, pruner, trial_id}: jobs/early_stop.py
        self.config = config  # a resolved config (`ftl train resume=DIR`), instead of recipe + overrides
        self.stop_signals = stop_signals  # each asks for a checkpoint and a clean stop; SIGINT twice stops at once
        self.resume_existing = resume_existing  # a run already in run_dir is continued (a requeued trial)
        self.lease = lease  # the run dir's lease (core/lease.py), when the caller took it (a search worker)
        self.requeue = requeue  # after USR2, submitit's requeue (a search worker requeues itself, after releasing)
        self._stop: int | None = None  # the signal that asked to stop

    def __call__(self) -> dict[str, Any]:
        # the stop signals are this job's before anything slow happens; one that came during start-up counts
        handlers = {sig: signal.signal(sig, self._request_stop) for sig in self.stop_signals}
        self._stop = next((sig for sig in early_signals.received if sig in self.stop_signals), None)
        try:
            result = self._run()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        previous = handlers.get(signal.SIGUSR2)
        result["stop_signal"] = self._stop
        if result["status"] == "interrupted" and self._stop == signal.SIGUSR2 and callable(previous) and self.requeue:
            previous(signal.SIGUSR2, None)  # submitit: checkpoint() + requeue (rank 0), then exit
            time.sleep(120)  # other ranks: wait to be ended by the requeue rather than finish as "done"
        if result["status"] == "interrupted" and self._stop == signal.SIGTERM and self.requeue:
            wait_to_be_ended()
        return result

    def _run(self) -> dict[str, Any]:
        from core import config as config_lib
        from core import engine
        from core.lease import take
        from core.run_dir import holds_run

        under_submitit = "SUBMITIT_EXECUTOR" in os.environ
        if under_submitit:
            _export_distributed_env()
            print(f"ftl: task {os.environ.get('RANK', '0')}/{os.environ.get('WORLD_SIZE', '1')} on node "
                  f"{os.environ.get('SLURMD_NODENAME', '?')}, job {job_id()}", flush=True)
        main = os.environ.get("RANK", "0") == "0"
        if self.lease is None and self.run_dir and self.resume_existing and main:
            # a sweep's trial (its run dir is the executor's): the lease first, so that even its failure is recorded
            # by the newest attempt only; `ftl train` lets the engine take it once every check has passed
            self.lease = take(self.run_dir, {"job": job_id()})
        try:
            if self.config is not None:
                cfg = config_lib.build([self.config], source="config")
            else:
                cfg = config_lib.load(self.recipe, self.overrides)  # type: ignore[arg-type]
            if self.resume_existing and self.run_dir and holds_run(Path(self.run_dir)):
                cfg.resume = self.run_dir  # a requeued or resumed job continues where the last one stopped
            reporter = None
            if self.early_stop and main:
                from jobs.early_stop import EpochReporter

                reporter = EpochReporter(run_dir=self.run_dir, lease=self.lease, **self.early_stop)
            result = engine.fit(cfg, self.run_dir, should_stop=lambda: self._stop is not None, on_epoch_end=reporter,
                                lease=self.lease)  # fmt: skip
            if reporter is not None:
                reporter.finish(result)
            return result
        except Exception as e:
            self._record_failure(e)
            raise

    def _record_failure(self, error: Exception) -> None:
        """result.json says why the trial failed (its cause in `ftl status`), if this process still owns the run
        dir: a fenced process writes nothing."""
        from core.errors import FtlError
        from core.fileio import write_json_atomic
        from core.lease import LeaseLost

        if self.lease is None or isinstance(error, LeaseLost):
            return
        try:
            self.lease.check()
        except LeaseLost:
            return
        text = str(error) if isinstance(error, FtlError) else f"{type(error).__name__}: {error}"
        write_json_atomic(Path(self.lease.run_dir) / "result.json",
                          {"status": "failed", "error": text.strip()[-2000:], "job": job_id(), "lease": self.lease.token})  # fmt: skip

    def _request_stop(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._stop is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the checkpoint
        if signum == signal.SIGINT:
            print("\nftl: Ctrl-C: saving a checkpoint at the next update, then stopping (Ctrl-C again: stop now)",
                  file=sys.stderr, flush=True)  # fmt: skip
        self._stop = signum

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook: the same job again; its run dir makes it resume from the latest checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(
            FineTuneJob(self.recipe, self.overrides, self.run_dir, self.early_stop, self.config)
        )


END_WAIT_S = 600


def wait_to_be_ended() -> None:
    """After SIGTERM under SLURM (a preemption, a cancel) and a saved checkpoint: keep the allocation until SLURM
    ends the job - it kills it at the end of GraceTime (preemption: then requeues it, PreemptMode=REQUEUE) or
    KillWait (a cancel). A job that exits by itself counts as completed and is not requeued. Locally: return."""
    if not os.environ.get("SLURM_JOB_ID"):
        return
    print("ftl: checkpoint saved after SIGTERM; waiting for SLURM to end the job (it requeues a preempted job)",
          flush=True)  # fmt: skip
    deadline = time.monotonic() + END_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(1)


def job_id() -> str | None:
    """This process's job: a SLURM array task `A_i`, a SLURM job, the local runner's `local-<id>.<attempt>`, or
    None (`ftl train`). result.json carries it, so the launcher never takes one attempt's result for another's."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("FTL_JOB_ID")


def _export_distributed_env() -> None:
    """Several SLURM tasks: export torch.distributed's env:// variables from SLURM's."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        dist = submitit.helpers.TorchDistributedEnvironment()
        try:
            socket.getaddrinfo(dist.master_addr, dist.master_port)
        except socket.gaierror:
            # The node name is not a resolvable host: rendezvous on the batch host's address (rank 0 runs there).
            dist.master_addr = os.environ.get("SLURM_LAUNCH_NODE_IPADDR", dist.master_addr)
        dist.export(set_cuda_visible_devices=False)
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault("ACCELERATE_USE_CPU", "1")  # gloo on CPU nodes
