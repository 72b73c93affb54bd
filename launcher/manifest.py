"""The sweep dir on disk: what the sweep is, and every trial's state as the fold of one append-only log.

    SWEEP_DIR/sweep.json        what the sweep is: name, uid, recipe, sweep-wide overrides, metric, cluster (its
                                secrets left out), early_stop, a search's settings and the job table (id ->
                                overrides: the trials, or a search's worker slots). Written once, before any job
                                is queued; the dir appears complete (it is renamed into place).
    SWEEP_DIR/events.jsonl      every change of state since, one event a line (launcher/event_log.py): a batch's
                                intent (its trials SUBMITTING, before the scheduler hears of it), then its job ids
                                (PENDING); a job's state as the scheduler or its run dir said; a cancel; a search
                                trial asked, claimed, told. No event: never submitted (NEW).
    SWEEP_DIR/sweep.lock        the lock every append happens under (launcher/sweep_lock.py: a lock file, not flock)
    SWEEP_DIR/recipe.yaml       the base recipe as resolved at submission; sweep.yaml the sweep file as read
    SWEEP_DIR/trials/<id>/      each trial's run dir: written by the attempt holding its lease (core/lease.py)
    SWEEP_DIR/logs/             SLURM / local runner logs

A crash at any instant leaves each trial unsubmitted, submitted, or submitting (an intent with no job ids):
`ftl resume` adopts or cancels what SLURM holds under that batch's token. Commands that decide (sweep, resume,
cancel, a runner starting a trial, a worker claiming one) decide under the lock on state read inside it
(`locked`); commands that only look (status, wait, report) read without it and append what they derived in one
short hold (`commit`), dropping what a newer event superseded meanwhile.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from core.errors import FtlError
from core.fileio import write_atomic
from launcher import event_log
from launcher.sweep_lock import sweep_lock

SWEEP = "sweep.json"
VERSION = 3
SNAPSHOT_AFTER_BYTES = 1 << 20  # a reader that folded this much of the log's tail leaves a snapshot


@dataclass
class TrialRecord:
    id: str
    overrides: list[str]
    run_dir: str  # relative to the sweep dir
    state: str = "NEW"  # the last state ftl derived (launcher/states.py); NEW when never submitted
    attempt: int = 0  # submissions so far (a search trial: claims so far)
    job_ids: list[str] = field(default_factory=list)  # one per submission that reached the scheduler
    token: str | None = None  # the submission batch of the current attempt (its jobs carry it in their name)
    index: int | None = None  # the trial's place in that batch (its array index)
    submitted: float | None = None  # when the current attempt was submitted (time.time())
    cancelled: bool = False  # `ftl cancel` asked for the current attempt: sticks until the next submission
    result: dict[str, Any] = field(default_factory=dict)  # the metrics of result.json, once final
    cause: str = ""  # why the last attempt did not succeed: the error, the signal, OUT_OF_MEMORY, ...
    failures: int = 0  # attempts that ended failed (not cancelled or preempted): max_attempts stops retries
    number: int | None = None  # a search trial's: its Optuna number, its id in the journal, the slot running it
    optuna_id: int | None = None
    slot: int | None = None

    @property
    def job_id(self) -> str | None:
        return self.job_ids[-1] if self.job_ids else None


STATE_TYPES: dict[str, Any] = {
    "state": str, "attempt": int, "job_ids": list, "token": (str, type(None)), "index": (int, type(None)),
    "submitted": (int, float, type(None)), "cancelled": bool, "result": dict, "cause": str, "failures": int,
    "number": (int, type(None)), "optuna_id": (int, type(None)), "slot": (int, type(None)),
}  # fmt: skip
STATE_KEYS = tuple(STATE_TYPES)


@dataclass
class Manifest:
    name: str
    recipe: str
    overrides: list[str]
    metric: str
    mode: str
    cluster: dict[str, Any]
    early_stop: dict[str, Any] | None
    created: str
    trials: dict[str, TrialRecord]
    sweep_file: str = ""
    uid: str = ""  # random, per launch: W&B group suffix and SLURM job names
    search: dict[str, Any] | None = None  # an adaptive search (launcher/search.py): its jobs are worker slots
    max_attempts: int = 3  # a trial that failed this often is not resubmitted (a search: not adopted again)
    version: int = VERSION
    dir: Path = Path(".")
    jobs: dict[str, TrialRecord] = field(default_factory=dict)  # what is submitted: the trials, or a search's slots
    changed: set[str] = field(default_factory=set)  # jobs whose state must be appended
    later: list[dict[str, Any]] = field(default_factory=list)  # other events derived meanwhile (appended with them)
    log: str = ""  # the id of the log folded (a repaired log has another)
    offset: int = 0  # how far into the log this fold has read
    line: int = 0
    held: Any = None  # the sweep lock, while held (appends verify it)
    added: dict[str, list[str]] = field(default_factory=dict)  # grid trials added after the launch ("add" events)

    def __post_init__(self) -> None:
        self.jobs = self.jobs or self.trials

    def best(self) -> TrialRecord | None:
        done = [t for t in self.trials.values() if finite(t.result.get(self.metric)) and t.state == "COMPLETED"]
        if not done:
            return None
        sign = 1 if self.mode == "max" else -1
        return max(done, key=lambda t: sign * t.result[self.metric])

    def update(self, record: TrialRecord, **changes: Any) -> None:
        """Change a job's state fields; appended when the lock is released (or by `save_states` / `commit`)."""
        for key, value in changes.items():
            setattr(record, key, value)
        self.changed.add(record.id)

    def append(self, events: list[dict[str, Any]]) -> None:
        """Append events (under the lock) and fold them into this manifest."""
        if self.held is None:
            raise RuntimeError("events are appended under the sweep lock (manifest.locked)")
        self.offset = event_log.append(self.dir, events, self.held.verify)
        for event in events:
            self.line += 1
            apply(self, self.line, event)

    @property
    def job_name(self) -> str:
        """Prefix of every SLURM job name of this sweep launch: `ftl-<name>-<uid>`."""
        return f"ftl-{self.name}-{self.uid}"


