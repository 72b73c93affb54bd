"""One writer per run dir: leases with fencing tokens.

Whatever trains a run dir - `ftl train`, a local or SLURM trial, a search worker that adopted a trial - first
takes a lease on it, and checks it before every durable write (a checkpoint's rename, result.json, an export, a
metrics line, W&B's finish, an Optuna tell). The newest lease wins: a process that was paused past its adoption,
cancelled and resumed, or cut off from the file system finds a newer token when it wakes, and stops without
writing (LeaseLost) instead of interleaving its files with its successor's.

    RUN_DIR/lease/00000003.json   one file per lease ever taken, created with O_EXCL: the token is one more than
                                  the newest there, so tokens only grow and two takers never share one; the file
                                  says who (job, host, pid) and its mtime is the holder's heartbeat (`beat`)
    RUN_DIR/lease/current         the newest token, rewritten by each taker. Checks read this one small file
                                  (an open revalidates it on NFS; a directory listing may be cached for a minute)

Nothing depends on flock or on clocks agreeing: O_EXCL creation and rename are atomic on NFSv3+, Lustre and GPFS.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import FtlError
from core.faults import fault_point

LEASE_DIR = "lease"


class LeaseLost(FtlError):
    """A newer process owns the run dir: this one must stop without writing anything more there."""


def _tokens(folder: Path) -> list[int]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


def _read_current(folder: Path) -> int:
    try:
        return int((folder / "current").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return max(_tokens(folder), default=0)


def _write_current(folder: Path, token: int) -> None:
    tmp = folder / f".current.{os.getpid()}.{token}"
    tmp.write_text(f"{token}\n")
    os.replace(tmp, folder / "current")


@dataclass
class Lease:
    """A held lease: `check()` before each durable write, `beat()` to show the holder is alive."""

    run_dir: Path
    token: int
    owner: dict[str, Any] = field(default_factory=dict)  # who holds it: job, host, pid

    @property
    def path(self) -> Path:
        return self.run_dir / LEASE_DIR / f"{self.token:08d}.json"

    def check(self) -> None:
        """LeaseLost when a newer lease was taken since this one (see the module doc)."""
        current = _read_current(self.run_dir / LEASE_DIR)
        if current > self.token:
            newer = holder(self.run_dir) or {}
            who = ", ".join(f"{k} {newer[k]}" for k in ("job", "host", "pid") if newer.get(k) is not None)
            raise LeaseLost(f"{self.run_dir} was taken over by a newer attempt (lease {current} > {self.token}"
                            f"{': ' + who if who else ''}); this process stops without writing there")  # fmt: skip

    def beat(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            pass


def newest(run_dir: str | Path) -> int:
    """The newest lease token ever taken on run_dir (0: none)."""
    folder = Path(run_dir) / LEASE_DIR
    return max(_read_current(folder), *_tokens(folder), 0)


def take(run_dir: str | Path, owner: dict[str, Any] | None = None, after: int | None = None) -> Lease:
    """A new lease on run_dir, newer than every lease before it (the run dir is created if needed).

    `after`: the token the caller saw when it decided to take the run dir (`newest`). Only the next token is
    tried: when another taker got it first, the decision is out of date and LeaseLost says so - a compare-and-swap
    on the O_EXCL file, so a claimer that paused between its decision and its lease never fences the newer one."""
    folder = Path(run_dir) / LEASE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    info = {"host": socket.gethostname(), "pid": os.getpid(), "taken": time.time(),
            "job": os.environ.get("FTL_JOB_ID") or os.environ.get("SLURM_JOB_ID"), **(owner or {})}  # fmt: skip
    token = (newest(run_dir) if after is None else after) + 1
    while True:
        try:
            fd = os.open(folder / f"{token:08d}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            if after is not None:
                raise LeaseLost(f"{run_dir} was taken by another process (lease {token}) after this one decided "
                                "to take it; nothing was written") from None  # fmt: skip
            token += 1  # another taker got this one first
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({**info, "token": token}, f)
        break
    fault_point("lease-created")
    _write_current(folder, token)
    latest = max(_tokens(folder))
    if latest > token:  # a taker after us wrote `current` before we did: theirs stands
        _write_current(folder, latest)
    lease = Lease(Path(run_dir), token, info)
    lease.check()
    return lease


def holder(run_dir: str | Path) -> dict[str, Any] | None:
    """The newest lease's record plus `age_s` (seconds since its holder's last heartbeat), or None."""
    folder = Path(run_dir) / LEASE_DIR
    token = _read_current(folder)
    path = folder / f"{token:08d}.json"
    try:
        data = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None
    return {**data, "age_s": age} if isinstance(data, dict) else None
