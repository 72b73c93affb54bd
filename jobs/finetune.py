"""FineTuneJob: one fine-tuning trial as a picklable callable. submitit runs it on SLURM nodes (one task per GPU),
the local executor and `ftl train` run it here.

- Distributed: under submitit with several tasks, RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT are
  exported from SLURM (submitit's TorchDistributedEnvironment), so the engine's Accelerator joins the group with
  no nested `accelerate launch`.
- Preemption / time limit: SLURM sends USR2. The job asks the engine to stop at the next update boundary; the
  engine saves an exact checkpoint on every rank; then submitit's own handler calls `checkpoint()` and requeues.
  The requeued job finds the checkpoint in its run dir and resumes exactly.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any


class FineTuneJob:
    def __init__(self, recipe: str | None, overrides: list[str], run_dir: str | None = None,
                 early_stop: dict[str, Any] | None = None, config: dict[str, Any] | None = None,
                 stop_signals: tuple[int, ...] = (signal.SIGUSR2,), resume_existing: bool = True):  # fmt: skip
        self.recipe = recipe
        self.overrides = list(overrides)
        self.run_dir = run_dir
        self.early_stop = early_stop  # {storage, study, metric, mode, pruner, trial_id}: jobs/early_stop.py
        self.config = config  # a resolved config (`ftl train resume=DIR`), instead of recipe + overrides
        self.stop_signals = stop_signals  # each asks for a checkpoint and a clean stop; SIGINT twice stops at once
        self.resume_existing = resume_existing  # a run already in run_dir is continued (a requeued trial)
        self._stop = False

    def __call__(self) -> dict[str, Any]:
        from core import config as config_lib
        from core import engine
        from core.run_dir import holds_run

        under_submitit = "SUBMITIT_EXECUTOR" in os.environ
        if under_submitit:
            _export_distributed_env()
            print(f"ftl: task {os.environ.get('RANK', '0')}/{os.environ.get('WORLD_SIZE', '1')} on node "
                  f"{os.environ.get('SLURMD_NODENAME', '?')}, job {os.environ.get('SLURM_JOB_ID')}", flush=True)
        if self.config is not None:
            cfg = config_lib.build([self.config], source="config")
        else:
            cfg = config_lib.load(self.recipe, self.overrides)  # type: ignore[arg-type]
        if self.resume_existing and self.run_dir and holds_run(Path(self.run_dir)):
            cfg.resume = self.run_dir  # a requeued or resumed job continues where the last one stopped
        reporter = None
        if self.early_stop and os.environ.get("RANK", "0") == "0":
            from jobs.early_stop import EpochReporter

            reporter = EpochReporter(run_dir=self.run_dir, **self.early_stop)
        handlers = {sig: signal.signal(sig, self._request_stop) for sig in self.stop_signals}
        try:
            result = engine.fit(cfg, self.run_dir, should_stop=lambda: self._stop, on_epoch_end=reporter)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        previous = handlers.get(signal.SIGUSR2)
        if reporter is not None:
            reporter.finish(result)
        if result["status"] == "interrupted" and callable(previous):
            previous(signal.SIGUSR2, None)  # submitit: checkpoint() + requeue (rank 0), then exit
            time.sleep(120)  # other ranks: wait to be ended by the requeue rather than finish as "done"
        return result

    def _request_stop(self, signum, frame) -> None:
        if signum == signal.SIGINT and self._stop:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the checkpoint
        if signum == signal.SIGINT:
            print("\nftl: Ctrl-C: saving a checkpoint at the next update, then stopping (Ctrl-C again: stop now)",
                  file=sys.stderr, flush=True)  # fmt: skip
        self._stop = True

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook: the same job again; its run dir makes it resume from the latest checkpoint."""
        import submitit

        return submitit.helpers.DelayedSubmission(
            FineTuneJob(self.recipe, self.overrides, self.run_dir, self.early_stop, self.config)
        )


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
