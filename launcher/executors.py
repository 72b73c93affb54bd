"""Executors: where trials run. One base owns the submission protocol; a backend fills in a few hooks.

The protocol (submitit's shape: state is small files written temp-then-rename), per batch of trials:

    1. intent     each trial's state file says SUBMITTING, its new attempt and the batch token - on disk first
    2. submit     the backend queues the batch (one SLURM job array named `<sweep job name>.<token>`, or lines
                  appended to the local runner's queue); SIGINT/SIGTERM are held back until step 3 is written
    3. record     the batch's job ids, in one file (state/batches/<token>.json): each trial is now PENDING

A crash between 1 and 3 leaves trials SUBMITTING: `recover` asks the backend what it queued under the token and
adopts it (job ids recorded), or cancels it when it cannot run, and marks the rest unsubmitted again. So nothing is
lost and nothing runs twice, whatever instant a command is killed at.

Backends: LocalExecutor (launcher/local_executor.py: a detached runner runs trials as subprocesses) and
SlurmExecutor (launcher/slurm_executor.py: submitit job arrays).
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import FtlError
from core.faults import fault_point
from launcher import manifest as mf
from launcher import states as st
from launcher.clusters import ClusterConfig


@dataclass
class TrialSpec:
    """What a job needs to run one trial."""

    id: str
    recipe: str
    overrides: list[str]
    run_dir: str  # absolute
    early_stop: dict | None = None
    attempt: int = 1  # the trial's submissions so far, this one included
    search_slot: int | None = None  # an adaptive search's worker slot (jobs/search_worker.py) instead of one trial
    sweep_dir: str = ""


def trial_spec(man: mf.Manifest, record: mf.TrialRecord) -> TrialSpec:
    """A trial's job: the sweep's resolved recipe, W&B grouping, sweep-wide then the trial's own overrides."""
    from core.tracking import run_name, sweep_group

    sweep_dir = _absolute(man.dir)
    if man.search:  # a worker slot: it asks its trials itself
        return TrialSpec(record.id, "", [], f"{sweep_dir}/{record.run_dir}", None, record.attempt,
                         int(record.id.removeprefix("w")), sweep_dir)  # fmt: skip
    group = sweep_group(man.name, man.uid)  # every launch its own W&B group
    name = run_name(record.overrides) or record.id  # what distinguishes the trial (quoted: values may hold commas)
    wandb = [f"tracking.group={json.dumps(group)}", f"tracking.name={json.dumps(name)}",
             f"tracking.trial={record.id}", f"tracking.sweep_dir={json.dumps(str(sweep_dir))}"]  # fmt: skip
    return TrialSpec(record.id, f"{sweep_dir}/recipe.yaml", [*wandb, *man.overrides, *record.overrides],
                     f"{sweep_dir}/{record.run_dir}", man.early_stop, record.attempt, sweep_dir=sweep_dir)  # fmt: skip


CLIENT_VARS = ("SLURM_CONF",)  # the SLURM client's own configuration, not the state of an enclosing job


@contextlib.contextmanager
def submission_env(extra: dict[str, str]) -> Iterator[None]:
    """This environment without an enclosing job's variables (submitit's `helpers.clean_env`: SLURM_*, SBATCH_*,
    SUBMITIT_*, RANK, WORLD_SIZE, MASTER_ADDR, ...), SLURM_CONF kept, `extra` (the cluster's secrets) added."""
    import os

    from submitit.helpers import clean_env

    keep = {k: os.environ[k] for k in CLIENT_VARS if k in os.environ}
    with clean_env():
        saved = dict(os.environ)
        os.environ.update({**keep, **extra})
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


@functools.lru_cache(maxsize=64)
def _absolute(path: Path) -> str:
    return str(path.resolve())


HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back (they are delivered on exit). Child processes inherit the mask, so a Ctrl-C
    reaches neither this process nor sbatch in the middle of a submission. The mask is this thread's: a signal the
    kernel hands to another thread (filelock's heartbeat) would still reach Python's handler, so the handlers only
    note it meanwhile, and it is raised again at the end."""
    import threading

    main = threading.current_thread() is threading.main_thread()
    noted: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, _: noted.append(signum)) for s in HELD_SIGNALS} if main else {}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # what was pending is noted now
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)


class Executor(ABC):
    """Queue, watch and cancel the jobs of one sweep dir."""

    def __init__(self, cluster: ClusterConfig, sweep_dir: Path):
        self.cluster = cluster
        self.sweep_dir = Path(sweep_dir)
        self.reasons: dict[str, str] = {}  # why a job ended badly (exit code, signal), filled by states()

    # ------------------------------------------------------------ hooks

    def limits(self) -> tuple[int, int, str]:
        """(trials per batch, trials that may be queued now, why fewer than asked for)."""
        return 1_000_000, 1_000_000, ""

    def check_request(self) -> None:
        """FtlError when the cluster could never run one trial as configured (checked before a sweep is written)."""

    @abstractmethod
    def _submit_batch(self, specs: list[TrialSpec], job_name: str) -> list[str]:
        """Queue one batch under `job_name`; the job ids in the order of specs. FtlError when refused."""

    @abstractmethod
    def find_jobs(self, man: mf.Manifest, tokens: set[str]) -> dict[str, dict[int, str]]:
        """Jobs that exist under these batch tokens: {token: {index in the batch: job id}}."""

    def adoptable(self, job_id: str) -> bool:
        """Whether a job found by `find_jobs` can run its trial (submitit's pickle may not have been written)."""
        return True

    @abstractmethod
    def states(self, man: mf.Manifest, records: list[mf.TrialRecord]) -> dict[str, str]:
        """{job id: state} for the current job of each record, in one query."""

    @abstractmethod
    def cancel(self, job_ids: list[str]) -> None: ...

    def after_change(self, man: mf.Manifest) -> None:
        """Called under the lock after jobs were queued or states refreshed (local: keep a runner alive)."""

    # ------------------------------------------------------------ the protocol

    def submit(self, man: mf.Manifest, records: list[mf.TrialRecord]) -> str:
        """Queue `records` (under the sweep lock) batch by batch; returns a note (why some were held back).
        A refused batch is reverted and raised as FtlError; batches before it stay queued and recorded."""
        size, budget, why = self.limits()
        note = ""
        for start in range(0, len(records), size):
            batch = records[start : start + size]
            if len(batch) > budget:
                for record in records[start:]:
                    man.update(record, state="DEFERRED")
                note = f"{len(records) - start} trials held back: {why}; run `ftl resume {self.sweep_dir}` later"
                break
            self._submit_one(man, batch)
            budget -= len(batch)
        mf.save_states(man)
        self.after_change(man)
        return note

    def _submit_one(self, man: mf.Manifest, batch: list[mf.TrialRecord]) -> None:
        token = mf.new_uid()[:6]  # unique within the sweep; its jobs are named `<sweep job name>.<token>`
        entries = [(r.id, r.attempt + 1) for r in batch]
        before = {r.id: {k: getattr(r, k) for k in mf.STATE_KEYS} for r in batch}
        with signals_held():
            now = time.time()
            mf.write_batch(man, token, entries, now, None)  # 1. the intent, on disk before the scheduler hears of it
            fault_point("after-intent")
            try:
                job_ids = self._submit_batch([trial_spec(man, r) for r in batch], f"{man.job_name}.{token}")
            except BaseException:
                mf.revert_batch(man, token, before)  # refused: nothing was queued for this batch
                raise
            fault_point("after-sbatch")
            mf.write_batch(man, token, entries, now, job_ids)  # 3. the job ids, for the whole batch in one event

    def recover(self, man: mf.Manifest, cancel_orphans: bool) -> list[mf.TrialRecord]:
        """Trials left SUBMITTING by a killed command: adopt the jobs the scheduler has under their token. With
        cancel_orphans, a job that cannot run is cancelled and its trial marked unsubmitted (NEW) again; without,
        such trials stay SUBMITTING (for `ftl resume` to settle). Returns the trials marked NEW."""
        stuck = [r for r in man.jobs.values() if r.state == "SUBMITTING"]
        if not stuck:
            return []
        found = self.find_jobs(man, {r.token for r in stuck if r.token})
        orphans, reverted = [], []
        for record in stuck:
            job_id = found.get(record.token or "", {}).get(record.index if record.index is not None else -1)
            if job_id is not None and self.adoptable(job_id):
                man.update(record, state="PENDING", job_ids=[*record.job_ids, job_id])
            elif cancel_orphans:
                if job_id is not None:
                    orphans.append(job_id)
                man.update(record, state="NEW", token=None, index=None)
                reverted.append(record)
        if orphans:
            self.cancel(orphans)
        return reverted

    def refresh(self, man: mf.Manifest, read_run_dir) -> None:
        """Derive the state of every submitted trial that has not succeeded from its job and its run dir (see
        `derive_state`), with the cause of a failure. Failed ones are asked again: SLURM requeues after NODE_FAIL
        or PREEMPTED."""
        watch = [r for r in man.jobs.values() if r.job_id and not st.is_success(r.state)]
        job_states = self.states(man, watch) if watch else {}
        for record in watch:
            progress, result = read_run_dir(record)
            if result.get("job") not in (None, record.job_id):
                result = {}  # written by an earlier submission of this job (a search slot run again)
            job_state = job_states.get(record.job_id or "", "UNKNOWN")
            state = derive_state(record, job_state, result, time.time(), None if man.search else man.metric)
            fields: dict = {"state": state}
            if st.is_success(state):
                fields["result"] = {k: v for k, v in result.items() if isinstance(v, (int, float, str)) and mf.finite(v)
                                    or isinstance(v, str)}  # fmt: skip
            elif st.is_final(state) and state != "CANCELLED":
                fields["cause"] = failure_cause(state, self.reasons.get(record.job_id or "", ""), result, man.metric)
                if st.is_failure(state) and not st.is_failure(record.state):
                    fields["failures"] = record.failures + 1  # once per attempt: the first refresh that sees it
            if (state != record.state or len(fields) > 1) and any(getattr(record, k) != v for k, v in fields.items()):
                man.update(record, **fields)
        if man.search:
            release_orphans(man)


def release_orphans(man: mf.Manifest) -> None:
    """A search trial RUNNING under a worker job that has ended (or was replaced by a resubmission) was not
    released by it - killed before it could say so: released now (INTERRUPTED, claimable at once by a live worker
    instead of after stale_after_s); a death against max_attempts when that job failed. A worker still alive
    somewhere is fenced by the next claimer's lease."""
    slot_of = {job: slot for slot in man.jobs.values() for job in slot.job_ids}
    for trial in man.trials.values():
        slot = slot_of.get(trial.job_id or "")
        if trial.state not in ("RUNNING", "STALLED") or slot is None:
            continue
        if slot.job_id == trial.job_id and not st.is_final(slot.state):
            continue
        ended = "replaced by a resubmission" if slot.job_id != trial.job_id else slot.state.lower()
        man.later.append({"e": "tell", "id": trial.id, "attempt": trial.attempt, "state": "INTERRUPTED", "result": {},
                          "cause": f"its worker's job {trial.job_id} ended ({ended}"
                                   f"{': ' + slot.cause if slot.cause and slot.job_id == trial.job_id else ''})",
                          "died": slot.job_id == trial.job_id and st.is_failure(slot.state)})  # fmt: skip


ACCOUNTING_GRACE_S = 120  # a fresh submission may not be in sacct yet


def derive_state(record: mf.TrialRecord, job_state: str, result: dict, now: float, metric: str | None = None) -> str:
    """A submitted trial's state: its run dir's result first (the job's own word; a result whose metric is NaN or
    infinite is a failure), then a cancel (CANCELLING until the job is gone), then the job's state; a job
    nobody reports is LOST once accounting had time to see it."""
    job_state = st.normalise(job_state)
    status = result.get("status")
    if status == "completed":
        return "COMPLETED" if metric is None or mf.finite(result.get(metric)) else "FAILED"
    if status == "pruned":
        return "PRUNED"
    if record.cancelled:
        return "CANCELLING" if st.phase(job_state) == "live" else "CANCELLED"  # a process to wait for, or none
    if job_state == "UNKNOWN":
        recent = record.submitted is not None and now - record.submitted < ACCOUNTING_GRACE_S
        return record.state if recent or st.phase(record.state) == "unsubmitted" else "LOST"
    if job_state == "COMPLETED":  # the job ended but its training did not: interrupted and not requeued
        return "PREEMPTED" if status == "interrupted" else "FAILED"
    return job_state


def failure_cause(state: str, reason: str, result: dict, metric: str) -> str:
    """Why a trial did not succeed, in one line: its own error, a metric that is not a number, or what the
    scheduler (or the local runner) said of its job."""
    if result.get("status") == "completed" and not mf.finite(result.get(metric)):
        return f"metric {metric} is {result.get(metric)}"
    if result.get("error"):
        return str(result["error"]).strip().splitlines()[-1][:300]
    return reason or {"LOST": "its job vanished without a result (purged from accounting, or its runner died)",
                      "OUT_OF_MEMORY": "out of memory", "TIMEOUT": "time limit reached",
                      "NODE_FAIL": "its node failed", "PREEMPTED": "preempted"}.get(state, state.lower())  # fmt: skip


def create_executor(cluster: ClusterConfig, sweep_dir: Path) -> Executor:
    if cluster.executor == "local":
        from launcher.local_executor import LocalExecutor

        return LocalExecutor(cluster, sweep_dir)
    if cluster.executor == "slurm":
        from launcher.slurm_executor import SlurmExecutor

        return SlurmExecutor(cluster, sweep_dir)
    raise FtlError(f"executor={cluster.executor!r} must be local or slurm")