RUNTIME_FIELDS = {"dir", "changed", "later", "trials", "jobs", "log", "offset", "line", "held", "added"}  # not in sweep.json


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite (a metric that can rank a trial)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def new_uid() -> str:
    return secrets.token_hex(4)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# ---------------------------------------------------------------- the fold


def _state(record: TrialRecord, data: dict[str, Any]) -> None:
    """A job's own state (wins when its attempt is the record's or newer: an older one was superseded)."""
    keys = data.keys() & STATE_TYPES.keys()
    for key in keys:
        if not isinstance(data[key], STATE_TYPES[key]):
            raise ValueError(f"{key} is a {type(data[key]).__name__}")
    if data.get("attempt", record.attempt) < record.attempt:
        return
    record.__dict__.update({key: data[key] for key in keys})


def _batch(man: Manifest, event: dict[str, Any]) -> None:
    """A batch's trials (in attempts not superseded) become SUBMITTING, or PENDING with their job id."""
    job_ids, token = event["job_ids"], str(event["token"])
    if job_ids is not None and len(job_ids) != len(event["trials"]):
        raise ValueError("job_ids and trials differ in length")
    jobs, submitted = man.jobs, event.get("submitted")
    state = "SUBMITTING" if job_ids is None else "PENDING"
    for index, (trial_id, attempt) in enumerate(event["trials"]):
        record = jobs.get(trial_id) or _job(man, trial_id)
        if not isinstance(attempt, int) or attempt < record.attempt:
            continue
        record.attempt, record.token, record.index, record.state = attempt, token, index, state
        record.submitted, record.cancelled, record.cause = submitted, False, ""
        if record.result:
            record.result = {}
        if job_ids is not None and (not record.job_ids or record.job_ids[-1] != job_ids[index]):
            record.job_ids = [*record.job_ids, str(job_ids[index])]


def _revert(man: Manifest, event: dict[str, Any]) -> None:
    """A refused batch: its trials as they were before it."""
    for trial_id, data in event["records"].items():
        record = _job(man, trial_id)
        if record.token == event["token"]:
            for key in STATE_KEYS:
                if key in data:
                    setattr(record, key, data[key])


