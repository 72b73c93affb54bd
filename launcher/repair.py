"""`ftl repair SWEEP_DIR`: bring a damaged sweep dir back to one that reads, saying what was lost.

- events.jsonl: every line that is not an event ftl can fold (garbage, a foreign line, a line cut by a crash) is
  dropped; the file as it was is kept beside it (events.jsonl.damaged-<time>) and the trials the dropped lines
  named are listed, for `ftl status` (which asks the scheduler again) and `squeue` to check.
- search/study.journal (a search): when a line is damaged, or it holds fewer trials than the sweep asked, it is
  rebuilt from the sweep's log - each trial's parameters, state and value (the per-epoch reports the pruner used
  are not in the log: they are lost) - and the old one kept beside it.
- state/snapshot.json (a cache) is removed.
Everything happens under the sweep lock; nothing is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from core.errors import FtlError
from launcher import event_log
from launcher import manifest as mf
from launcher.sweep_lock import sweep_lock


def repair(sweep_dir: str | Path) -> list[str]:
    """Repair what is damaged; returns one line per thing done (empty: nothing was damaged)."""
    sweep_dir = Path(sweep_dir)
    mf.read_sweep(sweep_dir)  # sweep.json itself cannot be rebuilt: a damaged one is named here
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with sweep_lock(sweep_dir) as held:
        done = _repair_log(sweep_dir, held, stamp)
        (sweep_dir / event_log.SNAPSHOT).unlink(missing_ok=True)
        man = mf.read(sweep_dir)
        if man.search:
            done += _repair_journal(man, stamp)
    return done


def _repair_log(sweep_dir: Path, held, stamp: str) -> list[str]:
    if not (sweep_dir / event_log.LOG).is_file():
        return []
    man = mf.read_sweep(sweep_dir)
    kept, dropped, touched = [], [], set()
    for number, raw in event_log.lines(sweep_dir):
        if number == 1:
            continue  # the header: a new one is written
        try:
            if not raw.endswith(b"\n"):
                raise ValueError("cut short")
            event = json.loads(raw)
            if not isinstance(event, dict) or "e" not in event:
                raise ValueError("not an event")
            mf.apply(man, number, event)
            kept.append(event)
        except (ValueError, UnicodeDecodeError, FtlError):
            dropped.append(number)
            text = raw.decode(errors="replace")
            touched.update(i for i in man.jobs if i in text)
    if not dropped:
        return []
    copy = sweep_dir / f"{event_log.LOG}.damaged-{stamp}"
    shutil.copy2(sweep_dir / event_log.LOG, copy)
    staging = sweep_dir / "state" / "repairing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    event_log.create(staging)
    event_log.append(staging, kept, held.verify)
    os.replace(staging / event_log.LOG, sweep_dir / event_log.LOG)
    staging.rmdir()
    who = f"; trials they named: {', '.join(sorted(touched)[:10])}{' ...' if len(touched) > 10 else ''}" if touched else ""
    return [f"dropped {len(dropped)} damaged lines of {event_log.LOG} (lines {', '.join(map(str, dropped[:10]))}"
            f"{' ...' if len(dropped) > 10 else ''}){who}; the file as it was: {copy.name}. `ftl status` asks the "
            "scheduler again; check `squeue` for jobs of trials shown as never submitted"]  # fmt: skip


def _repair_journal(man: mf.Manifest, stamp: str) -> list[str]:
    from jobs.study import check_journal

    path = man.dir / "search" / "study.journal"
    try:
        check_journal(path, len(man.trials), man.dir)
        return []
    except FtlError as e:
        why = str(e).split(";")[0]
    rebuild_journal(man, path)
    note = ""
    if path.with_suffix(f".journal.damaged-{stamp}").exists():
        note = f"; the old one: {path.name}.damaged-{stamp}"
    return [f"rebuilt {path.relative_to(man.dir)} from the sweep's log ({len(man.trials)} trials; their per-epoch "
            f"reports to the pruner are lost) - it was: {why}{note}"]  # fmt: skip


def rebuild_journal(man: mf.Manifest, path: Path) -> None:
    """A new study journal holding the sweep's trials with the same numbers, parameters, states and values."""
    import optuna

    from jobs.study import distributions, open_study, params_of

    if path.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        os.replace(path, path.with_name(f"{path.name}.damaged-{stamp}"))
    for lock in path.parent.glob(f"{path.name}.lock*"):
        lock.unlink(missing_ok=True)  # Optuna's own lock of the old file
    s = man.search or {}
    study = open_study(path, man.name, man.mode, s["method"], s["seed"], s["early_stop"])
    dists = distributions(s["space"])
    states = {"COMPLETED": optuna.trial.TrialState.COMPLETE, "PRUNED": optuna.trial.TrialState.PRUNED}
    by_number = {t.number: t for t in man.trials.values() if t.number is not None}
    for number in range(max(by_number, default=-1) + 1):
        record = by_number.get(number)
        if record is None:  # asked over the budget and failed at once: a placeholder keeps the numbers
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
            continue
        params = params_of(record.overrides, s["space"])
        used = {k: dists[k] for k in params}
        if record.state in ("RUNNING", "INTERRUPTED", "STALLED"):
            study.enqueue_trial(params)
            study.ask(used)  # RUNNING with these parameters: its worker tells it later
            continue
        state = states.get(record.state, optuna.trial.TrialState.FAIL)
        value = record.result.get(man.metric) if state == optuna.trial.TrialState.COMPLETE else None
        study.add_trial(optuna.trial.create_trial(state=state, value=value, params=params, distributions=used))
