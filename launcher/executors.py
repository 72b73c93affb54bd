"""Executors: where trials run. One small interface, two backends.

- LocalExecutor: a detached runner process (launcher/local_runner.py) runs trials as subprocesses, max_parallel at
  a time; `submit` returns at once.
- SlurmExecutor: submitit job arrays (never a hand-written sbatch): one array per sweep, throttled by
  array_parallelism, split into several arrays when the sweep exceeds the cluster's MaxArraySize, held back
  beyond MaxJobCount. States come from one `sacct` call for all jobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import FtlError
from core.fileio import write_json_atomic
from launcher.clusters import ClusterConfig, tasks_per_node
from launcher.local_runner import read_state


@dataclass
class TrialSpec:
    id: str
    recipe: str
    overrides: list[str]
    run_dir: str  # absolute
    early_stop: dict | None = None


class Executor(ABC):
    def __init__(self, cluster: ClusterConfig, sweep_dir: Path):
        self.cluster = cluster
        self.sweep_dir = Path(sweep_dir)

    @abstractmethod
    def submit(self, trials: list[TrialSpec]) -> tuple[dict[str, str], str]:
        """Queue trials; returns ({trial id: job id}, a note for the user, e.g. why some were held back)."""

    @abstractmethod
    def states(self, job_ids: list[str]) -> dict[str, str]:
        """{job id: SLURM-style state} for all of job_ids in one query."""

    @abstractmethod
    def cancel(self, job_ids: list[str]) -> None: ...


def create_executor(cluster: ClusterConfig, sweep_dir: Path) -> Executor:
    return {"local": LocalExecutor, "slurm": SlurmExecutor}[cluster.executor](cluster, sweep_dir)


# ---------------------------------------------------------------- local


class LocalExecutor(Executor):
    """Trials as subprocesses of a detached runner; job ids are `local-<trial id>`."""

    def submit(self, trials: list[TrialSpec]) -> tuple[dict[str, str], str]:
        env = {**self.cluster.env, "WANDB_MODE": self.cluster.wandb_mode}
        for t in trials:
            Path(t.run_dir).mkdir(parents=True, exist_ok=True)
            spec = {"recipe": t.recipe, "overrides": t.overrides, "run_dir": t.run_dir, "early_stop": t.early_stop,
                    "env": env}  # fmt: skip
            write_json_atomic(Path(t.run_dir) / "trial.json", spec)
            write_json_atomic(Path(t.run_dir) / "local_state.json", {"state": "PENDING"})
        queue = self.sweep_dir / "local_queue.json"
        pending = json.loads(queue.read_text()) if queue.is_file() else []
        write_json_atomic(queue, pending + [t.run_dir for t in trials if t.run_dir not in pending])
        with open(self.sweep_dir / "logs" / "local_runner.log", "a") as log:  # the child keeps its own copy
            subprocess.Popen([sys.executable, "-m", "launcher.local_runner", str(self.sweep_dir),
                              str(self.cluster.max_parallel)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=_clean_env())  # fmt: skip
        return {t.id: f"local-{t.id}" for t in trials}, ""

    def states(self, job_ids: list[str]) -> dict[str, str]:
        out = {}
        for job_id in job_ids:
            out[job_id] = read_state(self.sweep_dir / "trials" / job_id.removeprefix("local-")).get("state", "UNKNOWN")
        return out

    def cancel(self, job_ids: list[str]) -> None:
        runner = self.sweep_dir / "local_runner.pid"
        if runner.is_file():  # stop the runner first so it starts nothing new
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(runner.read_text()), signal.SIGTERM)
        for job_id in job_ids:
            trial_dir = self.sweep_dir / "trials" / job_id.removeprefix("local-")
            state = read_state(trial_dir)
            if state.get("state") == "RUNNING" and state.get("pid"):
                with contextlib.suppress(ProcessLookupError):
                    # as SLURM does before a time limit: the trial checkpoints at its next update and exits
                    os.kill(state["pid"], signal.SIGUSR2)
            if state.get("state") in ("PENDING", "RUNNING"):
                write_json_atomic(trial_dir / "local_state.json", {**state, "state": "CANCELLED"})


# ---------------------------------------------------------------- SLURM


KEEP = ("SLURM_CONF",)  # client configuration, not the state of an enclosing job


def _clean_env() -> dict[str, str]:
    """This environment without an enclosing job's SLURM_*/SBATCH_*/SUBMITIT_* variables, which would leak in."""
    prefixes = ("SLURM_", "SBATCH_", "SRUN_", "SUBMITIT_")
    return {k: v for k, v in os.environ.items() if k in KEEP or not k.startswith(prefixes)}


