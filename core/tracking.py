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
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(path: str | Path, global_step: int) -> None:
    """Drop records logged after `global_step` (a resumed run re-does those steps and logs them again)."""
    from core.fileio import write_text_atomic

    records = [r for r in read_jsonl(path) if r.get("step", 0) <= global_step]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
