"""The sweep's state as an append-only log: one JSON event per line in SWEEP_DIR/events.jsonl.

Optuna's journal storage is the model. A change of state is one appended line - one write, one fsync, under the
sweep lock (launcher/sweep_lock.py) - never a rewrite of anything; a reader keeps its byte offset and reads only
what is new; the state of every trial is the fold of the log (launcher/manifest.py). A reader that had to fold a
long tail leaves a snapshot of the fold (state/snapshot.json: the fold at an offset of this log) for the next one
to start from: a cache, written temp-then-rename, ignored when it does not match the log.

Damage is named, never skipped: a complete line that is not an event stops every reader with the file, the line
and the repair (`ftl repair SWEEP_DIR`). An unfinished last line - its writer was killed mid-append, before its
fsync returned, so nothing was decided on it - is not an event yet: readers leave it, and the next writer cuts it
off before appending.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import FtlError
from core.fileio import write_atomic

LOG = "events.jsonl"
SNAPSHOT = "state/snapshot.json"
VERSION = 1


class LogDamaged(FtlError):
    """A line of the log (or the snapshot) is not what ftl wrote."""


def damaged(sweep_dir: Path, line: int, what: str) -> LogDamaged:
    return LogDamaged(f"{sweep_dir / LOG} line {line} is damaged ({what}); `ftl repair {sweep_dir}` keeps every "
                      "other line (a copy of the file is kept) and rebuilds the states from the scheduler and the "
                      "run dirs")  # fmt: skip


def create(sweep_dir: Path) -> str:
    """A new log with its header line; returns the log's id (snapshots name the log they fold)."""
    log_id = secrets.token_hex(8)
    (sweep_dir / LOG).write_text(json.dumps({"e": "log", "id": log_id, "version": VERSION}) + "\n")
    return log_id


def _encode(events: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(e, separators=(",", ":"), allow_nan=False) + "\n" for e in events).encode()


def _cut_unfinished(fd: int, size: int) -> int:
    """Truncate an unfinished last line (a writer killed mid-append); returns the new size."""
    end, block = size, 1 << 16
    while end > 0:
        start = max(0, end - block)
        data = os.pread(fd, end - start, start)
        newline = data.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            if keep != size:
                os.ftruncate(fd, keep)
            return keep
        end = start
    os.ftruncate(fd, 0)
    return 0


def append(sweep_dir: Path, events: list[dict[str, Any]], verify=lambda: None) -> int:
    """Append events as one write + fsync (call under the sweep lock; `verify` raises if it was lost). Returns
    the log's size after the write."""
    if not events:
        return (sweep_dir / LOG).stat().st_size
    data = _encode(events)
    path = sweep_dir / LOG
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            size = _cut_unfinished(fd, size)
        verify()  # the last moment: after this the events are the sweep's
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fsync(fd)
        return size + len(data)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            os.ftruncate(fd, size)
            free = shutil.disk_usage(sweep_dir).free
            raise FtlError(f"no space left on the device of {path} ({free / 2**20:.1f} MiB free): nothing was "
                           "recorded; free some space and run the command again") from None  # fmt: skip
        raise
    finally:
        os.close(fd)


def read(sweep_dir: Path, offset: int = 0, line: int = 0) -> tuple[list[tuple[int, dict[str, Any]]], int, int]:
    """Complete events from `offset` (whose line number is `line`): ([(line, event)], new offset, new line)."""
    path = sweep_dir / LOG
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        raise FtlError(f"{sweep_dir} has no {LOG}: it is not a sweep dir, or not ftl's") from None
    end = data.rfind(b"\n") + 1
    out = []
    for raw in data[:end].split(b"\n")[:-1]:
        line += 1
        try:
            event = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise damaged(sweep_dir, line, f"not JSON: {str(e)[:80]}") from None
        if not isinstance(event, dict) or not isinstance(event.get("e"), str):
            raise damaged(sweep_dir, line, "not an event: a mapping with 'e' is expected")
        out.append((line, event))
    return out, offset + end, line


def read_head(sweep_dir: Path) -> tuple[str, int, int]:
    """(log id, offset after the header, 1): the header line checked."""
    with open(sweep_dir / LOG, "rb") as f:
        first = f.readline()
    try:
        head = json.loads(first)
        ok = head.get("e") == "log" and isinstance(head.get("id"), str)
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise damaged(sweep_dir, 1, "its header line is missing or not ftl's")
    if head.get("version", VERSION) > VERSION:
        raise FtlError(f"{sweep_dir / LOG} was written by a newer ftl (log version {head['version']}): update ftl")
    return head["id"], len(first), 1


def load_snapshot(sweep_dir: Path, log: str) -> dict[str, Any] | None:
    """The snapshot when it folds this log and is shorter than it (else None: the reader folds the log from the
    start - a log of a few large batch lines folds faster than a snapshot of each trial's state is read)."""
    try:
        if (sweep_dir / SNAPSHOT).stat().st_size >= (sweep_dir / LOG).stat().st_size:
            return None
        data = json.loads((sweep_dir / SNAPSHOT).read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, dict) and data.get("log") == log and isinstance(data.get("offset"), int)
    if not ok or data["offset"] > (sweep_dir / LOG).stat().st_size:
        return None
    return data


def save_snapshot(sweep_dir: Path, data: dict[str, Any]) -> None:
    """Leave a snapshot (no lock needed: it is a function of the log's prefix it names) when it is shorter than
    that prefix."""
    text = json.dumps(data, separators=(",", ":"))
    if len(text) >= data["offset"]:
        return
    try:
        write_atomic(sweep_dir / SNAPSHOT, lambda p: p.write_text(text))
    except OSError:
        pass  # a cache: a full disk or a read-only dir only makes the next read longer


def lines(sweep_dir: Path) -> Iterator[tuple[int, bytes]]:
    """Every line as bytes with its number (for `ftl repair`)."""
    with open(sweep_dir / LOG, "rb") as f:
        for number, raw in enumerate(f, start=1):
            yield number, raw
