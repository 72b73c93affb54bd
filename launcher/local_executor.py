"""The local backend: trials run as subprocesses of a detached runner (launcher/local_runner.py) on this machine.

Submitting is the batch event itself: a trial whose record is PENDING with a job id `local-<trial id>.<attempt>`
is queued, and the runner (started here when none is alive) reads the sweep's log for such trials. The runner
writes each started job's `local_job.json` in its run dir (attempt, state, pid and the process's start time, exit
code, requeues) - the local executor's accounting, as sacct is SLURM's. Liveness is the runner's flock on
`.local_runner.lock` (one host: a dead runner holds nothing) and, for a job, its pid with the same start time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from launcher import manifest as mf
from launcher.clusters import job_environment
from launcher.executors import Executor, TrialSpec, submission_env

RUNNER_LOCK = ".local_runner.lock"


def job_id(trial_id: str, attempt: int) -> str:
    return f"local-{trial_id}.{attempt}"


def job_folder(job: str) -> str:
    """A job's run dir in the sweep dir: a search's worker slot (w0, w1, ...) or a trial (a 10-digit hash)."""
    return f"workers/{job}" if re.fullmatch(r"w\d+", job) else f"trials/{job}"


def read_local_job(run_dir: Path) -> dict:
    try:
        data = json.loads((run_dir / "local_job.json").read_bytes())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def process_start(pid: int) -> int | None:
    """The start time of a process (clock ticks since boot, /proc/PID/stat field 22); None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces and parentheses
    return int(fields[19]) if fields[0] != "Z" else None  # a zombie has ended


def alive(pid: int | None, start: int | None) -> bool:
    return bool(pid) and start is not None and process_start(pid) == start  # type: ignore[arg-type]


def runner_alive(sweep_dir: Path) -> bool:
    """True while a runner holds the sweep's runner lock (a runner that died holds nothing)."""
    with open(sweep_dir / RUNNER_LOCK, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False


def exit_reason(job: dict) -> str:
    """Why a local job ended badly, from its exit code: a signal (SIGKILL often means the kernel's OOM killer)."""
    code = job.get("returncode")
    if job.get("state") == "TIMEOUT":
        return "time limit reached (timeout_min): killed"
    if isinstance(code, int) and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        return f"killed by {name}" + (" (out of memory?)" if code == -signal.SIGKILL else "")
    if code == 2:
        return "a configuration or data error (exit 2): see its train.log"
    return f"exit code {code}" if code not in (None, 0) else ""


class LocalExecutor(Executor):
    def _submit_batch(self, specs: list[TrialSpec], job_name: str) -> list[str]:
        return [job_id(s.id, s.attempt) for s in specs]  # queued by the batch event the caller appends next

    def find_jobs(self, man: mf.Manifest, tokens: set[str]) -> dict[str, dict[int, str]]:
        return {}  # nothing is queued before the batch event with the job ids is in the log

    def states(self, man: mf.Manifest, records: list[mf.TrialRecord]) -> dict[str, str]:
        """A job the runner has not started is PENDING (CANCELLED once cancelled: it never will be); a started
        one is what its local_job.json says, except that a RUNNING process which is gone is LOST when no runner is
        alive to record how it ended."""
        out = {}
        runner = None  # looked up once, if needed
        for record in records:
            job = read_local_job(self.sweep_dir / record.run_dir)
            if job.get("attempt") != record.attempt:
                out[record.job_id] = "CANCELLED" if record.cancelled else "PENDING"
            elif job.get("state") == "RUNNING" and not alive(job.get("pid"), job.get("start")):
                runner = runner_alive(self.sweep_dir) if runner is None else runner
                out[record.job_id] = "RUNNING" if runner else "LOST"  # a live runner records the exit in a moment
            else:
                out[record.job_id] = job.get("state", "UNKNOWN")
                self.reasons[record.job_id or ""] = exit_reason(job)
        return out  # type: ignore[return-value]

    def cancel(self, job_ids: list[str]) -> None:
        """Queued jobs are skipped by the runner (their records are marked cancelled first, under the lock the
        runner starts jobs under); a running one gets SIGTERM now - it saves a checkpoint at its next update and
        exits - and the runner kills it if it is still alive KILL_WAIT_S later (a hung trial)."""
        for jid in job_ids:
            trial_id, _, attempt = jid.removeprefix("local-").rpartition(".")
            job = read_local_job(self.sweep_dir / job_folder(trial_id))
            if job.get("attempt") == int(attempt or -1) and alive(job.get("pid"), job.get("start")):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(job["pid"], signal.SIGTERM)

    def after_change(self, man: mf.Manifest) -> None:
        """Start a runner when jobs wait for one and none is alive (a killed runner is replaced here)."""
        waiting = any(r.state in ("PENDING", "RUNNING", "CANCELLING") and r.job_id and r.job_id.startswith("local-")
                      for r in man.jobs.values())  # fmt: skip
        if waiting and not runner_alive(self.sweep_dir):
            start_runner(self.sweep_dir, self.cluster.max_parallel, job_environment(self.cluster))



def start_runner(sweep_dir: Path, max_parallel: int, env: tuple[dict[str, str], dict[str, str]]) -> None:
    """A detached runner (its own session: a Ctrl-C of this command does not reach it)."""
    public, secret = env
    with submission_env(secret):  # an enclosing job's SLURM_*, SUBMITIT_*, RANK, MASTER_ADDR ... stay out
        child_env = {**os.environ, **public}
    with open(sweep_dir / "logs" / "local_runner.log", "a") as log:  # the child keeps its own copy
        subprocess.Popen([sys.executable, "-m", "launcher.local_runner", str(sweep_dir.resolve()), str(max_parallel)],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True, env=child_env)  # fmt: skip
