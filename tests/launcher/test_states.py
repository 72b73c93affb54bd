"""The one state table (launcher/states.py) and the state a trial is given from its job and its run dir."""

import time

import pytest

from launcher import states as st
from launcher.executors import derive_state
from launcher.manifest import TrialRecord

# Every job state `sacct --helpformat` / `squeue` documents (SLURM 22-24), and the phase ftl gives it.
SLURM_STATES = {
    "BOOT_FAIL": "final", "CANCELLED": "final", "COMPLETED": "final", "DEADLINE": "final", "FAILED": "final",
    "NODE_FAIL": "final", "OUT_OF_MEMORY": "final", "PREEMPTED": "final", "TIMEOUT": "final", "REVOKED": "final",
    "PENDING": "pending", "REQUEUED": "pending", "REQUEUE_FED": "pending", "CONFIGURING": "pending",
    "POWER_UP_NODE": "pending", "RUNNING": "live", "COMPLETING": "live", "RESIZING": "live", "SIGNALING": "live",
    "STAGE_OUT": "live", "SUSPENDED": "live", "STOPPED": "live", "UPDATE_DB": "live",
    "REQUEUE_HOLD": "held", "SPECIAL_EXIT": "held", "RESV_DEL_HOLD": "held", "HELD": "held",
}  # fmt: skip
FTL_STATES = {"NEW": "unsubmitted", "DEFERRED": "unsubmitted", "SUBMITTING": "unsubmitted", "PRUNED": "final",
              "LOST": "final", "UNKNOWN": "unknown"}  # fmt: skip


@pytest.mark.parametrize(("state", "phase"), [*SLURM_STATES.items(), *FTL_STATES.items()])
def test_every_state_has_one_phase(state, phase):
    assert st.phase(state) == phase


def test_sacct_spellings_and_states_not_seen_yet():
    assert st.phase("CANCELLED by 0") == "final" and st.normalise("CANCELLED by 1234") == "CANCELLED"
    assert st.phase("RUNNING+") == "live" and st.phase("") == "unknown" and st.phase("  ") == "unknown"
    assert st.phase("SOME_FUTURE_STATE") == "live"  # watched, never given up on


def test_what_resume_and_wait_do_with_each_phase():
    for state, phase in {**SLURM_STATES, **FTL_STATES}.items():
        success = state in ("COMPLETED", "PRUNED")
        assert st.needs_resume(state) == (phase in ("unsubmitted", "held") or (phase == "final" and not success))
        assert st.is_settled(state) == (phase in ("final", "held", "unsubmitted"))


def record(**kw) -> TrialRecord:
    return TrialRecord("t", [], "trials/t", **{"state": "PENDING", "attempt": 1, "job_ids": ["5_0"], **kw})


def test_derived_state_prefers_the_run_dirs_result_then_a_cancel_then_the_job():
    now = time.time()
    assert derive_state(record(), "RUNNING", {"status": "completed"}, now) == "COMPLETED"
    assert derive_state(record(cancelled=True), "COMPLETED", {"status": "completed"}, now) == "COMPLETED"
    assert derive_state(record(), "CANCELLED", {"status": "pruned"}, now) == "PRUNED"
    assert derive_state(record(cancelled=True), "REQUEUED", {}, now) == "CANCELLED"  # cancel sticks
    for live in ("RUNNING", "COMPLETING", "SUSPENDED"):  # cancelled, its process still there (saving, in KillWait)
        assert derive_state(record(cancelled=True), live, {}, now) == "CANCELLING"
    assert derive_state(record(), "COMPLETED", {"status": "completed", "val_top1": float("nan")}, now, "val_top1") == "FAILED"
    assert derive_state(record(), "COMPLETED", {}, now) == "FAILED"  # the job ended, the training did not
    assert derive_state(record(), "COMPLETED", {"status": "interrupted"}, now) == "PREEMPTED"
    assert derive_state(record(), "CANCELLED by 0", {}, now) == "CANCELLED"


def test_a_job_nobody_reports_is_lost_after_the_accounting_grace():
    now = time.time()
    assert derive_state(record(submitted=now - 5), "UNKNOWN", {}, now) == "PENDING"  # sacct not caught up yet
    assert derive_state(record(submitted=now - 3600), "UNKNOWN", {}, now) == "LOST"
    assert derive_state(record(submitted=now - 3600), "", {"status": "completed"}, now) == "COMPLETED"
