"""Metrics tracking: a JSONL file in the run dir, always (W&B plugs in beside it)."""

from __future__ import annotations

import hashlib
import json
import math
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


SUMMARY_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_top1", "val_top5", "val_ema_top1", "lr",
                   "image_size", "epoch_time_s")  # fmt: skip


def write_summary(run_dir: str | Path) -> Path:
    """run_dir/summary.csv, one row per finished epoch (timm's train.py writes the same file): read from
    metrics.jsonl - an epoch logged again after a resume replaces its earlier row - with each epoch's last LR.
    Rewritten whole (atomically) after each epoch: a few hundred bytes per epoch."""
    import csv
    import io

    from core.fileio import write_text_atomic

    rows: dict[int, dict[str, Any]] = {}
    lr = None
    for record in read_jsonl(Path(run_dir) / "metrics.jsonl"):
        lr = record.get("lr", lr)
        if "val_loss" in record and isinstance(record.get("epoch"), int):
            rows[record["epoch"]] = {**record, "lr": lr}
    columns = [c for c in SUMMARY_COLUMNS if any(c in r for r in rows.values())]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows[e] for e in sorted(rows))
    path = Path(run_dir) / "summary.csv"
    write_text_atomic(path, out.getvalue())
    return path


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


NAME_LIMIT = 128  # W&B refuses a run name (or group) longer than this
TAG_LIMIT = 64  # and a tag longer than this
STATUSES = ("completed", "pruned", "interrupted", "failed")  # the engine's result status
STATUS_TAGS = {"pruned": "pruned", "failed": "failed", "interrupted": "preempted"}  # how a run's end shows in W&B


