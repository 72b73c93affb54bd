"""The sweep dir on disk: everything needed to leave a sweep, kill anything, and come back to it.

    SWEEP_DIR/sweep.json        what the sweep is: name, uid, recipe, sweep-wide overrides, metric, cluster (its
                                secrets left out), early_stop and the trial table (id -> overrides). Written once,
                                before any job is queued; the dir appears complete (it is renamed into place).
    SWEEP_DIR/state/batches/<token>.json
                                one submission batch (one SLURM array): its trials with their attempt numbers, in
                                array order, written before the batch goes to the scheduler (the intent: its trials
                                are SUBMITTING), then again with the job ids the scheduler gave (they are PENDING).
                                One file per array, not one per trial: 100,000 trials are queued in 100 such files.
    SWEEP_DIR/state/<id>.json   one trial's own state, once something happened to it alone: a state the scheduler
                                reported, a result, a cancel, an adoption after a crash. It wins over its batch when
                                its attempt is the same or newer. No file and no batch: never submitted (NEW).

All of it is written temp-then-rename, and only under the sweep lock. A crash at any instant leaves each trial
unsubmitted, submitted, or submitting (an intent with no job ids): `ftl resume` adopts or cancels what SLURM holds
under that batch's token.
    SWEEP_DIR/manifest.json     an index of the above (one row per trial: state, job id, metric) for people and
                                tools, rewritten after every change; ftl itself never reads it.
    SWEEP_DIR/recipe.yaml       the base recipe as resolved at submission; sweep.yaml the sweep file as read
    SWEEP_DIR/trials/<id>/      each trial's run dir: written by its job only (config, metrics, checkpoints, result)
    SWEEP_DIR/logs/             SLURM / local runner logs

Launcher commands change state files only inside `locked()`, so two commands never interleave their decisions.
"""

from __future__ import annotations

import contextlib
import fcntl
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

SWEEP = "sweep.json"
INDEX = "manifest.json"
STATE_DIR = "state"
BATCH_DIR = "state/batches"
VERSION = 2


@dataclass
class TrialRecord:
    id: str
    overrides: list[str]
    run_dir: str  # relative to the sweep dir
    state: str = "NEW"  # the last state ftl derived (launcher/states.py); NEW when never submitted
    attempt: int = 0  # submissions so far
    job_ids: list[str] = field(default_factory=list)  # one per submission that reached the scheduler
    token: str | None = None  # the submission batch of the current attempt (its jobs carry it in their name)
    index: int | None = None  # the trial's place in that batch (its array index)
    submitted: float | None = None  # when the current attempt was submitted (time.time())
    cancelled: bool = False  # `ftl cancel` asked for the current attempt: sticks until the next submission
    result: dict[str, Any] = field(default_factory=dict)  # the metrics of result.json, once final

    @property
    def job_id(self) -> str | None:
        return self.job_ids[-1] if self.job_ids else None


STATE_KEYS = tuple(f.name for f in fields(TrialRecord) if f.name not in ("id", "overrides", "run_dir"))


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
    version: int = VERSION
    dir: Path = Path(".")
    changed: set[str] = field(default_factory=set)  # job ids whose state must be written back
    index_stale: bool = False  # manifest.json is behind the state files
    jobs: dict[str, TrialRecord] = field(default_factory=dict)  # what is submitted: the trials, or a search's slots

    def __post_init__(self) -> None:
        self.jobs = self.jobs or self.trials

    def best(self) -> TrialRecord | None:
        done = [t for t in self.trials.values() if isinstance(t.result.get(self.metric), (int, float))]
        if not done:
            return None
        sign = 1 if self.mode == "max" else -1
        return max(done, key=lambda t: sign * t.result[self.metric])

    def update(self, record: TrialRecord, **changes: Any) -> None:
        """Change a trial's state fields; written back when the lock is released (or by `save_states`)."""
        for key, value in changes.items():
            setattr(record, key, value)
        self.changed.add(record.id)

    @property
    def job_name(self) -> str:
        """Prefix of every SLURM job name of this sweep launch: `ftl-<name>-<uid>`."""
        return f"ftl-{self.name}-{self.uid}"


RUNTIME_FIELDS = {"dir", "changed", "index_stale", "trials", "jobs"}  # not stored in sweep.json


