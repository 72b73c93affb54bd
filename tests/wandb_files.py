"""Read an offline W&B run file (run-<id>.wandb) back, to check what a run really wrote (run id, group, name,
tags, config, summary, history, exit code) without a server.

The file is W&B's transaction log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then LevelDB's log format
in 32 KiB blocks (the header counts in the first block). A record is a 7-byte header - CRC-32 (zlib's) of the type
byte and the data, little-endian data length (2 bytes), type (FULL, or FIRST, MIDDLE..., LAST for a record split
over blocks) - and its data, a protobuf `Record`. A block tail too short for a record header is zero padding.

wandb >= 0.19 keeps no Python reader for these files (wandb 0.31's `wandb leet inspect --json` is its Go one: the
tests check that both read the same records). wandb-core writes the file from its own process, so a reader can
see it mid-write: `records` stops before a record that is not all there yet, and `read_offline_run` first waits
until the run's exit record is written and the file has stopped growing.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

MAGIC = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
RECORD_HEADER = 7  # crc32 (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class CorruptRunFile(ValueError):
    """A record that is all there but wrong: a bad checksum, an unknown type, pieces out of order."""


def records(path: Path) -> list[pb.Record]:
    """The complete records of a .wandb file, in order. A record still being written at the end (its header or
    data cut short, or a FIRST/MIDDLE piece without its LAST) is left out; anything else wrong raises."""
    data = Path(path).read_bytes()
    if data[: len(MAGIC)] != MAGIC:
        raise CorruptRunFile(f"{path} is not a W&B run file (header {data[:7]!r})")
    out: list[pb.Record] = []
    pos, pieces = len(MAGIC), None  # pieces: the parts of a split record read so far
    while True:
        left = BLOCK - pos % BLOCK
        if left < RECORD_HEADER:  # the block's tail: padding
            pos += left
            continue
        if pos + RECORD_HEADER > len(data):
            break  # the end, or a record header not all written yet
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + RECORD_HEADER])
        if (crc, length, kind) == (0, 0, 0) and not data[pos:].strip(b"\0"):
            break  # zeros up to the end: space the writer reserved but has not filled
        bad = f"{path}: bad record at byte {pos} (type {kind}, length {length}, crc {crc:#x})"
        if length > left - RECORD_HEADER or kind not in (FULL, FIRST, MIDDLE, LAST):
            raise CorruptRunFile(bad)  # a record never crosses a block's end
        end = pos + RECORD_HEADER + length
        if end > len(data):
            break  # the data not all written yet
        body = data[pos + RECORD_HEADER : end]
        if zlib.crc32(bytes([kind]) + body) != crc:
            raise CorruptRunFile(bad)
        if (kind in (FULL, FIRST)) != (pieces is None):
            raise CorruptRunFile(f"{path}: record piece of type {kind} out of order at byte {pos}")
        pos = end
        if kind == FIRST:
            pieces = [body]
        elif kind == MIDDLE:
            pieces.append(body)  # type: ignore[union-attr]
        else:
            rec = pb.Record()
            rec.ParseFromString(body if kind == FULL else b"".join([*pieces, body]))  # type: ignore[list-item]
            out.append(rec)
            pieces = None
    return out


def wait_until_written(path: Path, timeout: float = 60.0, settle: float = 0.3) -> list[pb.Record]:
    """The records of a run that has finished: once its exit record is there and the file has not grown for
    `settle` seconds. TimeoutError (with what was found) when that does not happen within `timeout` seconds."""
    deadline, size, since = time.monotonic() + timeout, -1, time.monotonic()
    while True:
        now_size = Path(path).stat().st_size
        if now_size != size:
            size, since = now_size, time.monotonic()
        elif time.monotonic() - since >= settle:
            recs = records(path)
            if any(r.WhichOneof("record_type") == "exit" for r in recs):
                return recs
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: no exit record after {timeout:.0f} s ({size} bytes)")
        time.sleep(0.05)


def _set(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def read_offline_run(run_dir: Path, timeout: float = 60.0) -> dict[str, Any]:
    """What an offline-run-* dir holds, once its run has finished: {'id', 'project', 'entity', 'group', 'name',
    'tags', 'config', 'summary', 'history': [{key: value}, ...], 'exit_code'}; summary and config as nested dicts
    (a metric defined with a summary goal reads {'max': best, 'last': last})."""
    (path,) = list(Path(run_dir).glob("run-*.wandb"))
    run: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "exit_code": None}
    for rec in wait_until_written(path, timeout):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.update(id=r.run_id, project=r.project, entity=r.entity, group=r.run_group, name=r.display_name,
                       tags=list(r.tags))  # fmt: skip
            run["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "summary":
            for i in rec.summary.update:
                _set(run["summary"], list(i.nested_key) or [i.key], json.loads(i.value_json))
            for i in rec.summary.remove:
                keys, node = list(i.nested_key) or [i.key], run["summary"]
                for key in keys[:-1]:
                    node = node.get(key, {})
                node.pop(keys[-1], None)
        elif kind == "history":
            run["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "exit":
            run["exit_code"] = rec.exit.exit_code
    return run
