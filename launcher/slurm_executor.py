"""The SLURM backend: submitit job arrays (never a hand-written sbatch).

One array per batch, named `ftl-<sweep>-<uid>.<token>` so the jobs of a batch can be found again after a crash;
batches are MaxArraySize long and held back beyond MaxJobCount. States come from one `sacct` call for all arrays;
jobs accounting does not report (purged, or slurmdbd behind) are looked up in the controller with `squeue`.
The submitting environment is cleaned of an enclosing job's variables (submitit's `helpers.clean_env`); the
cluster's secrets travel in the environment sbatch exports, never in a file.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shlex
import subprocess
import sys

from core.errors import FtlError
from launcher import manifest as mf
from launcher import states as st
from launcher.clusters import job_environment, tasks_per_node
from launcher.executors import Executor, TrialSpec, submission_env


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise FtlError(f"SLURM's {cmd[0]} is not on PATH: run on a login node, or use --cluster local") from None
    except subprocess.TimeoutExpired:
        raise FtlError(f"{cmd[0]} did not answer in {timeout:.0f}s: is slurmctld up? (scontrol ping)") from None


def slurm_limits() -> tuple[int, int]:
    """(MaxArraySize, MaxJobCount) from `scontrol show config`."""
    proc = _run(["scontrol", "show", "config"], 30)
    if proc.returncode != 0:
        raise FtlError(f"scontrol show config failed: {proc.stderr.strip() or proc.returncode}")
    found = dict(re.findall(r"^(MaxArraySize|MaxJobCount)\s*=\s*(\d+)", proc.stdout, re.M))
    return int(found.get("MaxArraySize", 1001)), int(found.get("MaxJobCount", 10000))


def queued_jobs() -> int:
    """Jobs (array tasks counted one by one) now in the queue, for the MaxJobCount budget."""
    return len(_run(["squeue", "-h", "-r", "-o", "%i"], 60).stdout.split())


def check_partition(partition: str | None) -> None:
    if partition is None:
        return
    out = _run(["sinfo", "-h", "-o", "%R"], 30).stdout.split()
    if partition not in out:
        raise FtlError(f"partition '{partition}' does not exist on this cluster; partitions: {', '.join(sorted(set(out)))}")


def expand_job_ids(job_id: str) -> list[str]:
    """'17_[0-2,5%2]' -> ['17_0', '17_1', '17_2', '17_5'] (submitit's `read_job_id`); other ids unchanged."""
    from submitit.slurm.slurm import read_job_id

    out = []
    for parts in read_job_id(job_id):
        if len(parts) == 3:
            out += [f"{parts[0]}_{i}" for i in range(int(parts[1]), int(parts[2]) + 1)]
        else:
            out.append("_".join(parts))
    return out


class SlurmExecutor(Executor):
    def limits(self) -> tuple[int, int, str]:
        check_partition(self.cluster.partition)
        max_array, max_jobs = slurm_limits()
        why = f"MaxJobCount={max_jobs} and every array task counts as a job"
        return max(1, max_array), max_jobs - queued_jobs(), why  # array indices run 0..MaxArraySize-1

    def check_request(self) -> None:
        """`sbatch --test-only` of one trial's own job script (submitit writes it; nothing is queued): a request the
        cluster can never satisfy - more nodes or GPUs than the partition has, an account or QOS it does not know -
        is refused now instead of pending forever."""
        import tempfile

        text = self._submitit(1, "ftl-test-only")._make_submission_file_text("true", "test-only")  # submitit's own
        _, secret = job_environment(self.cluster)
        with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="ftl-test-only-") as script:
            script.write(text)
            script.flush()
            with submission_env(secret):  # the environment a submission has (an enclosing job's SBATCH_* removed)
                proc = _run(["sbatch", "--test-only", script.name])
        if proc.returncode != 0:
            reason = slurm_message(RuntimeError(proc.stderr or proc.stdout))
            raise FtlError(f"cluster {self.cluster.name}: SLURM would never start a trial as configured "
                           f"(nodes {self.cluster.nodes}, gpus_per_node {self.cluster.gpus_per_node}, partition "
                           f"{self.cluster.partition}): {reason}; change the cluster config")  # fmt: skip

    def _submitit(self, array_size: int, job_name: str):
        import submitit

        c = self.cluster
        public, _ = job_environment(c)  # the secrets go through sbatch's environment, not the script
        setup = [*c.setup, *(f"export {k}={shlex.quote(str(v))}" for k, v in public.items())]
        # one log folder per array (logs/<array id>/<job id>_<task>_log.out): not a directory per trial
        # the task's Python starts in jobs.boot: it owns SIGTERM / USR2 from its first instruction (a preemption
        # during start-up is a stop request, not a death)
        python = f"{c.python or shlex.quote(sys.executable)} -m jobs.boot"
        executor = submitit.SlurmExecutor(folder=self.sweep_dir / "logs" / "%A", max_num_timeout=c.max_num_timeout,
                                          python=python)  # fmt: skip
        params = dict(nodes=c.nodes, ntasks_per_node=tasks_per_node(c), time=math.ceil(c.timeout_min or 60),
                      partition=c.partition, array_parallelism=min(c.array_parallelism, array_size), setup=setup,
                      job_name=job_name, additional_parameters=dict(c.additional_parameters),
                      signal_delay_s=c.signal_delay_s, **c.slurm)  # fmt: skip
        if c.cpus_per_task is not None:
            params["cpus_per_task"] = c.cpus_per_task
        if c.mem_gb is not None:
            params["mem"] = f"{int(c.mem_gb * 1024)}M"
        if c.gpus_per_node:
            params["gpus_per_node"] = c.gpus_per_node
        for key in ("account", "qos", "constraint", "exclude", "gres"):
            if getattr(c, key):
                params[key] = getattr(c, key)
        executor.update_parameters(**params)
        return executor

    def _submit_batch(self, specs: list[TrialSpec], job_name: str) -> list[str]:
        import submitit

        executor = self._submitit(len(specs), job_name)
        _, secret = job_environment(self.cluster)
        try:  # secrets reach the job through sbatch's --export=ALL; sbatch's complaints come back in the error
            with submission_env(secret), contextlib.redirect_stderr(io.StringIO()), executor.batch():
                jobs = [executor.submit(job_of(s)) for s in specs]
        except submitit.core.utils.FailedJobError as e:  # sbatch refused: SLURM's own words
            raise FtlError(f"sbatch failed: {slurm_message(e)}") from None
        return [job.job_id for job in jobs]

    def find_jobs(self, man: mf.Manifest, tokens: set[str]) -> dict[str, dict[int, str]]:
        """The controller's queue (squeue) and accounting (sacct) for jobs named after these tokens."""
        names = {f"{man.job_name}.{t}": t for t in tokens}
        if not names:
            return {}
        out: dict[str, dict[int, str]] = {}
        queue = _run(["squeue", "-h", "-r", "-o", "%i|%j", f"--name={','.join(names)}"]).stdout
        acct = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,JobName", "-S", "now-30days", f"--name={','.join(names)}"]).stdout
        for line in (queue + "\n" + acct).splitlines():
            job, _, name = line.partition("|")
            if name.strip() not in names:
                continue
            for task in expand_job_ids(job.strip()):
                array, _, index = task.partition("_")
                out.setdefault(names[name.strip()], {})[int(index or 0)] = task
        return out

    def adoptable(self, job_id: str) -> bool:
        """submitit moves each task's pickle into place after sbatch returns: a job without it cannot run."""
        return (self.sweep_dir / "logs" / job_id.split("_")[0] / f"{job_id}_submitted.pkl").is_file()

    def states(self, man: mf.Manifest, records: list[mf.TrialRecord]) -> dict[str, str]:
        job_ids = [r.job_id for r in records if r.job_id]
        arrays = sorted({j.split("_")[0] for j in job_ids})
        found: dict[str, str] = {}
        for start in range(0, len(arrays), 1000):  # keep the command line short
            proc = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State,ExitCode", "-j", ",".join(arrays[start : start + 1000])])
            if proc.returncode != 0:
                raise FtlError(f"sacct failed: {proc.stderr.strip()} (is slurmdbd up?)")
            _read_states(proc.stdout, found)
            self.reasons.update(_exit_reasons(proc.stdout))
        for job_id in job_ids:  # an array cancelled before any task started is one record, under the bare id
            if job_id not in found and job_id.split("_")[0] in found:
                found[job_id] = found[job_id.split("_")[0]]
        missing = [j for j in job_ids if j not in found]
        coming_back = [j for j, s in found.items() if st.normalise(s) in REQUEUED_AFTER]
        if missing or coming_back or any(s.startswith("PENDING") for s in found.values()):
            # the controller knows what accounting does not: jobs purged from it (or not yet in it), holds, and a
            # job preempted (or whose node failed) that it is requeueing - accounting already says PREEMPTED
            queue = _run(["squeue", "-h", "-o", "%i|%T|%r", "-u", str(os.getuid())]).stdout
            _read_states(queue, found, only={*missing, *coming_back})
            _read_holds(queue, found)
        return {j: found.get(j, "UNKNOWN") for j in job_ids}

    def cancel(self, job_ids: list[str]) -> None:
        for start in range(0, len(job_ids), 1000):
            _run(["scancel", *job_ids[start : start + 1000]])


