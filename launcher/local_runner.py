"""The local executor's detached runner: `python -m launcher.local_runner SWEEP_DIR MAX_PARALLEL`.

Runs the trials queued in SWEEP_DIR/local_queue.log as subprocesses (`python -m jobs.run_trial`), MAX_PARALLEL
at a time, and records each one in its run dir (local_job.json: attempt, state, pid + start time, exit code).

- One runner per sweep dir: it holds `.local_runner.lock` while alive. A runner started while another is exiting
  waits for that lock instead of exiting, so queued trials are never left without a runner.
- It starts a trial under the sweep lock, after checking that the trial's state still asks for this attempt and
  was not cancelled: `ftl cancel` and `ftl resume` decide under the same lock.
- A runner that finds trials RUNNING from a runner that died adopts them while their process lives (pid and
  start time match) and marks them LOST when it is gone.
- It leaves when nothing is queued or running, deciding so under the sweep lock (a submitter appends under it).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.fileio import write_json_atomic
from launcher import manifest as mf
from launcher.executors import trial_spec
from launcher.local_executor import RUNNER_LOCK, alive, process_start, read_local_job, read_queue

EXIT_STATES = {0: "COMPLETED", 3: "PREEMPTED"}  # see jobs/run_trial.py
POLL_S = 0.5


@dataclass
class Child:
    trial_id: str
    attempt: int
    pid: int
    start: int | None
    proc: subprocess.Popen | None = None  # None: adopted from a runner that died


class Runner:
    def __init__(self, sweep_dir: Path, max_parallel: int):
        self.sweep_dir = sweep_dir
        self.max_parallel = max_parallel
        self.sweep = mf.read_sweep(sweep_dir)  # what the sweep is: fixed once written
        self.running: dict[str, Child] = {}
        self.pending: list[tuple[str, int, str]] = []  # (trial id, attempt, batch token), in queue order
        self.batches: dict[str, dict] = {}  # completed batch records by token
        self.seen: set[tuple[str, int]] = set()
        self.offset = 0

    def run_dir(self, trial_id: str) -> Path:
        return self.sweep_dir / self.sweep.jobs[trial_id].run_dir

    def take_new_entries(self) -> None:
        entries, self.offset = read_queue(self.sweep_dir, self.offset)
        for token, _, trial_id, attempt in entries:
            if (trial_id, attempt) in self.seen or trial_id not in self.sweep.jobs:
                continue
            self.seen.add((trial_id, attempt))
            job = read_local_job(self.run_dir(trial_id))
            if job.get("attempt", 0) > attempt or (job.get("attempt") == attempt and job.get("state") != "RUNNING"):
                continue  # superseded, or already ran
            if job.get("attempt") == attempt:  # RUNNING under a runner that died
                if alive(job.get("pid"), job.get("start")):
                    self.running[trial_id] = Child(trial_id, attempt, job["pid"], job["start"])
                else:
                    self.record(trial_id, attempt, "LOST", job.get("pid"))
                continue
            self.pending.append((trial_id, attempt, token))

    def record(self, trial_id: str, attempt: int, state: str, pid: int | None, **extra) -> None:
        write_json_atomic(self.run_dir(trial_id) / "local_job.json",
                          {"attempt": attempt, "state": state, "pid": pid, **extra})  # fmt: skip

    def reap(self) -> None:
        for trial_id, child in list(self.running.items()):
            if child.proc is not None:
                code = child.proc.poll()
                if code is None:
                    continue
                state = EXIT_STATES.get(code, "FAILED")
            elif alive(child.pid, child.start):
                continue
            else:
                code, state = None, "LOST"  # adopted: its exit code went to the runner that started it
            del self.running[trial_id]
            self.record(trial_id, child.attempt, state, child.pid, start=child.start, returncode=code, ended=time.time())

    def start_some(self) -> None:
        """Start queued trials up to max_parallel, under the sweep lock (see the module doc)."""
        with mf.lock(self.sweep_dir):
            while self.pending and len(self.running) < self.max_parallel:
                trial_id, attempt, token = self.pending.pop(0)
                record = mf.read_state(self.sweep_dir, mf.TrialRecord(trial_id, self.sweep.jobs[trial_id].overrides,
                                                                      self.sweep.jobs[trial_id].run_dir),
                                       self.batch(token))  # fmt: skip
                if record.attempt != attempt or record.cancelled or record.state not in ("PENDING", "SUBMITTING"):
                    continue  # cancelled, or resubmitted since (a later queue line carries the new attempt)
                self.running[trial_id] = self.launch(record)

    def batch(self, token: str) -> dict | None:
        """A batch record (kept once it holds job ids: it does not change after that)."""
        if token not in self.batches:
            path = self.sweep_dir / mf.BATCH_DIR / f"{token}.json"
            try:
                data = json.loads(path.read_bytes())
            except (OSError, ValueError):
                return None
            if data.get("job_ids") is None:
                return data
            self.batches[token] = data
        return self.batches[token]

    def launch(self, record: mf.TrialRecord) -> Child:
        spec = trial_spec(self.sweep, record)
        run_dir = Path(spec.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "trial.json", {"recipe": spec.recipe, "overrides": spec.overrides,
                                                   "run_dir": spec.run_dir, "early_stop": spec.early_stop,
                                                   "search_slot": spec.search_slot, "sweep_dir": spec.sweep_dir})  # fmt: skip
        with open(run_dir / "train.log", "a") as log:  # the child keeps its own copy
            proc = subprocess.Popen([sys.executable, "-m", "jobs.run_trial", str(run_dir / "trial.json")], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, "FTL_LOCAL_JOB": f"local-{record.id}.{record.attempt}"})  # fmt: skip
        child = Child(record.id, record.attempt, proc.pid, process_start(proc.pid), proc)
        self.record(record.id, record.attempt, "RUNNING", proc.pid, start=child.start, started=time.time())
        return child

    def idle_exit(self, runner_lock) -> bool:
        """Nothing queued or running: leave, unless a submitter queued more meanwhile (decided under its lock)."""
        with mf.lock(self.sweep_dir):
            self.take_new_entries()
            if self.pending or self.running:
                return False
            fcntl.flock(runner_lock, fcntl.LOCK_UN)  # from here on a submitter starts a new runner
            return True


def main(sweep_dir: str, max_parallel: int) -> int:
    sweep = Path(sweep_dir)
    runner_lock = open(sweep / RUNNER_LOCK, "a")
    fcntl.flock(runner_lock, fcntl.LOCK_EX)  # waits for a runner that is still exiting
    write_json_atomic(sweep / "local_runner.json", {"pid": os.getpid(), "start": process_start(os.getpid()),
                                                    "started": time.time()})  # fmt: skip
    runner = Runner(sweep, max_parallel)
    idle = 0
    while True:
        runner.reap()
        runner.take_new_entries()
        if runner.pending and len(runner.running) < max_parallel:
            runner.start_some()
        idle = 0 if runner.pending or runner.running else idle + 1
        if idle >= 3 and runner.idle_exit(runner_lock):
            return 0
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
