"""The local executor's detached runner: `python -m launcher.local_runner SWEEP_DIR MAX_PARALLEL`.

Runs the queued trials of a sweep dir as subprocesses (`python -m jobs.run_trial`), MAX_PARALLEL at a time, and
records each one's state in its run dir (local_state.json). One runner per sweep dir (a lock); a second one exits
at once and the first picks up what was queued meanwhile.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from core.fileio import write_json_atomic

EXIT_STATES = {0: "COMPLETED", 3: "PREEMPTED"}  # see jobs/run_trial.py


def read_state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "local_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def start(run_dir: Path) -> subprocess.Popen:
    spec = json.loads((run_dir / "trial.json").read_text())
    with open(run_dir / "train.log", "a") as log:  # the child keeps its own copy
        proc = subprocess.Popen([sys.executable, "-m", "jobs.run_trial", str(run_dir / "trial.json")], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **spec.get("env", {})})  # fmt: skip
    write_json_atomic(run_dir / "local_state.json", {"state": "RUNNING", "pid": proc.pid, "started": time.time()})
    return proc


def main(sweep_dir: str, max_parallel: int) -> int:
    sweep = Path(sweep_dir)
    lock = open(sweep / ".local_runner.lock", "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another runner is active and will see the new queue entries
    (sweep / "local_runner.pid").write_text(str(os.getpgid(0)))
    running: dict[Path, subprocess.Popen] = {}
    idle_checks = 0
    while True:
        for run_dir, proc in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[run_dir]
            state = read_state(run_dir)
            if state.get("state") != "CANCELLED":
                write_json_atomic(run_dir / "local_state.json", {**state, "state": EXIT_STATES.get(code, "FAILED"),
                                                                 "returncode": code, "ended": time.time()})  # fmt: skip
        queue = [Path(p) for p in json.loads((sweep / "local_queue.json").read_text())]
        pending = [p for p in queue if p not in running and read_state(p).get("state") == "PENDING"]
        while pending and len(running) < max_parallel:
            run_dir = pending.pop(0)
            running[run_dir] = start(run_dir)
        if not running and not pending:
            idle_checks += 1
            if idle_checks > 2:  # a short grace period for a `resume` racing with our exit
                return 0
        else:
            idle_checks = 0
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