def job_of(spec: TrialSpec):
    """What a SLURM task runs: one trial, or an adaptive search's worker slot."""
    from jobs.finetune import FineTuneJob
    from launcher.search_worker import SearchWorker

    if spec.search_slot is not None:
        return SearchWorker(spec.sweep_dir, spec.search_slot)
    return FineTuneJob(spec.recipe, spec.overrides, spec.run_dir, spec.early_stop)


def _read_states(text: str, found: dict[str, str], only: set[str] | None = None) -> None:
    for line in text.splitlines():
        job, state = (line.split("|") + ["", ""])[:2]
        if not job.strip() or "." in job:
            continue
        for task in expand_job_ids(job.strip()):  # pending tasks come folded: 17_[0-5,7%2]
            if only is None or task in only:
                found[task] = state.strip()


def _exit_reasons(text: str) -> dict[str, str]:
    """{job id: 'exit code N' or 'killed by signal N'} for jobs that ended badly (sacct's ExitCode is code:signal)."""
    out = {}
    for line in text.splitlines():
        job, state, code = (line.split("|") + ["", "", ""])[:3]
        exit_code, _, sig = code.partition(":")
        reason = f"killed by signal {sig}" if sig not in ("", "0") else f"exit code {exit_code}" if exit_code not in ("", "0") else ""
        if reason and "." not in job:
            for task in expand_job_ids(job.strip()):
                out[task] = f"{st.normalise(state).lower()}, {reason}"
    return out


