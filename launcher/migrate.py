"""Sweep dirs written by an earlier ftl, read as today's: their state files become the events they stood for.

    v1  SWEEP_DIR/manifest.json holds everything (sweep and one row per trial)
    v2  sweep.json + state/batches/<token>.json + state/<id>.json (+ a search's search/trials/<id>.json)

`read_old` folds them in memory (a reader changes nothing); `migrate` - under the sweep lock, on the first command
that decides something - writes sweep.json (v1) and events.jsonl, then moves the old files to state/v2/.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from core.errors import FtlError
from launcher import event_log
from launcher import manifest as mf

INDEX = "manifest.json"


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise FtlError(f"{path} is damaged (not JSON: {e}); restore it, or delete it if it is a state file "
                       "(the trial then counts as never submitted: check `squeue` for its job first)") from None  # fmt: skip
    except OSError as e:
        raise FtlError(f"cannot read {path}: {e.strerror}") from None


def _v1(sweep_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(sweep.json's data, events) of a v1 dir."""
    data = _load(sweep_dir / INDEX)
    try:
        rows = data.pop("trials")
        sweep = {k: data[k] for k in ("name", "recipe", "overrides", "metric", "mode", "cluster", "early_stop",
                                      "created")}  # fmt: skip
        sweep.update(sweep_file=data.get("sweep_file", ""), uid="", trials={k: v["overrides"] for k, v in rows.items()})
        events = [{"e": "state", "id": k, "state": v.get("state", "NEW"), "attempt": len(v.get("job_ids", [])),
                   "job_ids": list(v.get("job_ids", [])), "result": v.get("result", {})} for k, v in rows.items()]  # fmt: skip
    except (KeyError, TypeError, AttributeError) as e:
        raise FtlError(f"{sweep_dir / INDEX} is damaged or not ftl's ({type(e).__name__}: {e})") from None
    return sweep, events


def _v2_events(sweep_dir: Path) -> list[dict[str, Any]]:
    """The events a v2 dir's batch, state and search-trial files stood for, in the order they apply."""
    batches = []
    for path in sorted((sweep_dir / "state" / "batches").glob("*.json")) if (sweep_dir / "state" / "batches").is_dir() else []:
        data = _load(path)
        if not (isinstance(data, dict) and isinstance(data.get("trials"), list) and "job_ids" in data):
            raise FtlError(f"{path} is damaged or not ftl's (a batch needs trials [[id, attempt], ...] and job_ids)")
        batches.append({"e": "batch", **{k: data.get(k) for k in ("token", "submitted", "trials", "job_ids")}})
    events = sorted(batches, key=lambda b: (b.get("submitted") or 0, str(b.get("token"))))
    for path in sorted((sweep_dir / "state").glob("*.json")):
        data = _load(path)
        if not isinstance(data, dict):
            raise FtlError(f"{path} is damaged or not ftl's (a mapping is expected)")
        events.append({"e": "state", "id": path.stem, **data})
    for path in sorted((sweep_dir / "search" / "trials").glob("*.json")):
        t = _load(path)
        if not (isinstance(t, dict) and isinstance(t.get("overrides"), list) and "number" in t):
            raise FtlError(f"{path} is damaged or not ftl's (a search trial needs number and overrides)")
        events.append({"e": "ask", "id": t.get("id", path.stem), "number": t["number"], "optuna_id": t.get("trial_id", t["number"]),
                       "overrides": t["overrides"], "slot": t.get("slot", 0), "job": t.get("job", "-"), "attempt": 1,
                       "t": t.get("started", 0)})  # fmt: skip
        if t.get("attempt", 1) > 1:
            events.append({"e": "claim", "id": events[-1]["id"], "slot": t.get("slot", 0), "job": t.get("job", "-"),
                           "attempt": t["attempt"], "t": t.get("started", 0)})  # fmt: skip
        if t.get("state", "RUNNING") != "RUNNING":
            events.append({"e": "tell", "id": events[-1]["id"], "attempt": t.get("attempt", 1), "state": t["state"],
                           "result": t.get("result") or {}})  # fmt: skip
    return events


def _old(sweep_dir: Path) -> tuple[mf.Manifest, list[dict[str, Any]]]:
    if (sweep_dir / mf.SWEEP).is_file():
        return mf.read_sweep(sweep_dir), _v2_events(sweep_dir)
    if not (sweep_dir / INDEX).is_file():
        raise FtlError(f"{sweep_dir} is not a sweep dir (no {mf.SWEEP}); `ftl sweep FILE` creates one")
    data, events = _v1(sweep_dir)
    return mf._manifest_from(data, sweep_dir / INDEX), events


def read_old(sweep_dir: Path) -> mf.Manifest:
    """An earlier ftl's sweep dir as a Manifest (nothing written)."""
    man, events = _old(sweep_dir)
    man.dir = sweep_dir
    for line, event in enumerate(events, start=2):
        mf.apply(man, line, event)
    return man


def migrate(sweep_dir: Path, held) -> None:
    """Write an earlier ftl's sweep dir in today's layout (under the sweep lock): the new log is written whole and
    renamed into place, then the old files move to state/v2/ (a crash in between leaves them unread)."""
    man, events = _old(sweep_dir)
    man.dir = sweep_dir
    man.uid = man.uid or mf.new_uid()
    if not (sweep_dir / mf.SWEEP).is_file():
        mf._write_json(sweep_dir / mf.SWEEP, mf.sweep_data(man))
    staging = sweep_dir / "state" / "migrating"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    event_log.create(staging)
    held.verify()
    event_log.append(staging, events, held.verify)
    os.replace(staging / event_log.LOG, sweep_dir / event_log.LOG)
    staging.rmdir()
    old = sweep_dir / "state" / "v2"
    old.mkdir(parents=True, exist_ok=True)
    for path in [*(sweep_dir / "state").glob("*.json"), sweep_dir / "state" / "batches", sweep_dir / "search" / "trials",
                 sweep_dir / INDEX]:  # fmt: skip
        if path.exists() and path.name != "snapshot.json":
            shutil.move(str(path), old / path.name)
