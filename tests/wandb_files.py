"""Read an offline W&B run file (run-<id>.wandb) back: W&B's record log of protobuf Records, in 32 KiB blocks.

wandb >= 0.19 keeps no Python reader for its own files, so the tests carry this small one to check what a run
really wrote (run id, group, name, config, logged metrics) without a server.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

HEADER = 7  # ":W&B", magic 0xBEE1, version 0
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    out, pos, buf = [], HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a record header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def read_offline_run(run_dir: Path) -> dict:
    """{'id', 'group', 'name', 'config': {...}, 'history': [{key: value}, ...]} of an offline-run-* dir."""
    (path,) = list(Path(run_dir).glob("run-*.wandb"))
    run: dict = {"config": {}, "history": []}
    for rec in records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.update(id=rec.run.run_id, group=rec.run.run_group, name=rec.run.display_name)
            run["config"].update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            run["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return run
