"""One trial, one writer, on real processes of the local executor: cancel then resume at once, a search worker
paused past its lease then woken, a hung trial at its time limit, the lock file deleted under running workers, a
trial that kills its process, NaN and infinite metrics, extending a search with each setting changed, and a
damaged study journal - each named, never skipped. Search workers run `program` objectives (jobs/objectives.py):
the machinery is what is tested, not training."""

import json
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from launcher import event_log
from launcher import manifest as mf
from tests.conftest import TINY, ftl, wait_for

pytestmark = pytest.mark.slow
FAST = {"FTL_KILL_WAIT_S": "2"}  # the runner kills a cancelled process that is still there after 2 s


def search_file(tmp_path: Path, name="s", **spec) -> Path:
    data = {"recipe": "base", "name": name, "method": "tpe", "metric": {"name": "val_top1", "goal": "maximize"},
            "n_trials": 4, "max_parallel": 2, "seed": 0, "overrides": [f"data.train_dir={tmp_path}"],
            "stale_after_s": 5, "program": "jobs.objectives:quadratic",
            "space": {"optim.lr": {"loguniform": [1e-5, 1e-1]}, "optim.weight_decay": {"uniform": [0.0, 0.2]}},
            **spec}  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def local(tmp_path: Path, slots: int = 2, **kw) -> Path:
    path = tmp_path / f"local-{slots}-{len(kw)}.yaml"
    path.write_text(yaml.safe_dump({"name": "here", "executor": "local", "max_parallel": slots,
                                    "env": {"OMP_NUM_THREADS": "1"}, **kw}))  # fmt: skip
    return path


def events(sweep_dir: Path, kind: str) -> list[dict]:
    found, _, _ = event_log.read(sweep_dir, *event_log.read_head(sweep_dir)[1:])
    return [e for _, e in found if e["e"] == kind]


def journal(sweep_dir: Path) -> list[str]:
    from jobs.study import open_study

    study = open_study(sweep_dir / "search" / "study.journal", mf.read(sweep_dir).name, "max")
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def told_once(sweep_dir: Path) -> dict[str, str]:
    """Each trial's final tell; fails if a trial was told twice as finished."""
    final = [e for e in events(sweep_dir, "tell") if e["state"] != "INTERRUPTED"]
    ids = [e["id"] for e in final]
    assert len(ids) == len(set(ids)), f"told twice: {sorted(i for i in ids if ids.count(i) > 1)}"
    return {e["id"]: e["state"] for e in final}


# ---------------------------------------------------------------- two writers


def runner_windows(sweep_dir: Path) -> list[tuple[str, int, float, float]]:
    """(job, attempt, start, end) of every process the runner started, from its log."""
    starts, out = {}, []
    for line in (sweep_dir / "logs" / "local_runner.log").read_text().splitlines():
        if m := re.match(r"ftl runner: (\d+\.\d+) start (\S+) attempt (\d+)", line):
            starts[(m[2], int(m[3]))] = float(m[1])
        elif m := re.match(r"ftl runner: (\d+\.\d+) exit (\S+) attempt (\d+)", line):
            out.append((m[2], int(m[3]), starts.pop((m[2], int(m[3]))), float(m[1])))
    return out


