"""Metrics tracking: a JSONL file in the run dir, always (W&B plugs in beside it)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class JsonlLogger:
    """Appends one JSON object per line to run_dir/metrics.jsonl; flushed per line so a killed run loses nothing."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self._file = open(self.path, "a", buffering=1) if enabled else None

    def log(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a half-written last line of a killed run
            continue
    return records


def truncate_after(path: str | Path, global_step: int) -> None:
    """Drop records logged after `global_step` (a resumed run re-does those steps and logs them again)."""
    from core.fileio import write_text_atomic

    records = [r for r in read_jsonl(path) if r.get("step", 0) <= global_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


class WandbTracker:
    """One W&B run per training run, from the main process only.

    The run id is deterministic (tracking.run_id, else a hash of the run dir), so a requeued or resumed run
    continues its W&B run instead of creating a duplicate: from the start it is opened with resume="allow"; from a
    checkpoint, with `resume_from=<id>?_step=<checkpoint step>`, W&B's rewind, so the history logged after the
    checkpoint (and logged again now) is dropped rather than doubled. Files go under the run dir; WANDB_MODE=offline
    (the default on compute nodes) writes them locally for a later `ftl sync`.
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str, entity: str | None, group: str | None,
                 name: str | None, job_type: str, tags: list[str], run_id: str | None, resume_step: int = 0):  # fmt: skip
        import hashlib
        import os

        import wandb

        if os.environ.get("WANDB_MODE", "offline") == "online" and not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb()):
            from core.errors import FtlError

            raise FtlError("WANDB_MODE=online but no W&B API key (WANDB_API_KEY or `wandb login`); "
                           "set WANDB_MODE=offline and `ftl sync` later")  # fmt: skip
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        run_id = run_id or hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        self.wandb = wandb
        where = {"resume_from": f"{run_id}?_step={resume_step}"} if resume_step else {"resume": "allow"}
        self.run = wandb.init(project=project, entity=entity, group=group, name=name or Path(run_dir).name,
                              job_type=job_type, tags=list(tags), config=config, id=run_id, dir=str(run_dir),
                              settings=wandb.Settings(console="off"), **where)  # fmt: skip

    def log(self, record: dict[str, Any], step: int) -> None:
        self.run.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=step)

    def log_image(self, key: str, path: Path, step: int) -> None:
        self.run.log({key: self.wandb.Image(str(path))}, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.run.log({key: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def log_artifact(self, path: Path, name: str, kind: str = "model") -> None:
        artifact = self.wandb.Artifact(name, type=kind)
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self) -> None:
        self.run.finish()


def _netrc_has_wandb() -> bool:
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
