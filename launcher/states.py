"""The one state table: every job state SLURM (or the local executor) can report, and what it means for a trial.

A trial's job is in one of five phases:

    pending   queued, will start by itself                        PENDING, REQUEUED, REQUEUE_FED, ...
    live      running (or about to, or finishing)                 RUNNING, COMPLETING, SUSPENDED, ...
    held      will not move until someone acts (a hold, a          HELD, REQUEUE_HOLD, SPECIAL_EXIT, ...
              special exit): `ftl resume` cancels and resubmits
    final     ended; COMPLETED with a result is success            COMPLETED, FAILED, CANCELLED, TIMEOUT,
              (PRUNED: stopped early by ftl), the rest resumable   PREEMPTED, REVOKED, NODE_FAIL, LOST, ...
    unknown   nobody reports the job (accounting lag or purge)    UNKNOWN

sacct and squeue report a held job as PENDING; its reason (JobHeldUser, JobHeldAdmin, "job requeued in held
state") says it is held, and the SLURM executor turns that into HELD or REQUEUE_HOLD.

A trial with no job is `unsubmitted`: NEW (never submitted), DEFERRED (held back by MaxJobCount) or SUBMITTING (an
intent was written and the submission did not finish: `ftl resume` adopts or cancels what was queued).

sacct reports states with suffixes ("CANCELLED by 0") and an unknown state may appear in a newer SLURM: `phase`
normalises the first and treats the second as live (never as final: a trial is only given up on for a reason).
"""

from __future__ import annotations

import functools

PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "CONFIGURING", "POWER_UP_NODE"})
LIVE_STATES = frozenset({"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED",
                         "UPDATE_DB",
                         "CANCELLING"})  # ftl: cancelled, its process not gone yet (it saves a checkpoint)  # fmt: skip
HELD_STATES = frozenset({"HELD", "REQUEUE_HOLD", "SPECIAL_EXIT", "RESV_DEL_HOLD",
                         "INTERRUPTED"})  # ftl: a search trial stopped with a checkpoint; a worker (or resume) takes it
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                          "DEADLINE", "PREEMPTED", "REVOKED",
                          "PRUNED",  # ftl: stopped early by the sweep's early_stop
                          "LOST"})  # ftl: the job vanished (purged from accounting, runner died) without a result  # fmt: skip
SUCCESS_STATES = frozenset({"COMPLETED", "PRUNED"})
# Ends that count against a trial's max_attempts: it failed or died; not cancelled, preempted or revoked by others
FAILURE_STATES = frozenset({"FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "LOST"})

UNSUBMITTED_STATES = frozenset({"NEW", "DEFERRED", "SUBMITTING"})

PHASES = ("unsubmitted", "pending", "live", "held", "final", "unknown")


@functools.lru_cache(maxsize=1024)  # a few distinct strings, asked for hundreds of thousands of times
def normalise(state: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; '' -> 'UNKNOWN'; squeue's short codes are not used by ftl."""
    word = (state or "").split()[0].upper() if (state or "").strip() else "UNKNOWN"
    return word.rstrip("+")  # sacct marks some states with a trailing '+'


@functools.lru_cache(maxsize=1024)
def phase(state: str) -> str:
    """One of PHASES, for any state string SLURM or ftl writes."""
    state = normalise(state)
    if state in UNSUBMITTED_STATES:
        return "unsubmitted"
    if state in FINAL_STATES:
        return "final"
    if state in PENDING_STATES:
        return "pending"
    if state in HELD_STATES:
        return "held"
    if state == "UNKNOWN":
        return "unknown"
    return "live"  # LIVE_STATES, and a state this table does not know yet: keep watching it


def is_final(state: str) -> bool:
    return phase(state) == "final"


def is_success(state: str) -> bool:
    return normalise(state) in SUCCESS_STATES


def is_failure(state: str) -> bool:
    return normalise(state) in FAILURE_STATES


def needs_resume(state: str) -> bool:
    """True when `ftl resume` should (re)submit the trial: it ended without success, is held, or never went out."""
    p = phase(state)
    return p in ("unsubmitted", "held") or (p == "final" and not is_success(state))


# Ends that say nothing against the trial itself: its job was stopped or lost from outside; a resume continues it
# from its checkpoint. FAILED is one of these only when the run left no error of its own (killed by a signal).
OUTSIDE_STATES = frozenset({"CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED",
                            "LOST", "INTERRUPTED"})  # fmt: skip


def resume_helps(state: str, own_error: bool) -> bool:
    """Would `ftl resume` likely carry the trial to the end as it is? Not for an error its run raised (bad data, a
    config the run refused, a crash in the code: they repeat), nor out of memory (the same batch needs the same
    memory); yes for preemption, time limits, node failures, cancels, lost jobs, and a kill from outside."""
    state = normalise(state)
    if state in OUTSIDE_STATES or phase(state) in ("unsubmitted", "held"):
        return True
    return state == "FAILED" and not own_error


def is_settled(state: str) -> bool:
    """Nothing more happens to the trial without someone acting: what `ftl wait` waits for."""
    return phase(state) in ("final", "held", "unsubmitted")
