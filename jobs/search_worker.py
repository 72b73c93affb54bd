"""A worker slot of an adaptive search: claim a trial, train it, tell the study, again - until the budget is spent.

On SLURM the slots are the tasks of one job array (submitit runs `SearchWorker(sweep_dir, slot)`); locally, the
local runner starts them as processes. There is no batch barrier: a slot that finishes (or prunes) a trial asks for
the next at once. Each claim happens under SWEEP_DIR/search/.lock, in this order:

    1. its own unfinished trial (the slot was preempted and requeued, or resubmitted): resumed exactly
    2. a trial whose worker died (its heartbeat, search/heartbeats/<id>, older than stale_after_s): adopted, resumed
    3. a new trial, if the trials asked so far are fewer than n_trials: asked (define-by-run, jobs/study.py)

A trial's state is its own file, SWEEP_DIR/search/trials/<id>.json (id `t<number>`): number, Optuna trial id,
overrides, state (RUNNING | COMPLETED | PRUNED | FAILED), the slot and job that run it, and once ended its
result. Its run dir is SWEEP_DIR/trials/<id>/ like any trial's. Each trial is asked once and told once.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.fileio import write_json_atomic

TRIALS, HEARTBEATS, LOCK = "search/trials", "search/heartbeats", "search/.lock"


def read_trials(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Every search trial's state, by id (a file being replaced is read whole or not at all)."""
    out = {}
    folder = sweep_dir / TRIALS
    for name in os.listdir(folder) if folder.is_dir() else []:
        if name.endswith(".json") and not name.startswith("."):
            try:
                data = json.loads((folder / name).read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("overrides"), list):
                out[name[:-5]] = data
    return out


def heartbeat_age(sweep_dir: Path, trial_id: str) -> float:
    try:
        return time.time() - (sweep_dir / HEARTBEATS / trial_id).stat().st_mtime
    except FileNotFoundError:
        return float("inf")