def new_uid() -> str:
    return secrets.token_hex(4)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# ---------------------------------------------------------------- writing


def _write_small(path: Path, data: bytes) -> None:
    """Temp-then-rename for many small files: no fsync per file (see `sync_dir`), no JSON pretty printing."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def sync_dir(path: Path) -> None:
    """Make the renames in a directory durable (one fsync for a whole batch of state files)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_states(man: Manifest, ids: set[str] | None = None) -> None:
    """Write the state files of the changed trials (or of `ids`); the index follows when the lock is released."""
    ids = set(man.changed) if ids is None else ids
    if not ids:
        return
    state_dir = man.dir / STATE_DIR
    for trial_id in ids:
        record = man.jobs[trial_id]
        data = {k: getattr(record, k) for k in STATE_KEYS}
        _write_small(state_dir / f"{trial_id}.json", json.dumps(data, separators=(",", ":")).encode())
    sync_dir(state_dir)
    man.changed -= ids
    man.index_stale = True


def write_index(man: Manifest) -> None:
    """manifest.json: the sweep and one row per trial, for people and tools (ftl reads the state files)."""
    def rows(records: dict[str, TrialRecord]) -> dict[str, Any]:
        return {t.id: {"state": t.state, "job_id": t.job_id, "attempt": t.attempt, "run_dir": t.run_dir,
                       "overrides": t.overrides, man.metric: t.result.get(man.metric)} for t in records.values()}  # fmt: skip

    meta = {k: v for k, v in sweep_data(man).items() if k != "trials"}
    workers = {"workers": rows(man.jobs)} if man.search else {}
    _write_json(man.dir / INDEX, {**meta, "trials": rows(man.trials), **workers})
    man.index_stale = False


def _write_json(path: Path, data: Any) -> None:
    """Compact JSON, temp-then-rename with one fsync: for files of a 100,000-trial sweep (tens of MB)."""
    write_atomic(path, lambda p: p.write_text(json.dumps(data, separators=(",", ":"))))


def sweep_data(man: Manifest) -> dict[str, Any]:
    data = {f.name: getattr(man, f.name) for f in fields(Manifest) if f.name not in RUNTIME_FIELDS}
    data["trials"] = {t.id: t.overrides for t in man.jobs.values()}
    return data


def create(sweep_dir: Path, man: Manifest, files: dict[str, str]) -> None:
    """Write a new sweep dir complete (sweep.json, extra files, state/ and logs/) and rename it into place."""
    sweep_dir = Path(sweep_dir)
    parent = sweep_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sweep_dir.name}.", dir=parent))
    except OSError as e:
        raise FtlError(f"cannot create the sweep dir {sweep_dir}: {e.strerror}") from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        (tmp / STATE_DIR).mkdir()
        (tmp / "logs").mkdir()
        for name, text in files.items():
            (tmp / name).write_text(text)
        _write_json(tmp / SWEEP, sweep_data(man))
        os.rename(tmp, sweep_dir)  # fails if sweep_dir appeared meanwhile: never merged into another sweep
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FtlError(f"cannot create the sweep dir {sweep_dir}: {e.strerror or e}") from None
    man.dir = sweep_dir
    write_index(man)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- reading


def read_sweep(sweep_dir: Path) -> Manifest:
    """sweep.json alone: what the sweep is, every trial as NEW (the state files are not read)."""
    path = sweep_dir / SWEEP
    if not path.is_file():
        raise FtlError(f"{sweep_dir} is not a sweep dir (no {SWEEP}); `ftl sweep FILE` creates one")
    man = _manifest_from(_load_json(path), path)
    man.dir = sweep_dir
    return man


def read_state(sweep_dir: Path, record: TrialRecord, batch: dict[str, Any] | None = None) -> TrialRecord:
    """Fill one record from a batch it is in and from its own state file (where that is as new)."""
    if batch is not None:
        apply_batch(Manifest("", "", [], "", "", {}, None, "", {record.id: record}), batch)  # just this record
    path = sweep_dir / STATE_DIR / f"{record.id}.json"
    if path.is_file():
        _apply_state(record, _load_json(path), path)
    return record


