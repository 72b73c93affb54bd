"""The sweep's log and lock (launcher/event_log.py, launcher/sweep_lock.py, the fold in launcher/manifest.py):
appends are whole lines, an unfinished last line is nobody's, damage is named with its line and the repair,
a snapshot is only a cache, one state change costs one short append, and the lock holds without flock."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.errors import FtlError
from launcher import event_log
from launcher import manifest as mf
from launcher.sweep_lock import LockLost
from tests.conftest import REPO, ftl, write_sweep_dir


def grid_dir(tmp_path, n=3):
    trials = {f"t{i}": mf.TrialRecord(f"t{i}", [f"train.seed={i}"], f"trials/t{i}") for i in range(n)}
    man = mf.Manifest("g", "base", [], "val_top1", "max", {"executor": "local", "name": "here"}, None,
                      "2026-01-01T00:00:00", trials, uid="abcd1234")  # fmt: skip
    return write_sweep_dir(tmp_path / "sw", man)


def test_a_state_change_is_one_appended_line(tmp_path):
    sweep = grid_dir(tmp_path)
    size = (sweep / event_log.LOG).stat().st_size
    with mf.locked(sweep) as man:
        man.update(man.trials["t1"], state="COMPLETED", result={"val_top1": 0.5})
    grown = (sweep / event_log.LOG).read_bytes()[size:]
    assert grown.count(b"\n") == 1 and b'"id":"t1"' in grown and len(grown) < 400
    assert mf.read(sweep).trials["t1"].state == "COMPLETED"


def test_an_unfinished_last_line_is_ignored_then_cut_by_the_next_writer(tmp_path):
    sweep = grid_dir(tmp_path)
    with open(sweep / event_log.LOG, "ab") as f:
        f.write(b'{"e":"state","id":"t0","state":"COMPL')  # a writer killed mid-append
    assert mf.read(sweep).trials["t0"].state == "NEW"
    with mf.locked(sweep) as man:
        man.update(man.trials["t2"], state="FAILED")
    lines = (sweep / event_log.LOG).read_bytes().splitlines()
    assert b"COMPL" not in b"".join(lines) and json.loads(lines[-1])["id"] == "t2"


@pytest.mark.parametrize("damage", [b"\x00\xffgarbage\n", b"[1, 2]\n", b'{"e":"state","id":"nope","state":"X"}\n',
                                    b'{"e":"state","id":"t0","attempt":"two"}\n', b'{"e":"warp"}\n'])  # fmt: skip
def test_a_damaged_line_is_named_by_every_verb_and_repaired(tmp_path, damage):
    sweep = grid_dir(tmp_path)
    with mf.locked(sweep) as man:
        man.update(man.trials["t0"], state="COMPLETED", result={"val_top1": 0.7})
    with open(sweep / event_log.LOG, "ab") as f:
        f.write(damage)
    with pytest.raises(FtlError, match="line 3 is damaged"):  # a writer too: nothing is decided on damaged state
        with mf.locked(sweep):
            pass
    for verb in ("status", "resume", "cancel", "wait", "report"):
        ran = ftl(verb, sweep, *(["--timeout", "5"] if verb == "wait" else []))
        lines = [line for line in ran.stderr.splitlines() if line.strip()]
        assert ran.returncode == 2 and len(lines) == 1, (verb, ran.stderr)
        assert f"{sweep / event_log.LOG} line 3 is damaged" in lines[0] and f"ftl repair {sweep}" in lines[0]
    repaired = ftl("repair", sweep)
    assert repaired.returncode == 0 and "dropped 1 damaged lines" in repaired.stdout, repaired.stdout + repaired.stderr
    assert list(sweep.glob("events.jsonl.damaged-*"))  # the file as it was is kept
    assert mf.read(sweep).trials["t0"].state == "COMPLETED"
    assert "nothing damaged" in ftl("repair", sweep).stdout


def test_a_snapshot_is_a_cache_checked_against_the_log(tmp_path, monkeypatch):
    sweep = grid_dir(tmp_path, n=50)
    monkeypatch.setattr(mf, "SNAPSHOT_AFTER_BYTES", 100)
    for state in ("PENDING", "RUNNING"):
        with mf.locked(sweep) as man:
            for t in man.trials.values():
                man.update(t, state=state, attempt=1)
    first = mf.read(sweep)  # folds the long tail (more lines than trials) and leaves a snapshot
    snapshot = sweep / event_log.SNAPSHOT
    assert snapshot.is_file() and json.loads(snapshot.read_text())["offset"] == first.offset
    with mf.locked(sweep) as man:
        man.update(man.trials["t7"], state="COMPLETED")
    again = mf.read(sweep)
    assert again.trials["t7"].state == "COMPLETED" and again.trials["t8"].state == "RUNNING"
    snapshot.write_text("{not json")  # a damaged cache is not damage: the log is read whole
    assert mf.read(sweep).trials["t7"].state == "COMPLETED"
    snapshot.write_text(json.dumps({**json.loads(json.dumps({"log": "another", "offset": 0}))}))
    assert mf.read(sweep).trials["t7"].state == "COMPLETED"


def test_no_snapshot_where_the_log_folds_faster(tmp_path, monkeypatch):
    """A log of one line per trial (or a few batch lines) is read as fast as a snapshot would be: none is left."""
    sweep = grid_dir(tmp_path, n=50)
    monkeypatch.setattr(mf, "SNAPSHOT_AFTER_BYTES", 100)
    with mf.locked(sweep) as man:
        for t in man.trials.values():
            man.update(t, state="RUNNING", attempt=1)
    assert mf.read(sweep).trials["t7"].state == "RUNNING"
    assert not (sweep / event_log.SNAPSHOT).exists()


def test_a_reader_commits_only_what_no_newer_event_touched(tmp_path):
    """status derived COMPLETED for t0 while a cancel marked it: the cancel (newer) wins, the rest is appended."""
    sweep = grid_dir(tmp_path)
    seen = mf.read(sweep)
    seen.update(seen.trials["t0"], state="COMPLETED")
    seen.update(seen.trials["t1"], state="FAILED")
    with mf.locked(sweep) as man:
        man.update(man.trials["t0"], state="CANCELLED", cancelled=True)
    mf.commit(seen)
    now = mf.read(sweep)
    assert now.trials["t0"].state == "CANCELLED" and now.trials["t1"].state == "FAILED"


def test_a_deleted_lock_file_is_noticed_before_anything_is_written(tmp_path):
    sweep = grid_dir(tmp_path)
    size = (sweep / event_log.LOG).stat().st_size
    with pytest.raises(LockLost, match="taken over while this process held it"):
        with mf.locked(sweep) as man:
            (sweep / "sweep.lock").unlink()  # someone "cleans up" the lock (and another process may take it)
            man.update(man.trials["t0"], state="COMPLETED")
    assert (sweep / event_log.LOG).stat().st_size == size


def test_a_paused_holder_is_taken_over_and_writes_nothing_when_it_wakes(tmp_path):
    """The lock's lease expires while its holder is stopped (SIGSTOP: a swapping node, a hung NFS mount);
    another command takes the lock and appends; the old holder, woken, finds out and appends nothing."""
    sweep = grid_dir(tmp_path)
    script = (f"from launcher import manifest as mf\nwith mf.locked({str(sweep)!r}) as man:\n"
              "    print('held', flush=True)\n    input()\n    man.update(man.trials['t0'], state='FAILED')\n")  # fmt: skip
    env = {**os.environ, "FTL_LOCK_LEASE_S": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    proc.send_signal(signal.SIGSTOP)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", f"from launcher import manifest as mf\nwith mf.locked({str(sweep)!r}) as m:\n"
                    "    m.update(m.trials['t1'], state='COMPLETED')\n"], cwd=REPO, env=env, check=True, timeout=60)  # fmt: skip
    assert time.monotonic() - started < 30
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate("\n", timeout=60)
    assert proc.returncode != 0 and "LockLost" in err
    man = mf.read(sweep)
    assert man.trials["t1"].state == "COMPLETED" and man.trials["t0"].state == "NEW"


def test_a_full_disk_is_one_line_and_nothing_half_written(tmp_path):
    """The log on a 1 MiB tmpfs: with no room for the lock file, and with room for it but not for the append,
    each command is refused in one line naming the free space, and the log still reads."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        sweep = grid_dir(mount, n=2)
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        filler = mount / "filler"
        filler.write_bytes(b"\0" * free)  # nothing left: not even the lock file
        with pytest.raises(FtlError, match=r"no space left on the device of .*sweep.lock \([\d.]+ MiB free\)"):
            with mf.locked(sweep):
                pass
        filler.write_bytes(b"\0" * (free - 12 * 1024))  # room for the lock file, not for the append
        with pytest.raises(FtlError, match=r"no space left on the device of .*events.jsonl \([\d.]+ MiB free\)"):
            with mf.locked(sweep) as man:
                man.append([{"e": "state", "id": "t0", "state": "X" * 20000}])
        assert mf.read(sweep).trials["t0"].state == "NEW"  # nothing half-written: the log still reads
    finally:
        subprocess.run(["umount", "-l", str(mount)])