def _job(man: Manifest, trial_id: str) -> TrialRecord:
    record = man.jobs.get(trial_id)
    if record is None:
        raise ValueError(f"job {trial_id!r} is not in {SWEEP}")
    return record


def _ask(man: Manifest, event: dict[str, Any]) -> None:
    """A search trial asked of the study by a worker slot: it runs there (attempt 1)."""
    trial_id = str(event["id"])
    overrides = event["overrides"]
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ValueError("overrides are not a list of strings")
    man.trials[trial_id] = TrialRecord(trial_id, list(overrides), f"trials/{trial_id}", "RUNNING", 1,
                                       [str(event["job"])], submitted=float(event["t"]), number=int(event["number"]),
                                       optuna_id=int(event["optuna_id"]), slot=int(event["slot"]))  # fmt: skip


def _add(man: Manifest, event: dict[str, Any]) -> None:
    """Grid trials added to a launched sweep (`ftl sweep FILE --out DIR` with new values or seeds): NEW, queued by
    the resume that follows. A trial already there is left as it is."""
    for trial_id, overrides in event["trials"]:
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError("overrides are not a list of strings")
        if str(trial_id) not in man.jobs:
            man.jobs[str(trial_id)] = TrialRecord(str(trial_id), list(overrides), f"trials/{trial_id}")
            man.added[str(trial_id)] = list(overrides)


def _claim(man: Manifest, event: dict[str, Any]) -> None:
    """A search trial taken again (by its own slot after a requeue, or adopted from a worker that stopped: that
    counts as its worker dying, against max_attempts)."""
    record = man.trials[str(event["id"])]
    record.attempt, record.slot, record.state = int(event["attempt"]), int(event["slot"]), "RUNNING"
    record.job_ids, record.submitted = [*record.job_ids, str(event["job"])], float(event["t"])
    record.failures += bool(event.get("adopted"))


def _tell(man: Manifest, event: dict[str, Any]) -> None:
    """A search trial ended (told to the study with this state), or was released: INTERRUPTED by its own worker
    (preempted, cancelled), or by the launcher when its worker's job ended without releasing it (`died`: a death,
    against max_attempts)."""
    record = man.trials[str(event["id"])]
    if int(event["attempt"]) >= record.attempt:
        _state(record, {"state": str(event["state"]), "result": event.get("result") or {}, "cause": event.get("cause", "")})
        record.failures += bool(event.get("died"))


def _search(man: Manifest, event: dict[str, Any]) -> None:
    """A search extended: its settings from now on (a new budget, more worker slots)."""
    settings = {k: v for k, v in event.items() if k != "e"}
    man.search = {**(man.search or {}), **settings}
    if "max_attempts" in settings:
        man.max_attempts = int(settings["max_attempts"])
    for slot in range(int(man.search.get("max_parallel", 0))):
        man.jobs.setdefault(f"w{slot}", TrialRecord(f"w{slot}", [], f"workers/w{slot}"))


def _settings(man: Manifest, event: dict[str, Any]) -> None:
    if "max_attempts" in event:
        man.max_attempts = int(event["max_attempts"])


APPLY = {"batch": _batch, "revert": _revert, "add": _add, "ask": _ask, "claim": _claim, "tell": _tell, "search": _search,
         "settings": _settings, "state": lambda man, e: _state(_job(man, str(e["id"])), e)}  # fmt: skip


def apply(man: Manifest, line: int, event: dict[str, Any]) -> None:
    """Fold one event into the manifest; an event of the wrong shape is named as damage of its line."""
    kind = event.get("e")
    if kind == "log":
        return
    if kind not in APPLY:
        raise event_log.damaged(man.dir, line, f"unknown event {kind!r}")
    try:
        APPLY[kind](man, event)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise event_log.damaged(man.dir, line, f"a {kind!r} event that is not ftl's: {type(e).__name__} {e}") from None


# ---------------------------------------------------------------- writing


