"""The sweep dir on disk: everything needed to leave a sweep and come back to it.

    SWEEP_DIR/manifest.json   sweep name, recipe, metric, cluster, and the trial table: overrides, run dir,
                              job ids (one per submission), last known state, result
    SWEEP_DIR/recipe.yaml     the base recipe as resolved at submission (later edits to jobs/recipes/ change
                              nothing for a running sweep)
    SWEEP_DIR/trials/<id>/    each trial's run dir (config.yaml, metrics.jsonl, progress.json, result.json, ...)
    SWEEP_DIR/logs/           SLURM / local logs

Only launcher commands write manifest.json, atomically and under a lock; jobs write only into their own run dir.
Killing `ftl sweep` at any moment leaves either no manifest or a complete one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.errors import FtlError
from core.fileio import write_json_atomic

MANIFEST = "manifest.json"
# SLURM (and ftl) states that end a trial for good.
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "PRUNED"}  # fmt: skip


@dataclass
class TrialRecord:
    id: str
    overrides: list[str]
    run_dir: str  # relative to the sweep dir
    job_ids: list[str] = field(default_factory=list)  # one per submission (resume adds one)
    state: str = "NEW"  # NEW | HELD | PENDING | RUNNING | COMPLETED | FAILED | CANCELLED | PREEMPTED | PRUNED ...
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def job_id(self) -> str | None:
        return self.job_ids[-1] if self.job_ids else None


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
    version: int = 1

    def best(self) -> TrialRecord | None:
        done = [t for t in self.trials.values() if self.metric in t.result]
        if not done:
            return None
        sign = 1 if self.mode == "max" else -1
        return max(done, key=lambda t: sign * t.result[self.metric])


def manifest_path(sweep_dir: Path) -> Path:
    return Path(sweep_dir) / MANIFEST


def write(sweep_dir: Path, manifest: Manifest) -> None:
    data = asdict(manifest)
    write_json_atomic(manifest_path(sweep_dir), data)


def read(sweep_dir: str | Path) -> Manifest:
    path = manifest_path(Path(sweep_dir))
    if not path.is_file():
        raise FtlError(f"{sweep_dir} is not a sweep dir (no {MANIFEST}); `ftl sweep FILE` creates one")
    try:
        data = json.loads(path.read_text())
        trials = {k: TrialRecord(**v) for k, v in data.pop("trials").items()}
        return Manifest(**data, trials=trials)
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise FtlError(f"{path} is damaged ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def locked(sweep_dir: str | Path) -> Iterator[Manifest]:
    """Read-modify-write the manifest under an exclusive lock; written back atomically on success."""
    sweep_dir = Path(sweep_dir)
    read(sweep_dir)  # a clear error for a dir that is not a sweep
    with open(sweep_dir / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read(sweep_dir)
        yield manifest
        write(sweep_dir, manifest)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def read_trial_files(sweep_dir: Path, record: TrialRecord) -> tuple[dict, dict]:
    """(progress, result) written by the trial's engine into its run dir; empty dicts where absent."""
    run_dir = sweep_dir / record.run_dir
    out = []
    for name in ("progress.json", "result.json"):
        try:
            out.append(json.loads((run_dir / name).read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            out.append({})
    return out[0], out[1]
