"""Benchmark: the sweep's state at scale - a 100,000-trial sweep queued on the local SLURM (jobs start a week from
now, so nothing runs), then what the state store costs: `ftl status` wall time, the longest hold of the sweep lock
by a reader (status, wait), the bytes one trial's state change appends, and the peak memory of `ftl report`.
Goals (issue #19): status <= 2 s, a reader holds the lock <= 0.2 s, one change O(1) bytes (a line), report peak
<= 1 GiB. Every job it queued is cancelled at the end, and the queue is checked empty.

    SLURM_CONF=/tmp/ftl-slurm/slurm.conf python bench/sweep_state.py [--trials 100000]

The test cluster's MaxArraySize is 101 (small sweeps span arrays in the tests); this benchmark restarts it with
FTL_SLURM_MAX_ARRAY=1001, as a site would have it, and restores it at the end. Last line: `status_100000_s: X`.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FTL = [sys.executable, "-m", "launcher.cli"]
sys.path.insert(0, str(REPO))

from launcher import sweep_lock  # noqa: E402 - after the repo is on the path


def cluster(max_array: int) -> None:
    env = {**os.environ, "FTL_SLURM_MAX_ARRAY": str(max_array)}
    subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "cluster.sh"), "start"], env=env, check=True,
                   capture_output=True)  # fmt: skip


def queued(prefix: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i|%j"], capture_output=True, text=True).stdout
    return [j for j, n in (line.split("|") for line in out.splitlines()) if n.startswith(prefix)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100_000)
    args = p.parse_args()
    n = args.trials
    cluster(1001)
    rows = []
    try:
        with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp_name:
            tmp = Path(tmp_name)
            for cls in ("a", "b"):
                (tmp / "data" / cls).mkdir(parents=True)
            sweep = tmp / "sweep.yaml"
            side = int(round(n ** (1 / 2)))
            sweep.write_text(yaml.safe_dump({"recipe": "base", "name": "state", "overrides": [
                f"data.train_dir={tmp / 'data'}", "data.num_workers=0"],
                "grid": {"train.seed": list(range(side)), "optim.lr": [round(1e-4 * (i + 1), 7) for i in range(n // side)]}}))  # fmt: skip
            conf = yaml.safe_load((REPO / "cluster_configs" / "slurm_local.yaml").read_text())
            conf.update(additional_parameters={"begin": "now+7days"}, array_parallelism=1000)
            (tmp / "c.yaml").write_text(yaml.safe_dump(conf))
            out = tmp / "sw"
            start = time.perf_counter()
            subprocess.run([*FTL, "sweep", str(sweep), "--cluster", str(tmp / "c.yaml"), "--out", str(out)], cwd=REPO,
                           check=True, capture_output=True)  # fmt: skip
            rows.append((f"ftl sweep, {n:,} trials queued", time.perf_counter() - start, "s"))
            times = []
            for _ in range(3):
                start = time.perf_counter()
                subprocess.run([*FTL, "status", str(out), "--limit", "0"], cwd=REPO, check=True, capture_output=True)
                times.append(time.perf_counter() - start)
            rows.append((f"ftl status, {n:,} trials (best of 3, process start included)", min(times), "s"))
            holds = reader_lock_holds(out)
            rows.append(("longest sweep-lock hold by a reader (status; wait)", max(holds), "s"))
            sweep_lock.HOLDS.clear()
            rows.append(("bytes one trial's state change appends", change_bytes(out), "bytes"))
            rows.append(("sweep-lock hold of that change (a writer: resume, cancel, a worker's claim)",
                         max(sweep_lock.HOLDS), "s"))  # fmt: skip
            rows.append(("ftl report peak memory", report_peak_mib(out), "MiB"))
            subprocess.run([*FTL, "cancel", str(out)], cwd=REPO, capture_output=True)
    finally:
        left = queued("ftl-state-")
        if left:
            subprocess.run(["scancel", *left])
        time.sleep(1)
        assert not queued("ftl-state-"), "jobs left in the queue"
        cluster(101)
    print(f"# sweep state at scale - {platform.node()}, {os.cpu_count()} cores, {date.today()}")
    for what, value, unit in rows:
        print(f"  {what:60s} {value:12,.3f} {unit}")
    print(f"status_{n}_s: {rows[1][1]:.3f}")


def reader_lock_holds(sweep_dir: Path) -> list[float]:
    """How long `ftl status` and one refresh of `ftl wait` hold the sweep lock (the lock's own measurement; 0 when
    they had nothing to append and took no lock)."""
    from launcher.control import refresh

    sweep_lock.HOLDS.clear()
    refresh(sweep_dir)
    refresh(sweep_dir)
    return list(sweep_lock.HOLDS) or [0.0]


def change_bytes(sweep_dir: Path) -> int:
    """One trial's state changed under the lock: what the log grew by (and nothing else was rewritten)."""
    from launcher import manifest as mf

    log = sweep_dir / "events.jsonl"
    before = log.stat().st_size
    sweep_json = (sweep_dir / "sweep.json").stat().st_mtime_ns
    with mf.locked(sweep_dir) as man:
        trial = next(iter(man.trials.values()))
        man.update(trial, cause="bench: one change")
    assert (sweep_dir / "sweep.json").stat().st_mtime_ns == sweep_json
    return log.stat().st_size - before


def report_peak_mib(sweep_dir: Path) -> float:
    """`ftl report` in its own process; its peak resident memory (GNU time's %M, in KiB)."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *FTL, "report", str(sweep_dir)], cwd=REPO, check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(proc.stderr.strip().splitlines()[-1]) / 1024


if __name__ == "__main__":
    main()
