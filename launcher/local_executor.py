"""The local backend: trials run as subprocesses of a detached runner (launcher/local_runner.py) on this machine.

Submitting appends lines `<token> <index> <trial id> <attempt>` to SWEEP_DIR/local_queue.log (one write per
batch, under the sweep lock) and makes sure a runner is alive. The runner writes each started trial's
`trials/<id>/local_job.json` (attempt, state, pid and the process's start time, exit code). Liveness is the
runner's lock on `.local_runner.lock` (a dead runner holds nothing) and, for a trial, its pid with the same start
time (pids are reused). A job id is `local-<trial id>.<attempt>`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from launcher import manifest as mf
from launcher.clusters import job_environment
from launcher.executors import Executor, TrialSpec, submission_env

QUEUE = "local_queue.log"
RUNNER_LOCK = ".local_runner.lock"


def job_id(trial_id: str, attempt: int) -> str:
    return f"local-{trial_id}.{attempt}"


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


def read_queue(sweep_dir: Path, offset: int = 0) -> tuple[list[tuple[str, int, str, int]], int]:
    """Complete lines of the queue from `offset`: [(token, index, trial id, attempt)] and the new offset."""
    try:
        with open(sweep_dir / QUEUE, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1  # a half-written last line (a killed writer) is left for later
    entries = []
    for line in data[:end].decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
            entries.append((parts[0], int(parts[1]), parts[2], int(parts[3])))
    return entries, offset + end


class LocalExecutor(Executor):
    def _submit_batch(self, specs: list[TrialSpec], job_name: str) -> list[str]:
        token = job_name.rsplit(".", 1)[-1]
        lines = [f"{token} {index} {spec.id} {spec.attempt}\n" for index, spec in enumerate(specs)]
        fd = os.open(self.sweep_dir / QUEUE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, "".join(lines).encode())  # one append: all of the batch or (killed) none of it
        finally:
            os.close(fd)
        return [job_id(s.id, s.attempt) for s in specs]

    def find_jobs(self, man: mf.Manifest, tokens: set[str]) -> dict[str, dict[int, str]]:
        entries, _ = read_queue(self.sweep_dir)
        out: dict[str, dict[int, str]] = {}
        for token, index, trial_id, attempt in entries:
            if token in tokens:
                out.setdefault(token, {})[index] = job_id(trial_id, attempt)
        return out

    def states(self, man: mf.Manifest, records: list[mf.TrialRecord]) -> dict[str, str]:
        """A trial the runner has not started is PENDING; a started one is what its local_job.json says, except
        that a RUNNING process which is gone is LOST when no runner is alive to record how it ended."""
        out = {}
        runner = None  # looked up once, if needed
        for record in records:
            job = read_local_job(self.sweep_dir / record.run_dir)
            if job.get("attempt") != record.attempt:
                out[record.job_id] = "PENDING"
            elif job.get("state") == "RUNNING" and not alive(job.get("pid"), job.get("start")):
                runner = runner_alive(self.sweep_dir) if runner is None else runner
                out[record.job_id] = "RUNNING" if runner else "LOST"  # a live runner records the exit in a moment
            else:
                out[record.job_id] = job.get("state", "UNKNOWN")
        return out  # type: ignore[return-value]

    def cancel(self, job_ids: list[str]) -> None:
        """Queued trials are skipped by the runner (their state is marked cancelled first, under the same lock the
        runner starts trials under); a running one gets USR2, as SLURM sends before a time limit: it checkpoints
        at its next update and exits."""
        for jid in job_ids:
            trial_id, _, attempt = jid.removeprefix("local-").rpartition(".")
            job = read_local_job(self.sweep_dir / "trials" / trial_id)
            if job.get("attempt") == int(attempt or -1) and alive(job.get("pid"), job.get("start")):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(job["pid"], signal.SIGUSR2)

    def after_change(self, man: mf.Manifest) -> None:
        """Start a runner when trials wait for one and none is alive (a killed runner is replaced here)."""
        waiting = any(r.state == "PENDING" and r.job_id and not r.cancelled for r in man.jobs.values())
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