REQUEUED_AFTER = frozenset({"PREEMPTED", "NODE_FAIL"})  # final in accounting, but SLURM may requeue the job


HOLD_REASONS = {"JobHeldUser": "HELD", "JobHeldAdmin": "HELD", "job requeued in held state": "REQUEUE_HOLD"}


def _read_holds(queue: str, found: dict[str, str]) -> None:
    """A pending job held by a user, an admin or a requeue-hold will not start by itself: state it so."""
    for line in queue.splitlines():
        job, state, reason = (line.split("|") + ["", "", ""])[:3]
        held = HOLD_REASONS.get(reason.strip().strip("()"))
        if held and state.strip() == "PENDING":
            for task in expand_job_ids(job.strip()):
                if task in found:
                    found[task] = held


def slurm_message(error: Exception) -> str:
    """SLURM's own words: its 'sbatch: error/fatal:' lines (else any 'sbatch: ...' line, e.g. "unrecognized
    option"), joined - never its closing 'Try "sbatch --help"'."""
    text = str(error)
    lines = [m.strip() for m in re.findall(r"sbatch: (?:error|fatal): (.*)", text)]
    lines = lines or [m.strip() for m in re.findall(r"sbatch: (.*)", text)]
    if lines:
        return "; ".join(dict.fromkeys(lines))
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith(("Command", "$", "Try "))]  # fmt: skip
    return lines[-1] if lines else type(error).__name__

