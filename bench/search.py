"""Benchmark: ftl's adaptive search on the local SLURM (scripts/slurm/cluster.sh) - slot utilisation against batch-
synchronous execution, ask+tell overhead with a large journal, a 1,000-trial search with faults, and TPE against
random search on a real fine-tuning task.

    SLURM_CONF=/tmp/ftl-slurm/slurm.conf python bench/search.py [--trials 100] [--slots 4] [--big 1000]
        [--journal 10000] [--quality-trials 12 --quality-seeds 3] [--skip quality]

1. Utilisation: `--trials` trials of varied length (1-10x, `jobs.objectives:sleep`, 0.1 s per epoch) on `--slots`
   worker slots. busy fraction = time inside trials / (slots x wall time from the first trial's start to the last
   one's end). The batch-synchronous reference (Hydra's Optuna sweeper: a batch of `slots` trials waits for its
   slowest) is computed from the same trials' measured lengths.
2. Overhead: ask (TPE, define-by-run) + tell latency, median and p99, with `--journal` finished trials in the journal.
3. Scale and faults: a `--big`-trial search of trivial trials; one worker is killed (kill -9) mid-trial, another is
   preempted (scancel --signal=USR2); it must end with exactly that many trials, each told once.
4. Quality: TPE vs random, `--quality-trials` real fine-tuning trials per search (Fashion-MNIST 100/class, 32 px,
   2 epochs; lr, weight decay, label smoothing, strategy), `--quality-seeds` search seeds: the best of each.
The last line is `busy_fraction: X`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FTL = [sys.executable, "-m", "launcher.cli"]


def ftl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*FTL, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    if check and proc.returncode not in (0, 1):
        raise SystemExit(f"ftl {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def search_yaml(tmp: Path, name: str, n: int, slots: int, program: str | None, space: dict, **extra) -> Path:
    data = {"recipe": "base", "name": name, "method": "tpe", "metric": "val_top1", "n_trials": n,
            "max_parallel": slots, "seed": 0, "space": space, "overrides": [f"data.train_dir={tmp}"], **extra}  # fmt: skip
    if program:
        data["program"] = program
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cluster_yaml(tmp: Path, slots: int) -> Path:
    data = yaml.safe_load((REPO / "cluster_configs" / "slurm_local.yaml").read_text())
    data.update(array_parallelism=slots, cpus_per_task=1, mem_gb=0.5)
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def trial_files(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((sweep_dir / "search" / "trials").glob("*.json"))]


def utilisation(tmp: Path, n: int, slots: int) -> tuple[float, float, float]:
    """(ftl's busy fraction, the batch-synchronous one from the same lengths, wall seconds)."""
    out = tmp / "util"
    path = search_yaml(tmp, "util", n, slots, "jobs.objectives:sleep", {"train.epochs": {"int": [10, 100]}},
                       method="random")  # fmt: skip
    ftl("sweep", path, "--cluster", cluster_yaml(tmp, slots), "--out", out)
    ftl("wait", out, "--poll", "2")
    trials = trial_files(out)
    lengths = [t["ended"] - t["started"] for t in trials]
    wall = max(t["ended"] for t in trials) - min(t["started"] for t in trials)
    busy = sum(lengths) / (slots * wall)
    batches = [lengths[i : i + slots] for i in range(0, len(lengths), slots)]
    sync = sum(lengths) / (slots * sum(max(b) for b in batches))
    return busy, sync, wall


def overhead(tmp: Path, history: int, method: str = "tpe") -> tuple[float, float]:
    """Median and p99 seconds of one ask (3 parameters, define-by-run) + tell, with `history` finished trials in
    the journal. method=random measures the journal storage alone (its sampler costs nothing)."""
    import optuna

    from jobs.study import open_study, suggest

    space = {"optim.lr": {"loguniform": [1e-5, 1e-1]}, "optim.weight_decay": {"uniform": [0.0, 0.2]},
             "finetune.strategy": {"choice": ["full", "gradual"]}}  # fmt: skip
    study = open_study(tmp / f"big-{method}" / "study.journal", "big", "max", method, 0)
    dists = {"optim.lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
             "optim.weight_decay": optuna.distributions.FloatDistribution(0, 0.2),
             "finetune.strategy": optuna.distributions.CategoricalDistribution(["full", "gradual"])}  # fmt: skip
    import random

    rng = random.Random(0)
    study.add_trials([optuna.trial.create_trial(params={"optim.lr": 10 ** rng.uniform(-5, -1),
                                                        "optim.weight_decay": rng.uniform(0, 0.2),
                                                        "finetune.strategy": rng.choice(["full", "gradual"])},
                                                distributions=dists, value=rng.random()) for _ in range(history)])  # fmt: skip
    times = []
    for _ in range(50):
        start = time.perf_counter()
        trial = study.ask()
        suggest(trial, space, method, 0)
        study.tell(trial, rng.random())
        times.append(time.perf_counter() - start)
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))]