def test_cancel_then_resume_at_once_never_runs_two_attempts_of_a_trial(lfw, tmp_path):
    """The README's `ftl cancel && ftl resume`, while a trial is mid-epoch: the cancelled attempt saves and exits
    before the new one starts (the runner never holds two of a trial, nor more than max_parallel), and the new
    attempt continues from the checkpoint."""
    out = tmp_path / "sw"
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"recipe": "base", "name": "cr", "grid": {"train.seed": [0, 1, 2]}, "overrides": [
        f"data.train_dir={lfw}/train", f"data.val_dir={lfw}/val", "data.image_size=32", "data.batch_size=8",
        "data.num_workers=0", "train.epochs=15", "train.checkpoint_every_steps=2", *TINY]}))  # fmt: skip
    assert ftl("sweep", path, "--cluster", local(tmp_path, 2), "--out", out, env=FAST).returncode == 0
    wait_for(lambda: list(out.glob("trials/*/checkpoints/step_*/trainer.json")), 120, "a checkpoint")
    assert "cancelled 3" in ftl("cancel", out).stdout
    for _ in range(2):  # the cancel sticks, whatever the runner or the trials report meanwhile
        assert set(mf.counts(mf.read(out))) <= {"CANCELLED", "CANCELLING"} and ftl("status", out).returncode == 0
    resumed = ftl("resume", out)
    assert "resubmitted 3" in resumed.stdout, resumed.stdout + resumed.stderr
    assert ftl("status", out).stdout.count("CANCELLING") <= 2
    done = ftl("wait", out, "--poll", "0.5")
    assert done.returncode == 0 and "3 completed" in done.stdout, done.stdout + done.stderr
    windows = runner_windows(out)
    for job, attempt, start, end in windows:
        for other, other_attempt, s2, e2 in windows:
            if other == job and other_attempt != attempt:
                assert end <= s2 or e2 <= start, f"{job}: attempts {attempt} and {other_attempt} overlapped"
    moments = sorted(t for _, _, s, e in windows for t in (s, e))
    assert max(sum(s <= m < e for _, _, s, e in windows) for m in moments) <= 2  # max_parallel
    man = mf.read(out)
    assert all(len(t.job_ids) == 2 for t in man.trials.values())
    logs = "".join((out / t.run_dir / "train.log").read_text() for t in man.trials.values())
    assert "(resuming step_" in logs  # a cancelled trial continued from its checkpoint
    assert "nothing to resume" in ftl("resume", out).stdout