def read(sweep_dir: str | Path) -> Manifest:
    """The sweep as its files say now: sweep.json, then the batches in submission order, then each trial's own
    file where it is as new as its batch. A damaged file is one clear FtlError."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / SWEEP).is_file() and (sweep_dir / INDEX).is_file() and not (sweep_dir / STATE_DIR).is_dir():
        return _read_v1(sweep_dir)
    man = read_sweep(sweep_dir)
    for batch in read_batches(sweep_dir):
        apply_batch(man, batch)
    state_dir = sweep_dir / STATE_DIR
    for name in _listdir(state_dir):
        trial_id = name.removesuffix(".json")
        if name.startswith(".") or not name.endswith(".json") or trial_id not in man.jobs:
            continue  # a temporary file, or not a job of this sweep: ignored
        _apply_state(man.jobs[trial_id], _load_json(state_dir / name), state_dir / name)
    if man.search:
        man.trials = search_trials(man)
    return man


def search_trials(man: Manifest) -> dict[str, TrialRecord]:
    """A search's trials as its workers wrote them (jobs/search_worker.py); a RUNNING one whose heartbeat stopped
    longer ago than stale_after_s is STALLED (its worker died: another, or `ftl resume`, takes it over)."""
    from jobs.search_worker import heartbeat_age, read_trials

    out = {}
    for trial_id, data in sorted(read_trials(man.dir).items()):
        state = data.get("state", "RUNNING")
        if state == "RUNNING" and heartbeat_age(man.dir, trial_id) > man.search["stale_after_s"]:  # type: ignore[index]
            state = "STALLED"
        result = data.get("result") if isinstance(data.get("result"), dict) else {}
        out[trial_id] = TrialRecord(trial_id, list(data["overrides"]), f"trials/{trial_id}", state,
                                    int(data.get("attempt", 1)), [str(data.get("job", "-"))], result=result)  # fmt: skip
    return out


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def read_batches(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every batch record, in submission order."""
    out = []
    for name in _listdir(sweep_dir / BATCH_DIR):
        if name.endswith(".json") and not name.startswith("."):
            path = sweep_dir / BATCH_DIR / name
            data = _load_json(path)
            ok = isinstance(data, dict) and isinstance(data.get("trials"), list) and all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int)
                for e in data["trials"]) and isinstance(data.get("job_ids"), (list, type(None)))  # fmt: skip
            if not ok or (data["job_ids"] is not None and len(data["job_ids"]) != len(data["trials"])):
                raise FtlError(f"{path} is damaged or not ftl's (a batch needs trials [[id, attempt], ...] and job_ids)")
            out.append(data)
    return sorted(out, key=lambda b: (b.get("submitted") or 0, b.get("token", "")))


def apply_batch(man: Manifest, batch: dict[str, Any]) -> None:
    """A batch's trials (in attempts not superseded) become SUBMITTING, or PENDING with their job id."""
    job_ids = batch["job_ids"]
    for index, (trial_id, attempt) in enumerate(batch["trials"]):
        record = man.jobs.get(trial_id)
        if record is None or attempt < record.attempt:
            continue
        record.attempt, record.token, record.index = attempt, batch["token"], index
        record.submitted, record.cancelled, record.result = batch.get("submitted"), False, {}
        record.state = "SUBMITTING" if job_ids is None else "PENDING"
        if job_ids is not None and record.job_id != job_ids[index]:
            record.job_ids = [*record.job_ids, job_ids[index]]


def write_batch(man: Manifest, token: str, trials: list[tuple[str, int]], submitted: float,
                job_ids: list[str] | None) -> None:  # fmt: skip
    """A batch record: the intent (job_ids None), before the scheduler hears of it; then its job ids."""
    path = man.dir / BATCH_DIR / f"{token}.json"
    path.parent.mkdir(exist_ok=True)
    data = {"token": token, "submitted": submitted, "trials": [list(t) for t in trials], "job_ids": job_ids}
    _write_small(path, json.dumps(data, separators=(",", ":")).encode())
    sync_dir(path.parent)


