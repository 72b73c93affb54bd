"""The local executor's detached runner: `python -m launcher.local_runner SWEEP_DIR MAX_PARALLEL`.

Runs the jobs queued in the sweep's log (records PENDING with a `local-` job id) as processes forked from a server
that imported the training stack once (launcher/job_processes.py) - a trial as `jobs.run_trial` runs it, a
search's worker slot as `launcher.search_worker` - MAX_PARALLEL at a time, and records each in its run dir
(local_job.json: attempt, state, pid + start time, exit code, requeues) and in logs/local_runner.log.

- One runner per sweep dir: it holds `.local_runner.lock` while alive. A runner started while another is exiting
  waits for that lock instead of exiting, so queued jobs are never left without a runner.
- It starts a job under the sweep lock, after checking that the job's record still asks for this attempt, was
  not cancelled and was not started (by a runner on another host): `ftl cancel` and `ftl resume` decide under
  the same lock. One child per job: a newer attempt waits until the older one's process is gone, and children
  never exceed MAX_PARALLEL, old attempts included.
- Cancel: the job gets SIGTERM (it saves a checkpoint and exits), then SIGKILL after KILL_WAIT_S if it is still
  there - a hung trial or worker ends.
- Time limit, as SLURM + submitit: USR2 `signal_delay_s` before `timeout_min` (the job checkpoints and exits; it is
  started again, up to `max_num_timeout` times), SIGKILL at `timeout_min` (TIMEOUT).
- A runner that finds jobs RUNNING from a runner that died adopts them while their process lives (pid and start
  time match) and marks them LOST when it is gone.
- It leaves when nothing is queued or running, deciding so under the sweep lock (a submitter appends under it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.faults import fault_point
from core.fileio import write_json_atomic
from launcher import job_processes
from launcher import manifest as mf
from launcher.clusters import cluster_from_dict
from launcher.executors import trial_spec
from launcher.local_executor import RUNNER_LOCK, alive, job_id, process_start, read_local_job
from launcher.sweep_lock import sweep_lock

def say(text: str) -> None:
    """A line in logs/local_runner.log: what was started and how it ended, with the time."""
    print(f"ftl runner: {time.time():.3f} {text}", flush=True)


EXIT_STATES = {0: "COMPLETED", 3: "PREEMPTED", 4: "FAILED"}  # see jobs/run_trial.py (4: fenced by a newer attempt)
POLL_S = 0.5
KILL_WAIT_S = float(os.environ.get("FTL_KILL_WAIT_S", "30"))  # SLURM's KillWait default


@dataclass
class Child:
    trial_id: str
    attempt: int
    pid: int
    start: int | None
    started: float  # time.monotonic() at start (the time limit counts from here)
    proc: Any = None  # a job process (launcher/job_processes.py: .exitcode); None: adopted from a runner that died
    requeues: int = 0
    warned: bool = False  # USR2 sent before the time limit
    term_at: float | None = None  # when SIGTERM was sent for a cancel


class Runner:
    def __init__(self, sweep_dir: Path, max_parallel: int):
        self.sweep_dir = sweep_dir
        self.max_parallel = max_parallel
        self.man = mf.read(sweep_dir)
        cluster = cluster_from_dict(self.man.cluster)
        self.limit_s = (cluster.timeout_min or 0) * 60.0  # 0: no time limit (the local default)
        self.warn_s = max(self.limit_s - cluster.signal_delay_s, self.limit_s * 0.5)
        self.max_requeues = cluster.max_num_timeout
        self.running: dict[str, Child] = {}  # by job id: at most one child per job
        self.started: set[tuple[str, int]] = set()  # (job, attempt) this runner (or its local_job.json) started
        self.unstarted: set[tuple[str, int]] = set()  # (job, attempt) whose run dir said: not started yet
        self.adopt_orphans()

    def run_dir(self, trial_id: str) -> Path:
        return self.sweep_dir / self.man.jobs[trial_id].run_dir

    def adopt_orphans(self) -> None:
        """Jobs RUNNING under a runner that died: adopted while their process lives, else LOST."""
        for record in self.man.jobs.values():
            job = read_local_job(self.sweep_dir / record.run_dir) if record.job_id else {}
            if job.get("state") == "RUNNING":
                if alive(job.get("pid"), job.get("start")):
                    self.running[record.id] = Child(record.id, job["attempt"], job["pid"], job["start"],
                                                    time.monotonic(), requeues=job.get("requeues", 0))  # fmt: skip
                else:
                    self.record(record.id, job["attempt"], "LOST", job.get("pid"))

    def record(self, trial_id: str, attempt: int, state: str, pid: int | None, **extra) -> None:
        write_json_atomic(self.run_dir(trial_id) / "local_job.json",
                          {"attempt": attempt, "state": state, "pid": pid, **extra})  # fmt: skip

    def reap(self) -> None:
        for trial_id, child in list(self.running.items()):
            if child.proc is not None:
                code = child.proc.exitcode
                if code is None:
                    continue
                state = EXIT_STATES.get(code, "FAILED")
            elif alive(child.pid, child.start):
                continue
            else:
                code, state = None, "LOST"  # adopted: its exit code went to the runner that started it
            del self.running[trial_id]
            record = self.man.jobs[trial_id]
            if child.warned and state != "COMPLETED":  # its time limit came: checkpointed (3) or killed
                current = record.attempt == child.attempt and not record.cancelled
                if code == 3 and current and child.requeues < self.max_requeues:
                    self.running[trial_id] = self.launch(record, child.requeues + 1)  # requeued, as submitit does
                    continue
                state = "TIMEOUT"
            self.record(trial_id, child.attempt, state, child.pid, start=child.start, returncode=code,
                        ended=time.time(), requeues=child.requeues)  # fmt: skip
            say(f"exit {trial_id} attempt {child.attempt} pid {child.pid} code {code} {state}")

    def police(self) -> None:
        """Cancels (TERM, then KILL after KILL_WAIT_S) and time limits (USR2, then KILL)."""
        now = time.monotonic()
        for trial_id, child in self.running.items():
            record = self.man.jobs[trial_id]
            superseded = record.attempt > child.attempt or record.cancelled
            if superseded and child.term_at is None:
                child.term_at = now
                self._signal(child, signal.SIGTERM)
            elif child.term_at is not None and now - child.term_at > KILL_WAIT_S:
                self._signal(child, signal.SIGKILL)
            elif self.limit_s and now - child.started > self.limit_s:
                self._signal(child, signal.SIGKILL)
                child.warned = True
            elif self.limit_s and now - child.started > self.warn_s and not child.warned:
                child.warned = True
                self._signal(child, signal.SIGUSR2)

    def _signal(self, child: Child, sig: int) -> None:
        if alive(child.pid, child.start):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, sig) if sig == signal.SIGKILL else os.kill(child.pid, sig)

    def waiting(self) -> list[mf.TrialRecord]:
        """Jobs queued for this runner and not started: PENDING with a local job id of their current attempt."""
        out = []
        for r in self.man.jobs.values():
            if r.state != "PENDING" or r.cancelled or r.job_id != job_id(r.id, r.attempt) or (r.id, r.attempt) in self.started:
                continue
            if (r.id, r.attempt) not in self.unstarted:  # its run dir read once: only this runner starts it now
                if read_local_job(self.sweep_dir / r.run_dir).get("attempt", 0) >= r.attempt:
                    self.started.add((r.id, r.attempt))  # started already (another runner, or a run that ended)
                    continue
                self.unstarted.add((r.id, r.attempt))
            out.append(r)
        return out

    def start_some(self) -> None:
        """Start queued jobs up to max_parallel, under the sweep lock (see the module doc)."""
        with sweep_lock(self.sweep_dir):
            mf.catch_up(self.man)
            for record in self.waiting():
                if len(self.running) >= self.max_parallel:
                    break
                if record.id in self.running:
                    continue  # its previous attempt's process is still there: it starts once that one is gone
                self.running[record.id] = self.launch(record)

    def launch(self, record: mf.TrialRecord, requeues: int = 0) -> Child:
        spec = trial_spec(self.man, record)
        run_dir = Path(spec.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "trial.json", {"recipe": spec.recipe, "overrides": spec.overrides,
                                                   "run_dir": spec.run_dir, "early_stop": spec.early_stop,
                                                   "search_slot": spec.search_slot, "sweep_dir": spec.sweep_dir})  # fmt: skip
        module = "launcher.search_worker" if spec.search_slot is not None else "jobs.run_trial"
        proc = job_processes.start(module, run_dir / "trial.json", run_dir / "train.log",
                                   {"FTL_JOB_ID": job_id(record.id, record.attempt)})  # fmt: skip
        child = Child(record.id, record.attempt, proc.pid, process_start(proc.pid), time.monotonic(), proc, requeues)
        self.started.add((record.id, record.attempt))
        say(f"start {record.id} attempt {record.attempt} pid {proc.pid}")
        self.record(record.id, record.attempt, "RUNNING", proc.pid, start=child.start, started=time.time(),
                    requeues=requeues)  # fmt: skip
        return child

    def idle_exit(self, runner_lock) -> bool:
        """Nothing queued or running: leave, unless a submitter queued more meanwhile (decided under its lock)."""
        fault_point("runner-idle")
        with sweep_lock(self.sweep_dir):
            mf.catch_up(self.man)
            if self.waiting() or self.running:
                return False
            fcntl.flock(runner_lock, fcntl.LOCK_UN)  # from here on a submitter starts a new runner
        fault_point("runner-unlocked")
        return True


def main(sweep_dir: str, max_parallel: int) -> int:
    sweep = Path(sweep_dir)
    runner_lock = open(sweep / RUNNER_LOCK, "a")
    fcntl.flock(runner_lock, fcntl.LOCK_EX)  # waits for a runner that is still exiting
    write_json_atomic(sweep / "local_runner.json", {"pid": os.getpid(), "start": process_start(os.getpid()),
                                                    "started": time.time()})  # fmt: skip
    runner = Runner(sweep, max_parallel)
    job_processes.warm(job_processes.preload((runner.man.search or {}).get("program")))  # before any lock
    idle = 0
    while True:
        runner.reap()
        mf.catch_up(runner.man)
        runner.police()
        if runner.waiting() and len(runner.running) < max_parallel:
            runner.start_some()
        idle = 0 if runner.waiting() or runner.running else idle + 1
        if idle >= 3 and runner.idle_exit(runner_lock):
            return 0
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