def create(sweep_dir: Path, man: Manifest, files: dict[str, str]) -> None:
    """Write a new sweep dir complete (sweep.json, its log, extra files, logs/) and rename it into place."""
    sweep_dir = Path(sweep_dir)
    parent = sweep_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sweep_dir.name}.", dir=parent))
    except OSError as e:
        raise FtlError(f"cannot create the sweep dir {sweep_dir}: {e.strerror}") from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        (tmp / "state").mkdir()
        (tmp / "logs").mkdir()
        for name, text in files.items():
            (tmp / name).write_text(text)
        _write_json(tmp / SWEEP, sweep_data(man))
        man.log = event_log.create(tmp)
        os.rename(tmp, sweep_dir)  # fails if sweep_dir appeared meanwhile: never merged into another sweep
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FtlError(f"cannot create the sweep dir {sweep_dir}: {e.strerror or e}") from None
    man.dir = sweep_dir
    man.log, man.offset, man.line = event_log.read_head(sweep_dir)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_json(path: Path, data: Any) -> None:
    """Compact JSON, temp-then-rename with one fsync: sweep.json of a 100,000-trial sweep is megabytes."""
    write_atomic(path, lambda p: p.write_text(json.dumps(data, separators=(",", ":"))))


def sweep_data(man: Manifest) -> dict[str, Any]:
    data = {f.name: getattr(man, f.name) for f in fields(Manifest) if f.name not in RUNTIME_FIELDS}
    data["trials"] = {t.id: t.overrides for t in man.jobs.values()}
    return data


def state_event(record: TrialRecord) -> dict[str, Any]:
    return {"e": "state", "id": record.id, **{k: getattr(record, k) for k in STATE_KEYS}}


def save_states(man: Manifest) -> None:
    """Append the changed jobs' states and the other derived events (under the lock)."""
    if man.changed or man.later:
        ids, later, man.changed, man.later = sorted(man.changed), man.later, set(), []
        man.append([*(state_event(man.jobs[i]) for i in ids if i in man.jobs), *later])


def write_batch(man: Manifest, token: str, trials: list[tuple[str, int]], submitted: float,
                job_ids: list[str] | None) -> None:  # fmt: skip
    """A batch: the intent (job_ids None), on disk before the scheduler hears of it; then its job ids."""
    man.append([{"e": "batch", "token": token, "submitted": submitted, "trials": [list(t) for t in trials],
                 "job_ids": job_ids}])  # fmt: skip


def revert_batch(man: Manifest, token: str, before: dict[str, dict[str, Any]]) -> None:
    """The scheduler refused the batch: its trials are what they were before its intent."""
    man.append([{"e": "revert", "token": token, "records": before}])


# ---------------------------------------------------------------- reading


def read_sweep(sweep_dir: Path) -> Manifest:
    """sweep.json alone: what the sweep is, every job as NEW (the log is not read)."""
    path = sweep_dir / SWEEP
    if not path.is_file():
        raise FtlError(f"{sweep_dir} is not a sweep dir (no {SWEEP}); `ftl sweep FILE` creates one")
    man = _manifest_from(_load_json(path), path)
    man.dir = sweep_dir
    return man


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic GC paused while a large sweep's records are built or refreshed: 100,000 records trigger
    full collections that find nothing and double the time of `ftl status`; reference counting still frees
    everything, and the collector runs again after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@gc_paused()
