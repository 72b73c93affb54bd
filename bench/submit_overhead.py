"""Benchmark: how long ftl takes to expand, check every trial, write the per-trial state and queue a sweep - on the
local SLURM (1,000 / 10,000 / 100,000 trials) and on the local executor (10,000) - and what `ftl status` costs,
against raw submitit `map_array` on the same cluster, in one run.

Needs the local cluster (scripts/slurm/cluster.sh start; SLURM_CONF exported). SLURM jobs are submitted with a
start time a week away (`--begin`), so nothing runs; all are cancelled at the end. `sacct` is counted through a
shim on PATH: `ftl status` must make one accounting query for the whole sweep. The local runner's CPU per poll
is read from /proc while 10,000 trials wait. Goals (issue #10): 1,000 <= 1 s, 10,000 <= 3 s, 100,000 <= 30 s,
status of 100,000 <= 5 s with one sacct call, local 10,000 <= 5 s. The test cluster's MaxArraySize is 101; the
run restarts it with 1001 (FTL_SLURM_MAX_ARRAY), as a site would have it, and restores it. Every job it queued is
cancelled by id at the end, and the queue is checked. Last line: `submit_10000_s: X`.

    SLURM_CONF=/tmp/ftl-slurm/slurm.conf python bench/submit_overhead.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FTL = [sys.executable, "-m", "launcher.cli"]


def sweep_file(tmp: Path, n: int, data: Path) -> Path:
    """A grid of n trials over cheap keys (10 x 10 x ... and a last axis for the rest)."""
    keys = ["optim.lr", "optim.weight_decay", "augment.hflip", "train.seed"]
    values = {"optim.lr": [round(1e-4 * (i + 1), 6) for i in range(10)],
              "optim.weight_decay": [round(0.01 * i, 3) for i in range(10)],
              "augment.hflip": [round(0.1 * i, 2) for i in range(10)]}  # fmt: skip
    grid, size = {}, 1
    for key in keys[:-1]:
        if size * 10 > n:
            break
        grid[key], size = values[key], size * 10
    grid["train.seed"] = list(range(n // size))
    path = tmp / f"sweep{n}.yaml"
    path.write_text(yaml.safe_dump({"recipe": "base", "name": f"bench{n}", "grid": grid,
                                    "overrides": [f"data.train_dir={data}", "data.num_workers=0"]}))  # fmt: skip
    return path


def cluster_file(tmp: Path, kind: str) -> Path:
    if kind == "local":
        data = {"name": "here", "executor": "local", "max_parallel": 1}
    else:
        data = yaml.safe_load((REPO / "cluster_configs" / "slurm_local.yaml").read_text())
        data.update(additional_parameters={"begin": "now+7days"}, array_parallelism=1000)
    path = tmp / f"cluster-{kind}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sacct_shim(tmp: Path) -> dict[str, str]:
    """A `sacct` first on PATH that counts its calls, then runs the real one."""
    real = shutil.which("sacct")
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    shim = bin_dir / "sacct"
    shim.write_text(f'#!/bin/bash\necho x >> {tmp}/sacct_calls\nexec {real} "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout


def count_queued(prefix: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%j"], capture_output=True, text=True).stdout
    return sum(name.startswith(prefix) for name in out.split())


def ours(prefix: str) -> list[str]:
    """Array job ids of the queued jobs whose name starts with prefix."""
    out = subprocess.run(["squeue", "-h", "-o", "%A|%j"], capture_output=True, text=True).stdout
    return sorted({job for job, name in (line.split("|", 1) for line in out.splitlines()) if name.startswith(prefix)})


def cancel(prefix: str) -> None:
    """Cancel this benchmark's jobs by id (scancel --name takes one name, not a list) and check they are gone."""
    for _ in range(60):
        jobs = ours(prefix)
        if not jobs:
            return
        for start in range(0, len(jobs), 200):
            subprocess.run(["scancel", *jobs[start : start + 200]], capture_output=True)
        time.sleep(1)
    raise SystemExit(f"jobs named {prefix}* are still queued after 60 s: {' '.join(ours(prefix)[:10])}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def submitit_map_array(tmp: Path, n: int) -> float:
    import submitit

    executor = submitit.SlurmExecutor(folder=tmp / "submitit" / "%j")
    executor.update_parameters(partition="debug", time=5, array_parallelism=1000,
                               additional_parameters={"begin": "now+7days"}, job_name="rawsubmitit")  # fmt: skip
    start = time.perf_counter()
    executor.map_array(abs, list(range(n)))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000,100000", help="SLURM sweep sizes")
    args = p.parse_args()
    if not os.environ.get("SLURM_CONF") or not shutil.which("sbatch"):
        raise SystemExit("needs the local SLURM cluster: scripts/slurm/cluster.sh start; export SLURM_CONF=...")
    rows, headline = [], {}
    cluster_sh = ["bash", str(REPO / "scripts" / "slurm" / "cluster.sh"), "start"]
    subprocess.run(cluster_sh, env={**os.environ, "FTL_SLURM_MAX_ARRAY": "1001"}, check=True, capture_output=True)
    try:
        run(args, rows, headline)
    finally:  # whatever happened, the queue is left as it was found
        cancel("ftl-bench")
        cancel("rawsubmitit")
        subprocess.run(cluster_sh, check=True, capture_output=True)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, date {date.today()}, "
          "local SLURM (scripts/slurm/cluster.sh), jobs queued with --begin=now+7days; queue checked empty after")  # fmt: skip
    print("| what | seconds | note |")
    print("| --- | --- | --- |")
    for what, seconds, note in rows:
        print(f"| {what} | {seconds:.3f} | {note} |")
    print(f"submit_10000_s: {headline.get(10000, float('nan')):.2f}")


