"""Run-dir leases (core/lease.py): tokens only grow, the newest owner wins, a fenced owner writes nothing - in one
process and across real processes - and a checkpoint save keeps one complete checkpoint whatever kills it."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

from core.lease import LeaseLost, holder, newest, take
from tests.conftest import REPO


def test_tokens_grow_and_the_newest_lease_fences_the_older(tmp_path):
    first = take(tmp_path / "run", {"job": "a"})
    first.check()
    second = take(tmp_path / "run", {"job": "b"})
    assert second.token == first.token + 1
    second.check()
    with pytest.raises(LeaseLost, match=r"taken over by a newer attempt \(lease 2 > 1: job b"):
        first.check()
    assert holder(tmp_path / "run")["job"] == "b"


def test_a_stale_current_file_cannot_hand_the_run_back(tmp_path):
    """A taker that wrote `current` late (after a newer one) is corrected: the newest token stands."""
    old, new = take(tmp_path / "run"), take(tmp_path / "run")
    (tmp_path / "run" / "lease" / "current").write_text(f"{old.token}\n")  # the late write of the older taker
    third = take(tmp_path / "run")
    assert third.token == new.token + 1
    with pytest.raises(LeaseLost):
        new.check()


def test_a_take_decided_on_an_old_token_never_fences_the_newer_taker(tmp_path):
    """A claimer reads the newest token, pauses, and another claimer takes the run dir meanwhile: its take (after=
    the token it saw) is refused, and the newer holder keeps the run dir - before, the late taker won and fenced it."""
    seen = newest(tmp_path / "run")
    assert seen == 0
    other = take(tmp_path / "run", {"job": "b"})
    with pytest.raises(LeaseLost, match="taken by another process"):
        take(tmp_path / "run", {"job": "a"}, after=seen)
    other.check()
    assert holder(tmp_path / "run")["job"] == "b" and newest(tmp_path / "run") == other.token
    assert take(tmp_path / "run", after=other.token).token == other.token + 1  # decided on the newest: taken


def _take_many(run_dir: str, n: int, queue) -> None:
    outcomes = []
    for _ in range(n):
        try:
            outcomes.append(take(run_dir).token)
        except LeaseLost:  # overtaken by another taker before it even started: it must not write
            outcomes.append(None)
    queue.put(outcomes)


def test_concurrent_takers_never_share_a_token(tmp_path):
    """4 processes x 20 takes: 80 distinct token files; `current` names the largest; a take overtaken at once
    raises instead of returning a lease that is already stale."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_take_many, args=(str(tmp_path / "run"), 20, queue)) for _ in range(4)]
    for p in procs:
        p.start()
    outcomes = [t for _ in procs for t in queue.get(timeout=60)]
    for p in procs:
        p.join()
    files = sorted(p.name for p in (tmp_path / "run" / "lease").glob("*.json"))
    assert len(files) == 80 and files[-1] == "00000080.json"
    returned = [t for t in outcomes if t is not None]
    assert len(returned) == len(set(returned)) and 80 in returned
    assert (tmp_path / "run" / "lease" / "current").read_text().strip() == "80"


def test_the_heartbeat_is_the_lease_files_mtime(tmp_path):
    lease = take(tmp_path / "run")
    os.utime(lease.path, (time.time() - 100, time.time() - 100))
    assert holder(tmp_path / "run")["age_s"] > 99
    lease.beat()
    assert holder(tmp_path / "run")["age_s"] < 5


def test_a_paused_process_that_wakes_after_a_takeover_writes_nothing(tmp_path):
    """A real process holds the lease and writes a line per 0.2 s while its lease holds; SIGSTOP it, take the run
    dir over, SIGCONT it: it stops at its next check without another line."""
    script = (
        "import sys, time\nfrom core.lease import take, LeaseLost\n"
        f"lease = take({str(tmp_path / 'run')!r})\nprint('took', flush=True)\n"
        "while True:\n    time.sleep(0.2)\n    try:\n        lease.check()\n    except LeaseLost as e:\n"
        "        print('fenced', flush=True); sys.exit(4)\n"
        f"    open({str(tmp_path / 'out.txt')!r}, 'a').write('x')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "took"
    time.sleep(0.5)
    proc.send_signal(signal.SIGSTOP)
    written = (tmp_path / "out.txt").read_text()
    take(tmp_path / "run")  # the adopter
    proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=30) == 4 and proc.stdout.read().strip() == "fenced"
    assert (tmp_path / "out.txt").read_text() in (written, written + "x")  # at most the write it was inside
