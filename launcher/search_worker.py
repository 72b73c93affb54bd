"""A worker slot of an adaptive search: claim a trial, train it, tell the study, again - until the budget is spent.

On SLURM the slots are the tasks of one job array (submitit runs `SearchWorker(sweep_dir, slot)`: the search
launcher's own callable, as hydra's submitit launcher is); locally the local runner starts
`python -m launcher.search_worker SPEC`. There is no batch barrier: a slot that finishes (or prunes) a trial asks
for the next at once. Each claim is decided under the sweep lock, on the sweep's log (launcher/manifest.py: the
trials are `ask` / `claim` / `tell` events there, in the same vocabulary as a grid's), in this order:

    1. its own trial left INTERRUPTED (the slot was preempted and requeued, or resubmitted): resumed exactly
    2. a trial RUNNING whose worker stopped - its run dir lease (core/lease.py) not renewed for stale_after_s: a
       worker that died, or is paused - adopted, resumed from its checkpoint; once adopted max_attempts times it
       is FAILED instead ("its worker died N times"), so a trial that kills its process cannot kill every worker
    3. a new trial, while the study holds fewer than n_trials: asked (define-by-run, jobs/study.py)

The claimer takes the trial's run dir lease before the lock is released, and every durable write after that -
checkpoints, reports to the pruner, the tell - checks it: a worker that wakes after its trial was adopted stops
without writing (and goes on to claim another). A trial is told once: the study first, then the log; a trial
found finished in the study but not in the log is settled from the study, never run again.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import FtlError
from core.faults import fault_point
from core.fileio import write_json_atomic
from core.lease import Lease, LeaseLost, newest, take
from launcher import manifest as mf
from launcher.sweep_lock import LockLost

# errors after which a process's device is unusable: the worker leaves, for a fresh process (SLURM requeues it)
STICKY_ERRORS = ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "NCCL error", "device-side assert", "illegal memory")


@dataclass
class Claim:
    id: str
    number: int
    optuna_id: int
    overrides: list[str]
    attempt: int
    lease: Lease


class SearchWorker:
    def __init__(self, sweep_dir: str, slot: int):
        self.sweep_dir, self.slot = sweep_dir, slot
        self._stop = False

    def __call__(self) -> dict[str, Any]:
        from jobs.study import check_journal, open_study

        sweep_dir = Path(self.sweep_dir)
        requeue = signal.getsignal(signal.SIGUSR2)  # submitit's (under SLURM): checkpoint() + requeue, then exit
        man = mf.read(sweep_dir)
        self.sweep, s = man, man.search or {}
        check_journal(sweep_dir / "search" / "study.journal", len(man.trials), sweep_dir)
        self.study = open_study(sweep_dir / "search" / "study.journal", man.name, man.mode, s["method"], s["seed"],
                                s["early_stop"])  # fmt: skip
        ran = 0
        while not self._stop and (claim := self.claim(sweep_dir)) is not None:
            print(f"ftl: slot {self.slot}: trial {claim.id} attempt {claim.attempt} ({' '.join(claim.overrides)})", flush=True)
            result = self.run(sweep_dir, claim)
            if result.get("status") == "fenced":
                print(f"ftl: slot {self.slot}: {result['error']}", flush=True)
                continue  # another worker owns that trial now
            if result.get("status") == "interrupted":
                self.release(sweep_dir, claim)  # INTERRUPTED: this slot (or another) resumes it from its checkpoint
                if result.get("stop_signal") == signal.SIGUSR2 and callable(requeue):
                    requeue(signal.SIGUSR2, None)  # a time limit (or USR2 preemption): requeued, after the release
                if result.get("stop_signal") == signal.SIGTERM:
                    from jobs.finetune import wait_to_be_ended

                    wait_to_be_ended()  # a preemption: SLURM requeues the slot once it has ended it
                return result
            self.tell(sweep_dir, claim, result)
            ran += 1
            if any(e in str(result.get("error", "")) for e in STICKY_ERRORS):
                leave_for_a_fresh_process(self.slot, str(result["error"]))
        if self._stop:  # a stop request between trials: no new claim; the slot is resumed (or requeued) later
            return {"status": "interrupted", "trials": ran, "job": job_id()}
        print(f"ftl: slot {self.slot}: the budget is spent ({ran} trials run here)", flush=True)
        result = {"status": "completed", "trials": ran, "job": job_id()}  # the job: a resubmitted slot's is another
        write_json_atomic(sweep_dir / "workers" / f"w{self.slot}" / "result.json", result)  # the slot's own word
        return result

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit's requeue hook: the same slot again; it continues its own unfinished trial first."""
        import submitit

        return submitit.helpers.DelayedSubmission(SearchWorker(self.sweep_dir, self.slot))

    # ------------------------------------------------------------ claim, run, tell

    def claim(self, sweep_dir: Path) -> Claim | None:
        return retried(lambda: self._claim(sweep_dir), lost=(LockLost, LeaseLost))

    def _claim(self, sweep_dir: Path) -> Claim | None:
        with mf.locked(sweep_dir) as man:
            self.sweep = man  # the search's settings as extended so far
            s, trials = man.search or {}, sorted(man.trials.values(), key=lambda t: t.number or 0)
            mine = [t for t in trials if t.state == "INTERRUPTED" and t.slot == self.slot]
            loose = [t for t in trials if t.state == "INTERRUPTED" and t.slot != self.slot]
            stale = [t for t in trials if t.state == "RUNNING" and mf.stale_s(man, t) > s["stale_after_s"]]
            for record in mine + loose + stale:
                if self._settled_in_study(man, record):
                    continue
                adopted = record in stale  # its worker stopped renewing its lease: one more death
                if record.failures + adopted >= man.max_attempts:
                    self._poisoned(man, record, record.failures + adopted)
                    continue
                seen = newest(man.dir / record.run_dir)  # the lease as the decision found it
                man.append([{"e": "claim", "id": record.id, "slot": self.slot, "job": job_id(),
                             "attempt": record.attempt + 1, "t": time.time(), "adopted": adopted}])  # fmt: skip
                return self._lease(man, record, seen)
            if len(man.trials) >= s["n_trials"]:
                return None
            return self._ask(man)

    def _ask(self, man: mf.Manifest) -> Claim | None:
        import optuna

        from jobs.study import suggest

        s = man.search or {}
        man.held.verify()  # the budget (asks in the sweep's log) is decided under the lock: still ours?
        trial = self.study.ask()
        overrides = suggest(trial, s["space"], s["method"], s["seed"])
        trial_id = f"t{trial.number:05d}"
        try:
            man.append([{"e": "ask", "id": trial_id, "number": trial.number, "optuna_id": trial._trial_id,
                         "overrides": overrides, "slot": self.slot, "job": job_id(), "attempt": 1, "t": time.time()}])  # fmt: skip
        except LockLost:  # an ask this worker cannot record is never run: the study hears FAIL at once
            self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            raise
        fault_point("worker-asked")
        return self._lease(man, man.trials[trial_id], 0)  # a new trial: no lease before this one

    def _lease(self, man: mf.Manifest, record: mf.TrialRecord, seen: int) -> Claim:
        """The trial's run dir lease, taken only if nobody took one since this claim was decided (`seen`: its newest
        token then): a worker paused between its decision and here finds the lease moved on (LeaseLost: the claim
        is decided again) and never fences the newer claimer."""
        lease = take(man.dir / record.run_dir, {"job": job_id(), "slot": self.slot, "attempt": record.attempt},
                     after=seen)  # fmt: skip
        fault_point("worker-claimed")
        return Claim(record.id, record.number or 0, record.optuna_id or 0, record.overrides, record.attempt, lease)

    def _settled_in_study(self, man: mf.Manifest, record: mf.TrialRecord) -> bool:
        """A trial the study already holds as finished (its worker told the study, then died before the log):
        settled in the log from the study's word, never run again."""
        from jobs.study import frozen_trial

        trial = frozen_trial(self.study, record.optuna_id or 0)
        if not trial.state.is_finished():
            return False
        state = {"COMPLETE": "COMPLETED", "PRUNED": "PRUNED"}.get(trial.state.name, "FAILED")
        result = {man.metric: trial.value} if trial.value is not None else {}
        man.append([{"e": "tell", "id": record.id, "attempt": record.attempt, "state": state, "result": result,
                     "cause": "" if state != "FAILED" else "told FAIL to the study by its last worker"}])  # fmt: skip
        return True

    def _poisoned(self, man: mf.Manifest, record: mf.TrialRecord, deaths: int) -> None:
        import optuna

        cause = f"its worker died or stopped {deaths} times (max_attempts {man.max_attempts})"
        print(f"ftl: slot {self.slot}: trial {record.id} FAILED: {cause}", flush=True)
        self.study.tell(record.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        man.append([{"e": "tell", "id": record.id, "attempt": record.attempt, "state": "FAILED", "result": {},
                     "cause": cause, "adopted": True}])  # fmt: skip

    def run(self, sweep_dir: Path, claim: Claim) -> dict[str, Any]:
        """Train the trial (or run the sweep's `program`), its lease's heartbeat kept fresh meanwhile."""
        stop = threading.Event()
        s = self.sweep.search or {}
        beat = threading.Thread(target=_beat, args=(claim.lease, stop, s["stale_after_s"] / 5), daemon=True)
        beat.start()
        run_dir = sweep_dir / "trials" / claim.id
        try:
            if s.get("program"):
                return self._program(sweep_dir, run_dir, claim)
            return self._finetune(sweep_dir, run_dir, claim)
        except LeaseLost as e:
            return {"status": "fenced", "error": str(e)}
        except FtlError as e:  # a config the space produced that cannot run: the trial fails, the search goes on
            print(f"ftl: trial {claim.id} cannot run: {e}", flush=True)
            return {"status": "failed", "error": str(e)}
        except Exception as e:  # noqa: BLE001 - a crash fails this trial, not the whole search
            import traceback

            traceback.print_exc()
            return {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        finally:
            stop.set()

    def _finetune(self, sweep_dir: Path, run_dir: Path, claim: Claim) -> dict[str, Any]:
        from core.tracking import run_name, sweep_group
        from jobs.finetune import FineTuneJob

        man = self.sweep
        s = man.search or {}
        tracking = [f"tracking.group={json.dumps(sweep_group(man.name, man.uid))}",
                    f"tracking.name={json.dumps(run_name(claim.overrides) or claim.id)}",
                    f"tracking.trial={claim.id}", f"tracking.sweep_dir={json.dumps(str(sweep_dir))}"]  # fmt: skip
        early = {"storage": str(sweep_dir / "search" / "study.journal"), "study": man.name, "metric": man.metric,
                 "mode": man.mode, "pruner": s["early_stop"], "trial_id": claim.optuna_id}  # fmt: skip
        overrides = [*tracking, *man.overrides, *claim.overrides]
        job = FineTuneJob(str(sweep_dir / "recipe.yaml"), overrides, str(run_dir), early, lease=claim.lease,
                          requeue=False)  # fmt: skip
        return job()

    def _program(self, sweep_dir: Path, run_dir: Path, claim: Claim) -> dict[str, Any]:
        """A custom objective `module:function(params, run_dir, report) -> metric value` (e.g. for benchmarks)."""
        import optuna

        man = self.sweep
        module, _, name = man.search["program"].partition(":")  # type: ignore[index]
        fn = getattr(importlib.import_module(module), name)
        trial = optuna.trial.Trial(self.study, claim.optuna_id)
        params = dict(o.split("=", 1) for o in claim.overrides)

        def report(epoch: int, value: float) -> bool:
            claim.lease.check()
            trial.report(value, epoch)
            return trial.should_prune()

        run_dir.mkdir(parents=True, exist_ok=True)
        value = fn(params, run_dir, report)
        result = {"status": "pruned"} if value is None else {"status": "completed", man.metric: float(value)}
        claim.lease.check()
        write_json_atomic(run_dir / "result.json", {**result, "run_dir": str(run_dir)})  # as a training run writes it
        return result

    def tell(self, sweep_dir: Path, claim: Claim, result: dict[str, Any]) -> None:
        """The study first (skip_if_finished: told once), then the log - both only while this worker holds the
        trial's lease. NaN or infinite metrics fail the trial ("metric is nan")."""
        metric = self.sweep.metric
        value = result.get(metric)
        state = {"completed": "COMPLETED", "pruned": "PRUNED"}.get(result.get("status", ""), "FAILED")
        cause = str(result.get("error", "")).strip().splitlines()[-1][:300] if result.get("error") else ""
        if state == "COMPLETED" and not mf.finite(value):
            state, cause = "FAILED", f"metric {metric} is {value}"
        retried(lambda: self._tell(sweep_dir, claim, result, state, cause, value))

    def _tell(self, sweep_dir: Path, claim: Claim, result: dict[str, Any], state: str, cause: str, value) -> None:
        import optuna

        with mf.locked(sweep_dir) as man:
            record = man.trials.get(claim.id)
            try:
                claim.lease.check()
            except LeaseLost as e:
                print(f"ftl: slot {self.slot}: not telling trial {claim.id}: {e}", flush=True)
                return
            if record is None or record.attempt != claim.attempt:
                return
            if state == "COMPLETED":
                self.study.tell(claim.number, value, skip_if_finished=True)
            else:
                ts = optuna.trial.TrialState.PRUNED if state == "PRUNED" else optuna.trial.TrialState.FAIL
                self.study.tell(claim.number, state=ts, skip_if_finished=True)
            fault_point("worker-told-study")
            kept = {k: v for k, v in result.items() if (mf.finite(v) or isinstance(v, str)) and k not in ("run_dir", "error")}
            man.append([{"e": "tell", "id": claim.id, "attempt": claim.attempt, "state": state, "result": kept,
                         "cause": cause}])  # fmt: skip

    def release(self, sweep_dir: Path, claim: Claim) -> None:
        """An interrupted trial (its checkpoint saved): INTERRUPTED, for this slot (or another) to claim again."""
        retried(lambda: self._release(sweep_dir, claim))

    def _release(self, sweep_dir: Path, claim: Claim) -> None:
        with mf.locked(sweep_dir) as man:
            record = man.trials.get(claim.id)
            with contextlib.suppress(LeaseLost):
                claim.lease.check()
                if record is not None and record.attempt == claim.attempt:
                    man.append([{"e": "tell", "id": claim.id, "attempt": claim.attempt, "state": "INTERRUPTED",
                                 "result": {}, "cause": "preempted or cancelled; resumes from its checkpoint"}])  # fmt: skip


def retried(decide, give_up_s: float = 60.0, lost: tuple[type[Exception], ...] = (LockLost,)):
    """Run a decision under the sweep lock again when the lock was lost meanwhile (this process paused past its
    lease, or the lock file deleted) - or, for a claim, the trial's lease taken by another claimer: nothing of the
    lost attempt was written, so trying again is safe."""
    deadline, wait = time.monotonic() + give_up_s, 0.02
    while True:
        try:
            return decide()
        except lost:
            if time.monotonic() > deadline:
                raise
            time.sleep(wait)
            wait = min(wait * 2, 1.0)


def leave_for_a_fresh_process(slot: int, error: str) -> None:
    """A sticky device error (CUDA, NCCL): this process's GPU state is unusable. On SLURM the job is requeued (a
    fresh process, maybe another node); locally the slot ends FAILED and `ftl resume` starts a fresh one."""
    print(f"ftl: slot {slot}: leaving after a device error a process cannot recover from: {error[:200]}", flush=True)
    if os.environ.get("SLURM_JOB_ID"):
        subprocess.run(["scontrol", "requeue", job_id()], timeout=60, check=False)
    sys.exit(75)


def _beat(lease: Lease, stop: threading.Event, every_s: float) -> None:
    while not stop.wait(every_s):
        with contextlib.suppress(OSError):
            lease.beat()


def job_id() -> str:
    """This process's job (jobs/finetune.py), or its pid when it runs outside any executor."""
    from jobs.finetune import job_id as current

    return current() or f"local-pid{os.getpid()}"


def main(spec_path: str) -> int:
    """`python -m launcher.search_worker SPEC`: a slot under the local executor (exit codes as jobs/run_trial)."""
    from jobs import early_signals

    early = early_signals.hold()
    spec = json.loads(Path(spec_path).read_text())
    worker = SearchWorker(spec["sweep_dir"], spec["search_slot"])
    worker._stop = bool(early)
    for sig in (signal.SIGTERM, signal.SIGUSR2):  # between trials: no new claim (a training trial takes over the
        signal.signal(sig, lambda *_: setattr(worker, "_stop", True))  # signals while it runs: jobs/finetune.py
    try:
        result = worker()
    except LeaseLost as e:
        print(f"ftl: {e}", file=sys.stderr)
        return 4
    except FtlError as e:
        print(f"ftl: error: {e}", file=sys.stderr)
        return 2
    return 3 if result.get("status") == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