@contextlib.contextmanager
def _without_slurm_env() -> Iterator[None]:
    saved, clean = dict(os.environ), _clean_env()
    os.environ.clear()
    os.environ.update(clean)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def slurm_limits() -> tuple[int, int]:
    """(MaxArraySize, MaxJobCount) from `scontrol show config`."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30, check=True).stdout
    except FileNotFoundError:
        raise FtlError("SLURM's scontrol is not on PATH: run on a login node, or use --cluster local") from None
    except subprocess.CalledProcessError as e:
        raise FtlError(f"scontrol show config failed: {e.stderr.strip() or e}") from None
    found = dict(re.findall(r"^(MaxArraySize|MaxJobCount)\s*=\s*(\d+)", out, re.M))
    return int(found.get("MaxArraySize", 1001)), int(found.get("MaxJobCount", 10000))


def queued_jobs() -> int:
    """Jobs (array tasks counted one by one) now in the queue, for the MaxJobCount budget."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60).stdout
    return len(out.split())


def check_partition(partition: str | None) -> None:
    if partition is None:
        return
    out = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True, timeout=30).stdout.split()
    if partition not in out:
        raise FtlError(f"partition '{partition}' does not exist on this cluster; partitions: {', '.join(sorted(set(out)))}")


class SlurmExecutor(Executor):
    def _submitit(self, array_size: int):
        import submitit

        c = self.cluster
        # the cluster's env is exported by the sbatch script itself: in place before Python (and torch) start
        env = {**c.env, "WANDB_MODE": c.wandb_mode}
        setup = [*c.setup, *(f"export {k}={shlex.quote(str(v))}" for k, v in env.items())]
        executor = submitit.SlurmExecutor(folder=self.sweep_dir / "logs" / "%j", max_num_timeout=c.max_requeues,
                                          python=c.python)  # fmt: skip
        extra = {k: v for k, v in c.sbatch.items()}
        params = dict(nodes=c.nodes, ntasks_per_node=tasks_per_node(c), cpus_per_task=c.cpus_per_task,
                      mem=f"{int(c.mem_gb * 1024)}M", time=c.time_min, partition=c.partition,
                      array_parallelism=min(c.array_parallelism, array_size), setup=setup,
                      job_name=f"ftl-{self.sweep_dir.name}", additional_parameters=extra,
                      signal_delay_s=90)  # fmt: skip
        if c.gpus_per_node:
            params["gpus_per_node"] = c.gpus_per_node
        for key in ("account", "qos", "constraint"):
            if getattr(c, key):
                params[key] = getattr(c, key)
        executor.update_parameters(**params)
        return executor

    def submit(self, trials: list[TrialSpec]) -> tuple[dict[str, str], str]:
        from jobs.finetune import FineTuneJob

        check_partition(self.cluster.partition)
        max_array, max_jobs = slurm_limits()
        budget = max_jobs - queued_jobs()
        chunk = max(1, max_array)  # array indices run 0..MaxArraySize-1
        ids: dict[str, str] = {}
        note = ""
        with _without_slurm_env():
            for start in range(0, len(trials), chunk):
                part = trials[start : start + chunk]
                if len(part) > budget:
                    held = len(trials) - start
                    note = (f"{held} trials held back: MaxJobCount={max_jobs} and every array task counts as a job; "
                            f"run `ftl resume {self.sweep_dir}` when the queue drains")  # fmt: skip
                    break
                executor = self._submitit(len(part))
                try:
                    with executor.batch():
                        jobs = [executor.submit(FineTuneJob(t.recipe, t.overrides, t.run_dir, t.early_stop))
                                for t in part]  # fmt: skip
                except Exception as e:  # sbatch refused: show SLURM's own message
                    raise FtlError(f"sbatch failed: {_slurm_message(e)}") from None
                ids.update({t.id: job.job_id for t, job in zip(part, jobs)})
                budget -= len(part)
        return ids, note

    def states(self, job_ids: list[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        arrays = sorted({j.split("_")[0] for j in job_ids})
        proc = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        if proc.returncode != 0:
            raise FtlError(f"sacct failed: {proc.stderr.strip()}")
        found = {}
        for line in proc.stdout.splitlines():
            job, _, state = line.partition("|")
            for task in expand_array_ids(job):  # pending tasks come folded: 17_[0-5,7%2]
                found[task] = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
        return {j: found.get(j, "UNKNOWN") for j in job_ids}

    def cancel(self, job_ids: list[str]) -> None:
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=120)


def expand_array_ids(job_id: str) -> list[str]:
    """'17_[0-2,5%2]' -> ['17_0', '17_1', '17_2', '17_5']; any other id unchanged."""
    match = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not match:
        return [job_id]
    base, ranges = match.groups()
    out = []
    for part in ranges.split(","):
        lo, _, hi = part.partition("-")
        out += [f"{base}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _slurm_message(error: Exception) -> str:
    """SLURM's own words: its 'sbatch: error/fatal:' lines, joined."""
    text = str(error)
    lines = [m.strip() for m in re.findall(r"sbatch: (?:error|fatal): (.*)", text)]
    if lines:
        return "; ".join(dict.fromkeys(lines))
    return text.strip().splitlines()[-1] if text.strip() else type(error).__name__
