"""The sweep lock: what every command, runner and search worker holds to decide something and append it to the
sweep's log (launcher/event_log.py).

A lock *file*, not flock (on NFSv3 without lockd, or Lustre mounted `localflock`, flock is per node): filelock's
SoftFileLease creates SWEEP_DIR/sweep.lock with O_EXCL, its holder refreshes it from a heartbeat thread, and a
contender takes it over when the holder is dead on this host or has not refreshed it for LEASE_S seconds of the
contender's own clock. A holder that was paused past its lease, or whose lock file was deleted, finds out in
`verify()` - called before every append - and writes nothing (LockLost), so two holders never both commit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from core.errors import FtlError
from core.faults import fault_point

LOCK_FILE = "sweep.lock"
LEASE_S = float(os.environ.get("FTL_LOCK_LEASE_S", "30"))  # all contenders must agree (tests shorten it)
WAIT_S = float(os.environ.get("FTL_LOCK_WAIT_S", "600"))
HOLDS: deque[float] = deque(maxlen=1000)  # how long this process held the lock, outermost holds (bench/sweep_state.py)
_DEPTH: dict[str, int] = {}


class LockLost(FtlError):
    """This process no longer holds the sweep lock: it was taken over (paused too long) or its file deleted."""


class HeldLock:
    def __init__(self, lease) -> None:
        self.lease = lease

    def verify(self) -> None:
        """LockLost unless the lock file on disk is still this holder's (read fresh: another host may change it)."""
        fault_point("before-verify")
        path = Path(self.lease.lock_file)
        token = self.lease.token
        try:
            text = path.read_text()
        except OSError:
            text = ""
        if token is None or self.lease.compromise is not None or f"token={token}\n" not in text:
            raise LockLost(f"the sweep lock {path} was taken over while this process held it (paused for longer "
                           f"than its {LEASE_S:.0f}s lease, or the file was deleted): nothing was written; run the "
                           "command again")  # fmt: skip


@contextlib.contextmanager
def sweep_lock(sweep_dir: str | Path, wait_s: float = WAIT_S) -> Iterator[HeldLock]:
    """Hold the sweep's lock (reentrant within a process)."""
    from filelock import SoftFileLease, Timeout

    path = Path(sweep_dir) / LOCK_FILE
    lease = SoftFileLease(str(path), lease_duration=LEASE_S, is_singleton=True, thread_local=False)
    try:
        lease.acquire(timeout=wait_s, poll_interval=0.02)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(path.parent).free
        raise FtlError(f"no space left on the device of {path} ({free / 2**20:.1f} MiB free): the sweep's lock "
                       "cannot be taken, nothing was done; free some space and run the command again") from None  # fmt: skip
    except Timeout:
        try:
            holder = " ".join(line for line in path.read_text().splitlines()[1:] if line.startswith(("pid=", "host=")))
        except OSError:
            holder = "?"
        raise FtlError(f"the sweep lock {path} is held ({holder}) and was not released in {wait_s:.0f}s; if that "
                       "process is gone for good, delete the file") from None  # fmt: skip
    depth = _DEPTH.get(str(path), 0)
    _DEPTH[str(path)] = depth + 1
    start = time.perf_counter()
    try:
        yield HeldLock(lease)
    finally:
        lease.release()
        _DEPTH[str(path)] = depth
        if depth == 0:
            HOLDS.append(time.perf_counter() - start)