def scale_and_faults(tmp: Path, n: int, slots: int) -> dict:
    """A big search of trivial trials; kill -9 one worker and preempt another mid-way; count trials and tells."""
    out = tmp / "scale"
    path = search_yaml(tmp, "scale", n, slots, "jobs.objectives:sleep", {"train.epochs": {"int": [1, 3]}},
                       method="random", stale_after_s=15)  # fmt: skip
    ftl("sweep", path, "--cluster", cluster_yaml(tmp, slots), "--out", out)
    start = time.time()
    while len(trial_files(out)) < n // 5 and time.time() - start < 600:
        time.sleep(1)
    from launcher import manifest as mf

    jobs = [j.job_id for j in mf.read(out).jobs.values()]
    pids = subprocess.run(["pgrep", "-f", f"submitit.core._submit {out}"], capture_output=True, text=True).stdout.split()
    if pids:
        os.kill(int(pids[0]), signal.SIGKILL)  # a worker, mid-trial
    subprocess.run(["scancel", "--signal=USR2", jobs[-1]], capture_output=True)  # another, preempted
    ftl("wait", out, "--poll", "2")
    proc = ftl("resume", out)  # the killed slot's job is gone: resume brings it back if anything is left
    ftl("wait", out, "--poll", "2")
    from jobs.study import open_study

    study = open_study(out / "search" / "study.journal", "scale", "max")
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    trials = trial_files(out)
    return {"trials": len(trials), "told": sum(s in ("COMPLETE", "PRUNED", "FAIL") for s in states),
            "asked": len(states), "duplicates": len(trials) - len({t["number"] for t in trials}),
            "lost": sum(t["state"] not in ("COMPLETED", "PRUNED", "FAILED") for t in trials),
            "wall_s": time.time() - start, "resume": proc.stdout.strip().splitlines()[-1:]}


def quality(tmp: Path, trials: int, seeds: int, slots: int) -> list[tuple[str, int, float]]:
    """(method, seed, best val_top1) of real fine-tuning searches."""
    data = tmp / "fm"
    subprocess.run([*FTL, "data", "prepare", "fashion-mnist", "--out", str(data), "--per-class", "100",
                    "--val-per-class", "50"], capture_output=True, cwd=REPO)  # fmt: skip
    space = {"optim.lr": {"loguniform": [1e-4, 3e-2]}, "optim.weight_decay": {"loguniform": [1e-4, 0.2]},
             "augment.label_smoothing": {"uniform": [0.0, 0.2]},
             "finetune.strategy": {"choice": ["full", "freeze-then-unfreeze", "gradual"]}}  # fmt: skip
    rows = []
    for seed in range(seeds):
        for method in ("tpe", "random"):
            name = f"q{method}{seed}"
            path = search_yaml(tmp, name, trials, slots, None, space, method=method, seed=seed,
                               overrides=[f"data.train_dir={data}/train", f"data.val_dir={data}/val",
                                          "data.image_size=32", "train.epochs=2", "data.num_workers=0"])  # fmt: skip
            ftl("sweep", path, "--cluster", cluster_yaml(tmp, slots), "--out", tmp / name)
            ftl("wait", tmp / name, "--poll", "5")
            best = max((t["result"].get("val_top1", 0) for t in trial_files(tmp / name) if t.get("result")), default=0)
            rows.append((method, seed, best))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--big", type=int, default=1000)
    p.add_argument("--journal", type=int, default=10000)
    p.add_argument("--quality-trials", type=int, default=12)
    p.add_argument("--quality-seeds", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=[], help="utilisation overhead scale quality")
    args = p.parse_args()
    if not os.environ.get("SLURM_CONF"):
        raise SystemExit("needs the local SLURM cluster: scripts/slurm/cluster.sh start; export SLURM_CONF=...")
    lines, busy = [], float("nan")
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as name:
        tmp = Path(name)
        if "utilisation" not in args.skip:
            busy, sync, wall = utilisation(tmp, args.trials, args.slots)
            lines.append(f"| utilisation, {args.trials} trials of 1-10 s on {args.slots} slots | ftl busy fraction "
                         f"**{busy:.3f}** (wall {wall:.0f} s) | batch-synchronous, same trials: {sync:.3f} |")
        if "overhead" not in args.skip:
            med, p99 = overhead(tmp, args.journal)
            rmed, rp99 = overhead(tmp, args.journal, "random")
            lines.append(f"| ask (TPE) + tell with {args.journal:,} finished trials | median **{med * 1e3:.1f} ms**, "
                         f"p99 {p99 * 1e3:.1f} ms | random sampler (journal storage alone): median {rmed * 1e3:.1f} ms, "
                         f"p99 {rp99 * 1e3:.1f} ms |")
        if "scale" not in args.skip:
            r = scale_and_faults(tmp, args.big, args.slots)
            lines.append(f"| {args.big:,} trivial trials, one worker killed, one preempted | {r['trials']} trials, "
                         f"{r['told']} told, {r['duplicates']} duplicates, {r['lost']} lost | wall {r['wall_s']:.0f} s |")
        if "quality" not in args.skip:
            rows = quality(tmp, args.quality_trials, args.quality_seeds, args.slots)
            tpe = [b for m, _, b in rows if m == "tpe"]
            rnd = [b for m, _, b in rows if m == "random"]
            lines.append(f"| TPE vs random, {args.quality_trials} real trials x {args.quality_seeds} seeds | TPE best "
                         f"{', '.join(f'{b:.3f}' for b in tpe)} (median {statistics.median(tpe):.3f}) | random "
                         f"{', '.join(f'{b:.3f}' for b in rnd)} (median {statistics.median(rnd):.3f}) |")
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, date {date.today()}, local SLURM")
    print("| what | ftl | reference |")
    print("| --- | --- | --- |")
    print("\n".join(lines))
    print(f"busy_fraction: {busy:.3f}")


if __name__ == "__main__":
    main()