@contextlib.contextmanager
def search_lock(sweep_dir: Path) -> Iterator[None]:
    with open(sweep_dir / LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class SearchWorker:
    def __init__(self, sweep_dir: str, slot: int):
        self.sweep_dir, self.slot = sweep_dir, slot

    def __call__(self) -> dict[str, Any]:
        from jobs.study import open_study

        sweep_dir = Path(self.sweep_dir)
        self.sweep = json.loads((sweep_dir / "sweep.json").read_text())
        s = self.sweep["search"]
        self.study = open_study(sweep_dir / "search" / "study.journal", self.sweep["name"], self.sweep["mode"],
                                s["method"], s["seed"], s["early_stop"])  # fmt: skip
        (sweep_dir / TRIALS).mkdir(parents=True, exist_ok=True)
        (sweep_dir / HEARTBEATS).mkdir(parents=True, exist_ok=True)
        ran = 0
        while (claim := self.claim(sweep_dir)) is not None:
            print(f"ftl: slot {self.slot}: trial {claim['id']} ({' '.join(claim['overrides'])})", flush=True)
            result = self.run(sweep_dir, claim)
            if result.get("status") == "interrupted":
                return result  # preempted: the trial resumes when this slot (or another) claims it again
            self.tell(sweep_dir, claim, result)
            ran += 1
        print(f"ftl: slot {self.slot}: the budget is spent ({ran} trials run here)", flush=True)
        result = {"status": "completed", "trials": ran, "job": _job_id()}  # the job: a resubmitted slot's is another
        write_json_atomic(sweep_dir / "workers" / f"w{self.slot}" / "result.json", result)  # the slot's own word
        return result

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook: the same slot again; it continues its own unfinished trial first."""
        import submitit

        return submitit.helpers.DelayedSubmission(SearchWorker(self.sweep_dir, self.slot))

    # ------------------------------------------------------------ claim, run, tell

    def claim(self, sweep_dir: Path) -> dict[str, Any] | None:
        s = self.sweep["search"]
        with search_lock(sweep_dir):
            trials = read_trials(sweep_dir)
            running = [t for t in trials.values() if t["state"] == "RUNNING"]
            mine = [t for t in running if t.get("slot") == self.slot]
            stale = [t for t in running if heartbeat_age(sweep_dir, t["id"]) > s["stale_after_s"]]
            for trial in sorted(mine, key=lambda t: t["number"]) + sorted(stale, key=lambda t: t["number"]):
                return self._take(sweep_dir, trial)
            if len(trials) >= s["n_trials"]:
                return None
            return self._ask(sweep_dir)

    def _take(self, sweep_dir: Path, trial: dict[str, Any]) -> dict[str, Any]:
        trial = {**trial, "slot": self.slot, "job": _job_id(), "attempt": trial.get("attempt", 1) + 1}
        write_json_atomic(sweep_dir / TRIALS / f"{trial['id']}.json", trial)
        (sweep_dir / HEARTBEATS / trial["id"]).touch()
        return trial

    def _ask(self, sweep_dir: Path) -> dict[str, Any]:
        from jobs.study import suggest

        s = self.sweep["search"]
        trial = self.study.ask()
        overrides = suggest(trial, s["space"], s["method"], s["seed"])
        record = {"id": f"t{trial.number:05d}", "number": trial.number, "trial_id": trial._trial_id,
                  "overrides": overrides, "state": "RUNNING", "slot": self.slot, "job": _job_id(), "attempt": 1,
                  "started": time.time()}  # fmt: skip
        write_json_atomic(sweep_dir / TRIALS / f"{record['id']}.json", record)
        (sweep_dir / HEARTBEATS / record["id"]).touch()
        return record

    def run(self, sweep_dir: Path, claim: dict[str, Any]) -> dict[str, Any]:
        """Train the trial (or run the sweep's `program`), its heartbeat kept fresh meanwhile."""
        from core.errors import FtlError

        stop = threading.Event()
        beat = threading.Thread(target=_beat, args=(sweep_dir / HEARTBEATS / claim["id"], stop,
                                                     self.sweep["search"]["stale_after_s"] / 5), daemon=True)  # fmt: skip
        beat.start()
        run_dir = sweep_dir / "trials" / claim["id"]
        try:
            if self.sweep["search"].get("program"):
                return self._program(run_dir, claim)
            return self._finetune(sweep_dir, run_dir, claim)
        except FtlError as e:  # a config the space produced that cannot run: the trial fails, the search goes on
            print(f"ftl: trial {claim['id']} cannot run: {e}", flush=True)
            return {"status": "failed", "error": str(e)}
        except Exception as e:  # noqa: BLE001 - a crash fails this trial, not the whole search
            import traceback

            traceback.print_exc()
            return {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        finally:
            stop.set()

    def _finetune(self, sweep_dir: Path, run_dir: Path, claim: dict[str, Any]) -> dict[str, Any]:
        from core.tracking import run_name, sweep_group
        from jobs.finetune import FineTuneJob

        sw, s = self.sweep, self.sweep["search"]
        tracking = [f"tracking.group={json.dumps(sweep_group(sw['name'], sw['uid']))}",
                    f"tracking.name={json.dumps(run_name(claim['overrides']) or claim['id'])}"]  # fmt: skip
        early = {"storage": str(sweep_dir / "search" / "study.journal"), "study": sw["name"], "metric": sw["metric"],
                 "mode": sw["mode"], "pruner": s["early_stop"], "trial_id": claim["trial_id"]}  # fmt: skip
        overrides = [*tracking, *sw["overrides"], *claim["overrides"]]
        return FineTuneJob(str(sweep_dir / "recipe.yaml"), overrides, str(run_dir), early)()

    def _program(self, run_dir: Path, claim: dict[str, Any]) -> dict[str, Any]:
        """A custom objective `module:function(params, run_dir, report) -> metric value` (e.g. for benchmarks)."""
        import optuna

        module, _, name = self.sweep["search"]["program"].partition(":")
        fn = getattr(importlib.import_module(module), name)
        trial = optuna.trial.Trial(self.study, claim["trial_id"])
        params = dict(o.split("=", 1) for o in claim["overrides"])

        def report(epoch: int, value: float) -> bool:
            trial.report(value, epoch)
            return trial.should_prune()

        run_dir.mkdir(parents=True, exist_ok=True)
        value = fn(params, run_dir, report)
        result = {"status": "pruned"} if value is None else {"status": "completed", self.sweep["metric"]: float(value)}
        write_json_atomic(run_dir / "result.json", {**result, "run_dir": str(run_dir)})  # as a training run writes it
        return result

    def tell(self, sweep_dir: Path, claim: dict[str, Any], result: dict[str, Any]) -> None:
        import optuna

        status = result.get("status")
        value = result.get(self.sweep["metric"])
        state = {"completed": "COMPLETED", "pruned": "PRUNED"}.get(status, "FAILED")
        if state == "COMPLETED" and not isinstance(value, (int, float)):
            state = "FAILED"
        with search_lock(sweep_dir):
            if state == "COMPLETED":
                self.study.tell(claim["number"], value, skip_if_finished=True)
            else:
                ts = optuna.trial.TrialState.PRUNED if state == "PRUNED" else optuna.trial.TrialState.FAIL
                self.study.tell(claim["number"], state=ts, skip_if_finished=True)
            kept = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and k != "run_dir"}
            write_json_atomic(sweep_dir / TRIALS / f"{claim['id']}.json",
                              {**claim, "state": state, "ended": time.time(), "result": kept})  # fmt: skip


def _beat(path: Path, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        with contextlib.suppress(OSError):
            path.touch()


def _job_id() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("FTL_LOCAL_JOB", f"local-pid{os.getpid()}")