def drop_batch(man: Manifest, token: str) -> None:
    """The scheduler refused the batch: its intent goes, and its trials are what they were before."""
    (man.dir / BATCH_DIR / f"{token}.json").unlink(missing_ok=True)
    sync_dir(man.dir / BATCH_DIR)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FtlError(f"{path} is damaged (not JSON: {e}); restore it, or delete it if it is a state file "
                       "(the trial then counts as never submitted: check `squeue` for its job first)") from None  # fmt: skip
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
    if problems:
        raise FtlError(f"{path} is damaged or not ftl's: {'; '.join(problems)}")
    folder = "workers" if data.get("search") else "trials"  # a search's jobs are its worker slots
    trials = {k: TrialRecord(k, list(v), f"{folder}/{k}") for k, v in data["trials"].items()}
    known = {f.name for f in fields(Manifest)} - RUNTIME_FIELDS
    return Manifest(**{k: v for k, v in data.items() if k in known and k != "trials"}, trials=trials)


def _apply_state(record: TrialRecord, data: Any, path: Path) -> None:
    """Fill a record from its state file, checking every field's type (a foreign file is named, not trusted)."""
    types = {"state": str, "attempt": int, "job_ids": list, "token": (str, type(None)), "index": (int, type(None)),
             "submitted": (int, float, type(None)), "cancelled": bool, "result": dict}  # fmt: skip
    if not isinstance(data, dict) or any(not isinstance(data.get(k, getattr(record, k)), t) for k, t in types.items()):
        raise FtlError(f"{path} is damaged or not ftl's (unexpected fields); restore it, or delete it if the trial "
                       "has no job in the queue (it then counts as never submitted)")  # fmt: skip
    if data.get("attempt", 0) < record.attempt:
        return  # an older attempt's file: a later batch superseded it
    for key in STATE_KEYS:
        if key in data:
            setattr(record, key, data[key])


def _read_v1(sweep_dir: Path) -> Manifest:
    """A sweep dir from ftl before per-trial state files (one manifest.json): read it as the new layout."""
    data = _load_json(sweep_dir / INDEX)
    try:
        rows = data.pop("trials")
        trials = {k: TrialRecord(k, v["overrides"], v.get("run_dir", f"trials/{k}"), v.get("state", "NEW"),
                                 len(v.get("job_ids", [])), list(v.get("job_ids", [])), result=v.get("result", {}))
                  for k, v in rows.items()}  # fmt: skip
        man = Manifest(**{k: data[k] for k in ("name", "recipe", "overrides", "metric", "mode", "cluster", "early_stop",
                                                "created")}, trials=trials, sweep_file=data.get("sweep_file", ""))  # fmt: skip
    except (KeyError, TypeError, AttributeError) as e:
        raise FtlError(f"{sweep_dir / INDEX} is damaged or not ftl's ({type(e).__name__}: {e})") from None
    man.dir = sweep_dir
    return man


def rewrite_sweep(man: Manifest) -> None:
    """sweep.json again (under the lock): only a search's budget changes this way."""
    _write_json(man.dir / SWEEP, sweep_data(man))


def upgrade_v1(man: Manifest) -> None:
    """Write a v1 sweep dir in the new layout (under the lock): sweep.json and a state file per submitted trial."""
    man.uid = man.uid or new_uid()
    (man.dir / STATE_DIR).mkdir(exist_ok=True)
    _write_json(man.dir / SWEEP, sweep_data(man))
    man.changed |= {t.id for t in man.jobs.values() if t.attempt}


@contextlib.contextmanager
def lock(sweep_dir: Path) -> Iterator[None]:
    """The sweep's exclusive lock: every change of state files (and the local runner's start of a trial)."""
    with open(sweep_dir / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def locked(sweep_dir: str | Path) -> Iterator[Manifest]:
    """The sweep under its lock, read fresh after the lock is taken; changed states are written back (also when
    the block raises: what was done - a job queued - must be recorded)."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / SWEEP).is_file():
        read(sweep_dir)  # a clear error for a dir that is not a sweep (or an old one), before a lock file is made
    with lock(sweep_dir):
        man = read(sweep_dir)
        if not (sweep_dir / SWEEP).is_file():
            upgrade_v1(man)
        try:
            yield man
        finally:
            save_states(man)
            if man.index_stale:
                write_index(man)


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


def counts(man: Manifest, records: dict[str, TrialRecord] | None = None) -> dict[str, int]:
    """Trials (or the given records) per state, most common first."""
    out: dict[str, int] = {}
    for t in (man.trials if records is None else records).values():
        out[t.state] = out.get(t.state, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