def read(sweep_dir: str | Path) -> Manifest:
    """The sweep as its files say now: sweep.json, then the log (from a snapshot when one matches). A damaged
    file is one clear FtlError naming it and its repair."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / event_log.LOG).is_file():
        from launcher.migrate import read_old

        return read_old(sweep_dir)
    man = read_sweep(sweep_dir)
    man.log, man.offset, man.line = event_log.read_head(sweep_dir)
    snapshot = event_log.load_snapshot(sweep_dir, man.log)
    if snapshot is not None:
        _restore(man, snapshot)
    start, first = man.offset, man.line
    catch_up(man)
    # worth it when the tail folded was long and of many lines (a few batch lines of 1,000 trials fold faster
    # than a snapshot of every trial is read)
    if man.offset - start > SNAPSHOT_AFTER_BYTES and man.line - first > len(man.jobs) + len(man.trials) * bool(man.search):
        event_log.save_snapshot(sweep_dir, _snapshot(man))
    return man


def catch_up(man: Manifest) -> set[str]:
    """Fold what was appended since this manifest was read; returns the ids the new events touched."""
    events, man.offset, man.line = event_log.read(man.dir, man.offset, man.line)
    touched: set[str] = set()
    for line, event in events:
        apply(man, line, event)
        if event["e"] == "batch":
            touched.update(str(trial_id) for trial_id, _ in event["trials"])
        elif event["e"] == "revert":
            touched.update(event["records"])
        elif "id" in event:
            touched.add(str(event["id"]))
    return touched


def _snapshot(man: Manifest) -> dict[str, Any]:
    def compact(record: TrialRecord) -> dict[str, Any]:
        return {k: v for k in STATE_KEYS if (v := getattr(record, k)) != getattr(EMPTY, k)}

    search_trials = {t.id: {"overrides": t.overrides, **compact(t)} for t in man.trials.values()} if man.search else {}
    return {"log": man.log, "offset": man.offset, "line": man.line, "search": man.search,
            "max_attempts": man.max_attempts, "added": man.added,
            "jobs": {t.id: compact(t) for t in man.jobs.values() if t.state != "NEW"},
            "search_trials": search_trials}  # fmt: skip


EMPTY = TrialRecord("", [], "")


def _restore(man: Manifest, snapshot: dict[str, Any]) -> None:
    try:
        if snapshot.get("search"):
            _search(man, {"e": "search", **snapshot["search"]})
        man.max_attempts = int(snapshot.get("max_attempts", man.max_attempts))
        _add(man, {"trials": list(snapshot.get("added", {}).items())})
        for trial_id, data in snapshot["jobs"].items():
            _state(_job(man, trial_id), data)
        for trial_id, data in snapshot.get("search_trials", {}).items():
            man.trials[trial_id] = record = TrialRecord(trial_id, list(data["overrides"]), f"trials/{trial_id}")
            _state(record, data)
        man.offset, man.line = snapshot["offset"], snapshot["line"]
    except (KeyError, TypeError, ValueError):  # not this fold's: start again from the log
        fresh = read_sweep(man.dir)
        man.jobs, man.trials = fresh.jobs, fresh.trials
        man.log, man.offset, man.line = event_log.read_head(man.dir)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FtlError(f"{path} is damaged (not JSON: {e}); restore it from a copy (it is written once, when the "
                       "sweep is created)") from None  # fmt: skip
    except OSError as e:
        raise FtlError(f"cannot read {path}: {e.strerror}") from None


def _manifest_from(data: Any, path: Path) -> Manifest:
    """Check the shape of sweep.json (every field, its type) and build the Manifest."""
    expect = {"name": str, "recipe": str, "overrides": list, "metric": str, "mode": str, "cluster": dict,
              "created": str, "trials": dict, "uid": str}  # fmt: skip
    if not isinstance(data, dict):
        raise FtlError(f"{path} is damaged: a mapping is expected, found {type(data).__name__}")
    problems = [f"'{k}' should be {t.__name__}" for k, t in expect.items() if not isinstance(data.get(k), t)]
    if not problems and data.get("version", VERSION) > VERSION:
        problems.append(f"version {data['version']} is newer than this ftl ({VERSION}): update ftl")
    bad = [k for k, v in (data.get("trials") or {}).items() if not (isinstance(v, list) and all(isinstance(o, str) for o in v))]
    if bad and not problems:
        problems.append(f"trial {bad[0]}'s overrides are not a list of strings")
    if not isinstance(data.get("search"), (dict, type(None))):
        problems.append("'search' should be a mapping")
    if problems:
        raise FtlError(f"{path} is damaged or not ftl's: {'; '.join(problems)}")
    folder = "workers" if data.get("search") else "trials"  # a search's jobs are its worker slots
    jobs = {k: TrialRecord(k, list(v), f"{folder}/{k}") for k, v in data["trials"].items()}
    known = {f.name for f in fields(Manifest)} - RUNTIME_FIELDS
    man = Manifest(**{k: v for k, v in data.items() if k in known and k != "trials"}, trials=jobs)
    if man.search:
        man.jobs, man.trials = jobs, {}
    return man


# ---------------------------------------------------------------- the lock


@contextlib.contextmanager
def locked(sweep_dir: str | Path) -> Iterator[Manifest]:
    """The sweep under its lock, up to date once the lock is taken; changed states are appended on the way out
    (also when the block raises: what was done - a job queued - must be recorded). The log is folded before the
    lock is taken (it only grows) and caught up under it, so a 100,000-trial sweep is not read while others wait."""
    sweep_dir = Path(sweep_dir)
    read_sweep(sweep_dir) if not (sweep_dir / event_log.LOG).is_file() else None  # not a sweep dir: say so first
    man = read(sweep_dir) if (sweep_dir / event_log.LOG).is_file() else None
    with sweep_lock(sweep_dir) as held:
        if man is None:
            from launcher.migrate import migrate

            migrate(sweep_dir, held)
            man = read(sweep_dir)
        else:
            catch_up(man)
        man.held = held
        try:
            yield man
        finally:
            try:
                save_states(man)
            finally:
                man.held = None


def commit(man: Manifest) -> None:
    """Append what a reader derived (status, wait) in one short hold of the lock: first fold what others appended
    meanwhile, and drop the changes of jobs they touched (their word is newer)."""
    if not man.changed and not man.later:
        catch_up(man)
        mark_stalled(man)
        return
    with sweep_lock(man.dir) as held:
        touched = catch_up(man)
        man.changed -= touched
        man.later = [e for e in man.later if str(e.get("id")) not in touched]
        man.held = held
        try:
            save_states(man)
        finally:
            man.held = None
    mark_stalled(man)


def mark_stalled(man: Manifest) -> None:
    """A search trial RUNNING whose run dir's lease was not renewed for stale_after_s is STALLED in this view
    (its worker died or is paused: another worker, or `ftl resume`, adopts it). Nothing is written."""
    if not man.search:
        return
    for record in man.trials.values():
        if record.state == "RUNNING" and stale_s(man, record) > man.search["stale_after_s"]:
            record.state = "STALLED"


def stale_s(man: Manifest, record: TrialRecord) -> float:
    """Seconds since a running search trial's worker was last seen: its run dir lease's heartbeat, or its claim
    (a worker takes the lease just after claiming)."""
    from core.lease import holder

    lease = holder(man.dir / record.run_dir)
    since_claim = time.time() - (record.submitted or 0)
    return min(lease["age_s"] if lease else float("inf"), since_claim)


# ---------------------------------------------------------------- run dirs


def read_trial_files(sweep_dir: Path, record: TrialRecord) -> tuple[dict, dict]:
    """(progress, result) written by the trial's engine into its run dir; empty dicts where absent or damaged."""
    run_dir = os.path.join(sweep_dir, record.run_dir)
    out: list[dict] = []
    for name in ("progress.json", "result.json"):
        try:
            with open(os.path.join(run_dir, name), "rb") as f:
                value = json.loads(f.read())
        except (OSError, ValueError):
            value = {}
        out.append(value if isinstance(value, dict) else {})
    return out[0], out[1]


class TrialFiles:
    """Each trial's (progress, result), read at most once per command, and only for trials whose run dir exists
    (a 100,000-trial sweep that has not started reads one directory listing, not 200,000 missing files)."""

    def __init__(self, man: Manifest):
        self.dir = man.dir
        self.present = set(_listdir(man.dir / "trials"))
        self.cache: dict[str, tuple[dict, dict]] = {}

    def __call__(self, record: TrialRecord) -> tuple[dict, dict]:
        if record.id not in self.cache:
            present = record.run_dir != f"trials/{record.id}" or record.id in self.present
            self.cache[record.id] = read_trial_files(self.dir, record) if present else ({}, {})
        return self.cache[record.id]


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def counts(man: Manifest, records: dict[str, TrialRecord] | None = None) -> dict[str, int]:
    """Trials (or the given records) per state, most common first."""
    out: dict[str, int] = {}
    for t in (man.trials if records is None else records).values():
        out[t.state] = out.get(t.state, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
