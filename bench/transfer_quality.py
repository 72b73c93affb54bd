"""Benchmark: transfer quality and wall time of ftl's default recipe on small offline tasks of different domains,
against fastai's `fine_tune(5)` and a plain full fine-tune run in the same session.

Tasks (bench/transfer_tasks.py; 64 px inputs): fmnist (grey clothes, 300 train / 500 val), digits (grey 8x8
digits, 200 / 500), lfw (grey faces vs non-faces, 40 / 160), cards (colour portrait playing cards from 30 artistic
styles, the rank: 13 classes, 156 / 390). Both offline backbones, several seeds. Every run is its own process
(`ftl train ...` or bench/fastai_reference.py), timed from process start to exit, so start-up and imports count
for everyone. Configs:

    ftl     jobs/recipes/fine_tune.yaml as it is (the default), only the task's size/batch/workers set
    auto    the same with optim.lr=auto (the LR finder chooses)
    race    the same with lr_find.race=[1,0.33]: the unfrozen phase's LR (3e-3 or 1e-3) chosen by a race of two
            epochs from its start
    full    a plain timm-style full fine-tune: AdamW lr 1e-3, one-cycle, 6 epochs, crop resize (reference)
    fastai  vision_learner(...).fine_tune(5) with the same offline backbone (reference; needs --fastai-site)
    crop / squash / pad   ftl's default with that data.resize (how the default was chosen)
    ce / triplet / arcface   ftl's default with cross-entropy, triplet (batch-hard mining, + cross-entropy, class-
            balanced batches) or ArcFace (+ cross-entropy) on a 128-d embedding head; val recall@1 of the
            embeddings next to top-1 (run them on the fine-grained garments task: --tasks garments)

Per task and backbone: top-1 (mean of seeds), wall s, gap = ftl - best reference (points), wall ratio. The last
line is `worst_gap_points: X` (the most negative gap; >= 0 means ftl matched or beat the best reference
everywhere).

    python bench/transfer_quality.py [--tasks ...] [--backbones ...] [--seeds 0 1] [--configs ftl full fastai]
        [--fastai-site .bench-fastai] [--json results.json] [--set key=value ...]

fastai's environment (its own dir, torch untouched): pip install --no-deps --target .bench-fastai fastai fastcore
"fastprogress==1.0.3" fasttransform fastdownload plum-dispatch beartype pandas
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from transfer_tasks import QUALITY_TASKS, TASKS  # noqa: E402

BACKBONES = {"mobilenetv2_100": "mobilenetv2_100.tv_in1k", "tf_efficientnet_lite0": "tf_efficientnet_lite0.in1k"}
FULL = ["finetune.strategy=full", "optim.lr=1e-3", "optim.lr_spread=1", "schedule.name=onecycle", "train.epochs=6",
        "augment.scale=[0.35,1.0]", "augment.label_smoothing=0.0", "optim.weight_decay=0.01", "data.resize=crop"]  # fmt: skip
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "ftl": ("fine_tune", []),
    "auto": ("fine_tune", ["optim.lr=auto"]),
    "race": ("fine_tune", ["lr_find.race=[1,0.33]"]),
    "full": ("base", FULL),
    "fastai": ("", []),
    "crop": ("fine_tune", ["data.resize=crop"]),
    "squash": ("fine_tune", ["data.resize=squash"]),
    "pad": ("fine_tune", ["data.resize=pad"]),
    # metric learning against cross-entropy (the garments task): retrieval recall@k of what each model embeds
    "ce": ("fine_tune", ["loss.recall_at=[1,5]"]),
    "triplet": ("fine_tune", ["loss.name=triplet", "loss.miner=batch_hard", "loss.ce_weight=1",
                              "model.embedding_dim=128", "data.samples_per_class=16", "loss.recall_at=[1,5]"]),
    "arcface": ("fine_tune", ["loss.name=arcface", "loss.ce_weight=1", "model.embedding_dim=128",
                              "loss.recall_at=[1,5]"]),
}
REFERENCES = ("full", "fastai")


def batch_size(train_images: int) -> int:
    """Batch 64 (fastai's and ftl's default), but at least two batches an epoch on the smallest tasks."""
    return min(64, train_images // 2)


def run_ftl(recipe: str, overrides: list[str], run_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "launcher.cli", "train", recipe, *overrides, "--run-dir", str(run_dir)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ftl failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    result = json.loads((run_dir / "result.json").read_text())
    out = {"top1": result["val_top1"], "wall_s": wall}
    chosen = [json.loads(f.read_text())["chosen"] for f in sorted(run_dir.glob("lr_find*.json"))]
    if chosen:  # optim.lr=auto: the first phase's LR, then each later phase's
        out["lr"] = chosen
    raced = [json.loads(f.read_text())["chosen"] for f in sorted(run_dir.glob("lr_race_phase*.json"))]
    if raced:  # lr_find.race: each raced phase's winner
        out["race"] = raced
    out["time_s"] = result.get("time_s", {})
    if "val_recall@1" in result:
        out["recall@1"] = result["val_recall@1"]
    return out


def run_fastai(site: str, data: Path, arch: str, pretrained: str, seed: int, bs: int, workers: int, out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "bench" / "fastai_reference.py"), str(data), "--arch", arch, "--pretrained",
           pretrained, "--size", "64", "--seed", str(seed), "--bs", str(bs), "--workers", str(workers), "--out", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(site).resolve()), str(REPO)])}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"fastai failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    return {"top1": json.loads(out.read_text())["top1"], "wall_s": wall}


PARTS = ("start", "build", "lr_find", "first_update", "train", "precise_bn", "validate", "export", "checkpoint")


def print_time_breakdown(rows: list[dict], tasks: list[str], backbones: list[str]) -> None:
    """Where a short ftl run's wall time goes (result.json's time_s, mean over seeds): process start to the run
    (interpreter, imports, config), build (data, model, loaders, image cache), the epochs' training (first_update:
    the first epoch's loader start and first step, inside train), precise BN, validation, exports, checkpoints;
    exit: the wall time after the run (interpreter shutdown)."""
    print("\n| task | backbone | wall s | " + " | ".join(PARTS) + " | exit |")
    print("| --- " * (len(PARTS) + 4) + "|")
    for task in tasks:
        for backbone in backbones:
            sel = [r for r in rows if (r["task"], r["backbone"]) == (task, backbone) and r.get("time_s")]
            if not sel:
                continue
            mean = {k: statistics.mean(r["time_s"].get(k, 0.0) for r in sel) for k in (*PARTS, "total")}
            wall = statistics.mean(r["wall_s"] for r in sel)
            print(f"| {task} | {backbone} | {wall:.1f} | " + " | ".join(f"{mean[k]:.1f}" for k in PARTS)
                  + f" | {wall - mean['total']:.1f} |")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(QUALITY_TASKS), choices=list(TASKS))
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--configs", nargs="+", default=["ftl", "full", "fastai"], choices=list(CONFIGS))
    p.add_argument("--fastai-site", default=".bench-fastai", help="dir with fastai installed (pip --target)")
    p.add_argument("--data", default="data/bench-tasks", help="where the tasks' ImageFolder trees are built")
    p.add_argument("--workers", type=int, default=2, help="loader workers for every config")
    p.add_argument("--json", help="also write every run's result here")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], help="key=value overrides for ftl's configs")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if "fastai" in args.configs and not Path(args.fastai_site).is_dir():
        raise SystemExit(f"--fastai-site {args.fastai_site}: not found; see this file's docstring to install fastai")

    data = {t: TASKS[t](Path(args.data) / t) for t in args.tasks}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            n_train = sum(1 for _ in (data[task] / "train").rglob("*.png"))
            bs = batch_size(n_train)
            common = [f"data.train_dir={data[task]}/train", f"data.val_dir={data[task]}/val", "data.image_size=64",
                      f"data.batch_size={bs}", f"data.num_workers={args.workers}", "train.log_every_steps=1000"]  # fmt: skip
            for backbone in args.backbones:
                for seed in args.seeds:  # configs interleaved: a slow spell of the machine hits each alike
                    for name in args.configs:
                        where = Path(tmp) / f"{task}-{backbone}-{name}-{seed}"
                        if name == "fastai":
                            res = run_fastai(args.fastai_site, data[task], backbone, BACKBONES[backbone], seed, bs,
                                             args.workers, Path(f"{where}.json"))  # fmt: skip
                        else:
                            recipe, extra = CONFIGS[name]
                            mine = args.overrides if name != "full" else []
                            res = run_ftl(recipe, [*extra, *common, *mine, f"model.name={backbone}",
                                                   f"model.pretrained={BACKBONES[backbone]}", f"train.seed={seed}"],
                                          where)  # fmt: skip
                        rows.append({"task": task, "backbone": backbone, "config": name, "seed": seed, **res})
                        lr = f" (lr {' then '.join(f'{x:.2e}' for x in res['lr'])})" if "lr" in res else ""
                        lr += f" (race won by {', '.join(f'{x:.2e}' for x in res['race'])})" if "race" in res else ""
                        recall = f" recall@1 {res['recall@1']:.4f}" if "recall@1" in res else ""
                        print(f"RESULT {task} {backbone} {name} seed {seed}: top1 {res['top1']:.4f}{recall} in "
                              f"{res['wall_s']:.1f}s{lr}", flush=True)  # fmt: skip

    import torch

    print(f"\nmachine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
          f"{os.environ['OMP_NUM_THREADS']}, torch {torch.__version__}, date {date.today()}; seeds {args.seeds}; "
          f"64 px; every run a fresh process")  # fmt: skip
    configs = args.configs
    refs = [c for c in configs if c in REFERENCES]
    print("| task | backbone | " + " | ".join(f"{c} top-1 (s)" for c in configs) + " | gap to best ref (pts) | "
          "wall vs best ref |")  # fmt: skip
    print("| --- " * (len(configs) + 4) + "|")
    gaps, summary = [], {}
    for task in args.tasks:
        for backbone in args.backbones:
            cell = {}
            for c in configs:
                sel = [r for r in rows if (r["task"], r["backbone"], r["config"]) == (task, backbone, c)]
                cell[c] = (statistics.mean(r["top1"] for r in sel), statistics.mean(r["wall_s"] for r in sel))
            gap, ratio = "", ""
            if "ftl" in cell and refs:
                best = max(refs, key=lambda c: cell[c][0])
                g = 100 * (cell["ftl"][0] - cell[best][0])
                gaps.append(g)
                gap, ratio = f"{g:+.1f} vs {best}", f"{cell['ftl'][1] / cell[best][1]:.2f}x"
            summary[f"{task}/{backbone}"] = cell
            print(f"| {task} | {backbone} | " + " | ".join(f"{cell[c][0]:.4f} ({cell[c][1]:.0f})" for c in configs)
                  + f" | {gap} | {ratio} |")  # fmt: skip
    if "ftl" in configs:
        print_time_breakdown([r for r in rows if r["config"] == "ftl"], args.tasks, args.backbones)
    if "auto" in configs and "ftl" in configs:
        worst = max(abs(100 * (v["auto"][0] - v["ftl"][0])) for v in summary.values())
        print(f"auto_vs_fixed_max_points: {worst:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    if gaps:
        print(f"worst_gap_points: {min(gaps):+.1f}")


if __name__ == "__main__":
    main()
