"""Benchmark: how long ftl takes to expand, validate, write the manifest and queue a sweep on SLURM, and how long
`ftl status` takes on it - against raw submitit `map_array` on the same cluster, in one run.

Needs the local cluster (scripts/slurm/cluster.sh start; SLURM_CONF exported). Every job is submitted held
(`--hold`), so nothing runs; all are cancelled at the end. Sizes: 1,000 trials (one array) and 10,000 trials
(split over MaxArraySize). hydra-submitit-launcher is measured with --hydra (it needs its own venv: see below).
Last line: `submit_1000_s: X`.

    SLURM_CONF=/tmp/ftl-slurm/slurm.conf python bench/submit_overhead.py [--hydra /path/to/hydra-venv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FTL = [sys.executable, "-m", "launcher.cli"]


def sweep_file(tmp: Path, n_axes: int) -> Path:
    """A grid of 10 x 10 x 10 (x 10) trials over cheap keys."""
    keys = ["optim.lr", "optim.weight_decay", "train.seed", "augment.hflip"][:n_axes]
    values = {"optim.lr": [round(1e-4 * (i + 1), 6) for i in range(10)],
              "optim.weight_decay": [round(0.01 * i, 3) for i in range(10)], "train.seed": list(range(10)),
              "augment.hflip": [round(0.1 * i, 2) for i in range(10)]}  # fmt: skip
    path = tmp / f"sweep{10 ** n_axes}.yaml"
    path.write_text(yaml.safe_dump({"recipe": "base", "name": f"bench{10 ** n_axes}",
                                    "overrides": ["data.train_dir=/nonexistent"],
                                    "grid": {k: values[k] for k in keys}}))  # fmt: skip
    return path


def cluster_file(tmp: Path) -> Path:
    data = yaml.safe_load((REPO / "cluster_configs" / "slurm_local.yaml").read_text())
    data["sbatch"] = {"hold": True}
    data["array_parallelism"] = 1000
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout


def count_queued(name: str) -> int:
    out = subprocess.run(["squeue", "-h", "-r", "-n", name, "-o", "%i"], capture_output=True, text=True).stdout
    return len(out.split())


BENCH_JOBS = ("ftl-sw1000", "ftl-sw10000", "rawsubmitit", "hydrabench")  # job names this benchmark submits


def cancel_all() -> None:
    """Cancel this benchmark's jobs (by name), not the user's others."""
    for name in BENCH_JOBS:
        subprocess.run(["scancel", "-n", name], capture_output=True)
    time.sleep(2)


def submitit_map_array(tmp: Path, n: int) -> float:
    import submitit

    executor = submitit.SlurmExecutor(folder=tmp / "submitit" / "%j")
    executor.update_parameters(partition="debug", time=5, array_parallelism=1000, additional_parameters={"hold": True},
                               job_name="rawsubmitit")  # fmt: skip
    start = time.perf_counter()
    executor.map_array(abs, list(range(n)))
    return time.perf_counter() - start


def hydra_queue_time(python: str, tmp: Path, n: int) -> float:
    """hydra-submitit-launcher multirun of n jobs: seconds until all n are in the queue (it then blocks; killed)."""
    app = tmp / "hydra_app.py"
    app.write_text("import hydra\n@hydra.main(version_base=None, config_path=None)\ndef main(cfg):\n    return 0\n"
                   "if __name__ == '__main__':\n    main()\n")  # fmt: skip
    sweep = ",".join(str(i) for i in range(n))
    cmd = [python, str(app), "--multirun", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=debug",
           "hydra.launcher.timeout_min=5", "hydra.launcher.array_parallelism=1000", "hydra.launcher.name=hydrabench",
           "+hydra.launcher.additional_parameters={hold:true}", f"+x={sweep}", f"hydra.sweep.dir={tmp}/hydra"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)
    while count_queued("hydrabench") < n and proc.poll() is None and time.perf_counter() - start < 600:
        time.sleep(0.2)
    elapsed = time.perf_counter() - start
    proc.kill()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hydra", help="python of a venv with hydra-core and hydra-submitit-launcher installed")
    args = p.parse_args()
    if not os.environ.get("SLURM_CONF") or not shutil.which("sbatch"):
        raise SystemExit("needs the local SLURM cluster: scripts/slurm/cluster.sh start; export SLURM_CONF=...")
    cancel_all()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cluster = cluster_file(tmp)
        for axes in (3, 4):
            n = 10**axes
            out = tmp / f"sw{n}"
            submit_s, stdout = timed([*FTL, "sweep", str(sweep_file(tmp, axes)), "--cluster", str(cluster), "--out", str(out)])
            queued = count_queued(f"ftl-sw{n}")
            status_s, status_out = timed([*FTL, "status", str(out), "--limit", "0"])
            rows.append((f"ftl sweep, {n:,} trials", submit_s, f"{queued:,} array tasks queued"))
            rows.append((f"ftl status, {n:,} trials", status_s, status_out.strip().splitlines()[-1]))
            cancel_all()
        raw = submitit_map_array(tmp, 1000)
        rows.append(("submitit map_array, 1,000", raw, f"{count_queued('rawsubmitit'):,} queued"))
        cancel_all()
        if args.hydra:
            rows.append(("hydra-submitit-launcher, 1,000 (to queue)", hydra_queue_time(args.hydra, tmp, 1000), "then blocks"))
            cancel_all()

    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, date {date.today()}, "
          f"local SLURM (scripts/slurm/cluster.sh), jobs submitted held")  # fmt: skip
    print("| what | seconds | note |")
    print("| --- | --- | --- |")
    for what, seconds, note in rows:
        print(f"| {what} | {seconds:.2f} | {note} |")
    print(f"submit_1000_s: {rows[0][1]:.2f}")


if __name__ == "__main__":
    main()