def test_a_paused_worker_wakes_fenced_and_its_trial_is_told_once(tmp_path):
    """SIGSTOP a search worker mid-trial past stale_after_s (a swapping node, a hung NFS mount): the other worker
    adopts the trial and runs it to the end; the paused one, woken, finds the newer lease at its next report and
    stops without writing; every trial is told once and the budget is kept."""
    out = tmp_path / "sw"
    path = search_file(tmp_path, n_trials=4, program="jobs.objectives:sleep",
                       space={"optim.lr": {"loguniform": [1e-5, 1e-1]}, "train.epochs": {"choice": [60]}})  # fmt: skip
    assert ftl("sweep", path, "--cluster", local(tmp_path, 2), "--out", out, env=FAST).returncode == 0
    first = wait_for(lambda: [t for t in mf.read(out).trials.values() if t.slot == 0], 60, "slot 0's first trial")[0]
    worker = json.loads((out / "workers" / "w0" / "local_job.json").read_text())["pid"]
    os.kill(worker, signal.SIGSTOP)
    try:
        wait_for(lambda: any(e["id"] == first.id and e.get("adopted") for e in events(out, "claim")), 60, "the adoption")
        wait_for(lambda: first.id in told_once(out), 60, "the adopted trial to end")
    finally:
        os.kill(worker, signal.SIGCONT)
    done = ftl("wait", out, "--poll", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert told_once(out) == {f"t{i:05d}": "COMPLETED" for i in range(4)}
    assert sorted(journal(out)) == ["COMPLETE"] * 4
    assert "taken over by a newer attempt" in (out / "workers" / "w0" / "train.log").read_text()


def test_a_hung_trial_is_killed_at_its_time_limit_and_a_cancel_reaches_it(tmp_path):
    """A worker whose objective hangs (and ignores SIGTERM): the local executor's timeout_min ends it - USR2 first,
    SIGKILL at the limit - so `ftl wait` ends; a cancel of a hung worker kills it after the grace."""
    out = tmp_path / "sw"
    path = search_file(tmp_path, n_trials=1, max_parallel=1, program="jobs.objectives:hang")
    assert ftl("sweep", path, "--cluster", local(tmp_path, 1, timeout_min="0:04", signal_delay_s=2), "--out", out,
               env=FAST).returncode == 0  # fmt: skip
    started = time.monotonic()
    done = ftl("wait", out, "--poll", "0.5")
    assert done.returncode == 1 and time.monotonic() - started < 60, done.stdout + done.stderr
    assert "w0 timeout: time limit reached" in done.stdout, done.stdout
    out2 = tmp_path / "sw2"
    assert ftl("sweep", path, "--cluster", local(tmp_path, 1), "--out", out2, env=FAST).returncode == 0
    wait_for(lambda: mf.read(out2).trials, 60, "the trial to start")
    assert "cancelled 1" in ftl("cancel", out2).stdout
    done = ftl("wait", out2, "--poll", "0.5", "--timeout", "60")
    assert "1 cancelled" in done.stdout.splitlines()[0] or "workers: 1 cancelled" in done.stdout, done.stdout


def test_deleting_the_lock_file_under_running_workers_never_overruns_the_budget(tmp_path):
    """The sweep lock file deleted again and again while three workers claim trials: a holder that lost its lock
    writes nothing and tries again, so the search ends with exactly n_trials trials, each asked and told once."""
    out = tmp_path / "sw"
    path = search_file(tmp_path, n_trials=24, max_parallel=3, program="jobs.objectives:sleep",
                       space={"optim.lr": {"loguniform": [1e-5, 1e-1]}, "train.epochs": {"choice": [1]}})  # fmt: skip
    assert ftl("sweep", path, "--cluster", local(tmp_path, 3), "--out", out).returncode == 0
    stop = threading.Event()

    def delete_locks() -> None:
        while not stop.is_set():
            (out / "sweep.lock").unlink(missing_ok=True)
            time.sleep(0.2)

    thread = threading.Thread(target=delete_locks, daemon=True)
    thread.start()
    try:
        wait_for(lambda: all(w.state != "RUNNING" for w in mf.read(out).jobs.values()) and len(mf.read(out).trials) >= 24,
                 120, "the search to end")  # fmt: skip
    finally:
        stop.set()
        thread.join()
    done = ftl("wait", out, "--poll", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(events(out, "ask")) == 24 and len(told_once(out)) == 24
    states = journal(out)  # asks a worker could not record (its lock deleted under it) were told FAIL, never run
    assert states.count("COMPLETE") == 24 and set(states) <= {"COMPLETE", "FAIL"}


# ---------------------------------------------------------------- poison, NaN


def test_a_trial_that_kills_its_process_fails_after_max_attempts(tmp_path):
    """Trial t00000 kills its worker's process (an OOM kill, a segfault) each time it runs: adopted once more by
    another worker, then FAILED ("its worker died ... 2 times") and told FAIL - the other trials run."""
    out = tmp_path / "sw"
    path = search_file(tmp_path, n_trials=3, max_attempts=2, program="jobs.objectives:die")
    assert ftl("sweep", path, "--cluster", local(tmp_path, 2), "--out", out).returncode == 0
    ftl("wait", out, "--poll", "0.5")
    for _ in range(3):  # each resume gives the search fresh workers, as `ftl wait` advises
        if told_once(out).get("t00000") == "FAILED":
            break
        ftl("resume", out)
        ftl("wait", out, "--poll", "0.5")
    told = told_once(out)
    assert told["t00000"] == "FAILED" and len(told) == 3 and list(told.values()).count("COMPLETED") == 2
    man = mf.read(out)
    assert "its worker died or stopped 2 times" in man.trials["t00000"].cause
    assert journal(out)[0] == "FAIL"
    status = ftl("status", out)
    assert "its worker died or stopped 2 times" in status.stdout


def test_nan_and_infinite_metrics_fail_the_trial_everywhere(tmp_path):
    """A metric that is NaN, +inf or -inf is no result: FAILED ("metric val_top1 is nan") in the log, status, wait and
    the study, and never the best trial."""
    out = tmp_path / "sw"
    path = search_file(tmp_path, n_trials=3, max_parallel=1, program="jobs.objectives:nan")
    assert ftl("sweep", path, "--cluster", local(tmp_path, 1), "--out", out).returncode == 0
    done = ftl("wait", out, "--poll", "0.5")
    assert done.returncode == 1 and "best trial" not in done.stdout, done.stdout
    causes = {t.id: t.cause for t in mf.read(out).trials.values()}
    assert causes == {"t00000": "metric val_top1 is nan", "t00001": "metric val_top1 is inf",
                      "t00002": "metric val_top1 is -inf"}  # fmt: skip
    assert journal(out) == ["FAIL"] * 3
    assert "metric val_top1 is inf" in ftl("status", out).stdout
    report = ftl("report", out)
    assert report.returncode == 0, report.stderr


# ---------------------------------------------------------------- extending, damage


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(sweep file, sweep dir) of a finished 3-trial search; tests copy the dir."""
    tmp = tmp_path_factory.mktemp("fin")
    path = search_file(tmp, n_trials=3, max_parallel=1)
    assert ftl("sweep", path, "--cluster", local(tmp, 1), "--out", tmp / "sw").returncode == 0
    assert ftl("wait", tmp / "sw", "--poll", "0.5").returncode == 0
    return path, tmp / "sw"


def copy_of(finished, tmp_path) -> tuple[Path, Path]:
    path, sweep = finished
    shutil.copytree(sweep, tmp_path / "sw", ignore=shutil.ignore_patterns("sweep.lock", ".local_runner.lock"))
    return path, tmp_path / "sw"


@pytest.mark.parametrize(("change", "refused"), [
    ({"n_trials": 2}, "n_trials=2 is below the 3 trials this search already asked"),
    ({"space": {"optim.lr": {"loguniform": [1e-4, 1e-1]}}}, "another space"),
    ({"method": "random"}, "another method"), ({"seed": 7}, "another seed"),
    ({"program": "jobs.objectives:sleep"}, "another program"),
    ({"early_stop": {"type": "median"}}, "another early_stop"),
    ({"metric": {"name": "val_loss", "goal": "minimize"}}, "another metric / mode"),
    ({"recipe": "fine_tune"}, "another recipe"), ({"overrides": ["data.train_dir=/tmp"]}, "another overrides"),
    ({"n_trials": 5, "max_parallel": 2, "stale_after_s": 30, "max_attempts": 5}, None),
])  # fmt: skip
def test_extending_a_search_applies_or_refuses_every_changed_setting(finished, tmp_path, change, refused):
    path, sweep = copy_of(finished, tmp_path)
    data = {**yaml.safe_load(path.read_text()), **change}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    before = (sweep / event_log.LOG).read_bytes()
    proc = ftl("sweep", changed, "--cluster", local(tmp_path, 2), "--out", sweep)
    if refused:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and refused in lines[0], proc.stderr
        assert (sweep / event_log.LOG).read_bytes() == before  # nothing written, nothing submitted
        return
    assert proc.returncode == 0, proc.stderr
    assert ftl("wait", sweep, "--poll", "0.5").returncode == 0
    man = mf.read(sweep)
    assert len(man.trials) == 5 and set(man.jobs) == {"w0", "w1"}  # the new budget, the new worker count
    assert man.search["stale_after_s"] == 30 and man.max_attempts == 5
    assert sorted(journal(sweep)) == ["COMPLETE"] * 5


@pytest.mark.parametrize("damage", ["garbage line", "cut short", "lost trials", "missing"])
def test_a_damaged_study_journal_is_named_then_rebuilt_by_repair(finished, tmp_path, damage):
    path, sweep = copy_of(finished, tmp_path)
    journal_file = sweep / "search" / "study.journal"
    lines = journal_file.read_bytes().splitlines(keepends=True)
    if damage == "garbage line":
        journal_file.write_bytes(b"".join(lines[:3]) + b"\x00\xff not json\n" + b"".join(lines[3:]))
    elif damage == "cut short":
        journal_file.write_bytes(journal_file.read_bytes()[:-7])
    elif damage == "lost trials":
        first = next(i for i, line in enumerate(lines) if b'"op_code":4' in line)
        journal_file.write_bytes(b"".join(lines[: first + 1]))  # the file cut after its first trial
    else:
        journal_file.unlink()
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "n_trials": 5}))
    for args in (("report", sweep), ("resume", sweep), ("sweep", more, "--cluster", local(tmp_path, 1), "--out", sweep)):
        proc = ftl(*args)
        lines_ = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines_) == 1, (args[0], proc.stdout, proc.stderr)
        assert "study.journal" in lines_[0] and f"ftl repair {sweep}" in lines_[0], lines_[0]
    repaired = ftl("repair", sweep)
    assert repaired.returncode == 0 and "rebuilt search/study.journal" in repaired.stdout, repaired.stdout + repaired.stderr
    assert journal(sweep) == ["COMPLETE"] * 3
    assert ftl("report", sweep).returncode == 0
    grown = ftl("sweep", more, "--cluster", local(tmp_path, 1), "--out", sweep)
    assert grown.returncode == 0, grown.stderr
    assert ftl("wait", sweep, "--poll", "0.5").returncode == 0
    assert sorted(journal(sweep)) == ["COMPLETE"] * 5