def short_name(name: str, limit: int = NAME_LIMIT) -> str:
    """`name` when it fits in `limit` characters, else its head (cut at a space when one is near) + '~' + 8 hex
    digits of a hash of the whole name, so two long names that share their head stay two names."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    head = name[: limit - len(digest) - 1]
    if (cut := head.rfind(" ")) > len(head) // 2:
        head = head[:cut]
    return f"{head.rstrip()}~{digest}"


def shown(value: Any) -> str:
    """A swept value for people: a float to 4 significant digits (a TPE or random value has 17: 0.0012520653814999472
    -> 0.001252), anything else - ints, names, lists - as written. The trial itself runs the exact value."""
    text = str(value)
    try:
        number = float(text)
    except ValueError:
        return text
    if text.strip().lstrip("+-").isdigit() or not math.isfinite(number):
        return text
    return f"{number:.4g}"


def shown_overrides(overrides: list[str]) -> str:
    """'optim.lr=0.0012520653814999472 model.name=resnet18' -> 'optim.lr=0.001252 model.name=resnet18'."""
    return " ".join(f"{key}={shown(value)}" for key, value in (o.partition("=")[::2] for o in overrides))


def run_name(overrides: list[str], limit: int = NAME_LIMIT) -> str:
    """A W&B run name from a trial's distinguishing overrides: ['optim.lr=0.003', 'finetune.strategy=full'] ->
    'lr=0.003 strategy=full' (a key's last part, its whole key when two keys end alike), cut to `limit`.
    Passed on as an override, quote it (`tracking.name=` + json.dumps(name)): a value may hold commas."""
    pairs = [o.partition("=")[::2] for o in overrides]
    leaves = [key.rsplit(".", 1)[-1] for key, _ in pairs]
    parts = [f"{leaf if leaves.count(leaf) == 1 else key}={shown(value)}" for (key, value), leaf in zip(pairs, leaves)]
    return short_name(" ".join(parts), limit)


def sweep_group(name: str, uid: str) -> str:
    """The W&B group of one launch of a sweep: '<name>-<uid>' (a relaunch under the same name is another group),
    the bare name for a sweep dir written before launches had a uid; cut as WandbTracker cuts it."""
    return short_name(f"{name}-{uid}" if uid else name)


def metric_goal(name: str) -> str:
    """'min' for a loss, an error or a time, else 'max' (what "best" means for a metric ftl logs)."""
    return "min" if any(w in name for w in ("loss", "err", "time")) else "max"


class WandbTracker:
    """One W&B run per training run, from the main process only.

    The run id is deterministic (tracking.run_id, else a hash of the run dir), so a requeued or resumed run
    continues its W&B run instead of creating a duplicate: from the start it is opened with resume="allow"; from a
    checkpoint, with `resume_from=<id>?_step=<checkpoint step>`, W&B's rewind, so the history logged after the
    checkpoint (and logged again now) is dropped rather than doubled. Files go under the run dir; WANDB_MODE=offline
    (the default on compute nodes) writes them locally for a later `ftl sync`. The name, group and tags are cut to
    W&B's limits (short_name); `finish(status)` records how the run ended. The console is captured ("wrap": what
    the process prints, tracebacks included, lands in the run's output.log and W&B's Logs tab).
    """

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str, entity: str | None, group: str | None,
                 name: str | None, job_type: str, tags: list[str], run_id: str | None, resume_step: int = 0):  # fmt: skip
        import os

        import wandb

        check_login()
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        run_id = run_id or hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
        self.wandb = wandb
        where = {"resume_from": f"{run_id}?_step={resume_step}"} if resume_step else {"resume": "allow"}
        self.run = wandb.init(project=project, entity=entity, group=short_name(group) if group else None,
                              name=short_name(name or Path(run_dir).name), job_type=job_type,
                              tags=[short_name(t, TAG_LIMIT) for t in tags], config=config, id=run_id,
                              dir=str(run_dir), settings=wandb.Settings(console="wrap"), **where)  # fmt: skip

    def define_metric(self, name: str, goal: str | None = None) -> None:
        """Keep the best value of `name` in the run's summary: summary[name] becomes {goal: best, "last": last}
        (W&B shows `name.max` / `name.min` and `name.last`). goal: "max" or "min" (default: metric_goal(name)).
        Call it after each start: a resumed run declares its metrics again."""
        goal = goal or metric_goal(name)
        if goal not in ("max", "min"):
            raise ValueError(f"define_metric({name!r}): goal must be 'max' or 'min', not {goal!r}")
        self.run.define_metric(name, summary=f"{goal},last")

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

    def finish(self, status: str | None = None) -> None:
        """End the run (a second call does nothing). With the engine's result status, the run records how it ended:
        summary `ftl_status`, a tag (pruned, failed, or preempted for "interrupted", which a requeue resumes), and a
        non-zero exit code for "failed", so W&B shows it failed, not finished."""
        if self.run is None:
            return
        if status is not None:
            if status not in STATUSES:
                raise ValueError(f"finish({status!r}): status must be one of {', '.join(STATUSES)}")
            self.run.summary["ftl_status"] = status
            if tag := STATUS_TAGS.get(status):
                self.run.tags = tuple(dict.fromkeys([*self.run.tags, tag]))
        run, self.run = self.run, None
        run.finish(exit_code=1 if status == "failed" else 0)


def check_login() -> None:
    """WANDB_MODE=online without an API key would stop at a login prompt: one line instead. A run checks this
    before it writes anything (core/engine.py), so a second try is not refused for an existing run dir."""
    import os

    if os.environ.get("WANDB_MODE", "offline") == "online" and not has_credentials():
        from core.errors import FtlError

        raise FtlError("WANDB_MODE=online but no W&B API key (WANDB_API_KEY or `wandb login`); "
                       "set WANDB_MODE=offline and `ftl sync` later")  # fmt: skip


def has_credentials(base_url: str | None = None) -> bool:
    """Whether wandb would find an API key for the W&B server (WANDB_BASE_URL, default api.wandb.ai) without
    asking: WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, or a netrc entry (NETRC, else ~/.netrc) for its host."""
    import os

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    return _netrc_has_wandb(base_url)


def _netrc_has_wandb(base_url: str | None = None) -> bool:
    import netrc
    import os
    from urllib.parse import urlsplit

    host = urlsplit(base_url or os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return bool(host) and netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