def run(args, rows: list, headline: dict) -> None:
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        for cls in ("a", "b"):  # passes every check, fails at once if run (nothing is run here)
            (data / cls).mkdir(parents=True)
        env = sacct_shim(tmp)
        for n in (int(s) for s in args.sizes.split(",")):
            out = tmp / f"sw{n}"
            cancel("ftl-bench")
            submit_s, _ = timed([*FTL, "sweep", str(sweep_file(tmp, n, data)), "--cluster",
                                 str(cluster_file(tmp, "slurm")), "--out", str(out)])  # fmt: skip
            queued = count_queued(f"ftl-bench{n}-")
            (tmp / "sacct_calls").unlink(missing_ok=True)
            status_s, status_out = timed([*FTL, "status", str(out), "--limit", "0"], env)
            calls = len((tmp / "sacct_calls").read_text().split()) if (tmp / "sacct_calls").exists() else 0
            rows.append((f"ftl sweep, {n:,} trials (SLURM)", submit_s, f"{queued:,} array tasks queued"))
            rows.append((f"ftl status, {n:,} trials (SLURM)", status_s,
                         f"{calls} sacct call(s); {status_out.strip().splitlines()[-1][:60]}"))  # fmt: skip
            headline[n] = submit_s
            cancel(f"ftl-bench{n}-")
        raw = submitit_map_array(tmp, 1000)
        rows.append(("submitit map_array, 1,000 (SLURM)", raw, "reference: no checks, no state"))
        cancel("rawsubmitit")

        out = tmp / "local10000"
        submit_s, _ = timed([*FTL, "sweep", str(sweep_file(tmp, 10000, data)), "--cluster",
                             str(cluster_file(tmp, "local")), "--out", str(out)])  # fmt: skip
        rows.append(("ftl sweep, 10,000 trials (local executor)", submit_s, "state files + queue + runner start"))
        while not (out / "local_runner.json").is_file():  # the runner is starting (its imports)
            time.sleep(0.1)
        runner = json.loads((out / "local_runner.json").read_text())["pid"]
        before, start = cpu_seconds(runner), time.perf_counter()
        time.sleep(10)
        per_poll = (cpu_seconds(runner) - before) / ((time.perf_counter() - start) / 0.5)
        rows.append(("local runner, CPU per 0.5 s poll, 10,000 queued", per_poll, "seconds of CPU"))
        status_s, _ = timed([*FTL, "status", str(out), "--limit", "0"])
        rows.append(("ftl status, 10,000 trials (local executor)", status_s, ""))
        subprocess.run([*FTL, "cancel", str(out)], capture_output=True, cwd=REPO)
        from launcher.local_executor import runner_alive

        deadline = time.time() + 60
        while runner_alive(out) and time.time() < deadline:  # let it leave before its dir is removed
            time.sleep(0.5)


if __name__ == "__main__":
    main()
