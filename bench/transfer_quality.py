"""Benchmark: fine-tuning quality and wall time of ftl's recipes on a fixed small transfer task.

Task: Fashion-MNIST, the first N train images of each class (official order; N=300 by default), validated on the
first 2000 official test images, 64 px, grey replicated to RGB, ImageNet normalisation, batch 64, 2 CPU threads.
Configs: the default recipe (jobs/recipes/fine_tune.yaml), a linear probe, a plain full fine-tune (AdamW +
one-cycle, lr 1e-3, 6 epochs) and the same from scratch; both offline backbones; several seeds.
The last line is the headline: `default_recipe_top1: X` (mean over backbones and seeds).

    python bench/transfer_quality.py [--per-class 300] [--seeds 0 1] [--configs default full ...] [--backbones ...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from core import config, engine
from core.data import bundled

BACKBONES = {"mobilenetv2_100": "mobilenetv2_100.tv_in1k", "tf_efficientnet_lite0": "tf_efficientnet_lite0.in1k"}
FULL = ["finetune.strategy=full", "optim.lr=1e-3", "optim.lr_spread=1", "schedule.name=onecycle", "train.epochs=6",
        "augment.scale=[0.35,1.0]", "augment.label_smoothing=0.0", "optim.weight_decay=0.01"]  # fmt: skip
CONFIGS = {
    "default": ("fine_tune", []),
    "linear_probe": ("linear_probe", []),
    "full": ("base", FULL),
    "scratch": ("base", [*FULL, "model.pretrained=null"]),
}
TASK = ["data.image_size=64", "data.batch_size=64", "data.num_workers=2", "data.mean=[0.485,0.456,0.406]",
        "data.std=[0.229,0.224,0.225]", "train.log_every_steps=1000"]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--data", default="data/bench-fmnist", help="where to prepare the task's data")
    p.add_argument("--json", help="also write all results here")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], help="key=value overrides for the default recipe")
    args = p.parse_args()
    torch.set_num_threads(2)

    data = bundled.prepare("fashion-mnist", f"{args.data}-{args.per_class}", per_class=args.per_class, val_first=2000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones:
            for name in args.configs:
                recipe, overrides = CONFIGS[name]
                for seed in args.seeds:
                    extra = args.overrides if name == "default" else []
                    cfg = config.load(recipe, [*overrides, *TASK, *extra, f"model.name={backbone}",
                                               f"model.pretrained={BACKBONES[backbone]}" if name != "scratch" else
                                               "model.pretrained=null", f"data.train_dir={data}/train",
                                               f"data.val_dir={data}/val", f"train.seed={seed}"])  # fmt: skip
                    start = time.perf_counter()
                    result = engine.fit(cfg, Path(tmp) / f"{backbone}-{name}-{seed}")
                    wall = time.perf_counter() - start
                    rows.append({"backbone": backbone, "config": name, "seed": seed, "top1": result["val_top1"],
                                 "wall_s": wall, "epochs": cfg.train.epochs})  # fmt: skip
                    print(f"RESULT {backbone} {name} seed {seed}: top1 {result['val_top1']:.4f} in {wall:.1f}s",
                          flush=True)  # fmt: skip

    print(f"\nmachine: {platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, date {date.today()}; "
          f"Fashion-MNIST {args.per_class}/class, 2000 test images, 64 px, seeds {args.seeds}")  # fmt: skip
    print("| backbone | config | top-1 (mean of seeds) | wall s (mean) |")
    print("| --- | --- | --- | --- |")
    for backbone in args.backbones:
        for name in args.configs:
            sel = [r for r in rows if r["backbone"] == backbone and r["config"] == name]
            print(f"| {backbone} | {name} | {statistics.mean(r['top1'] for r in sel):.4f} | "
                  f"{statistics.mean(r['wall_s'] for r in sel):.1f} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    default = [r["top1"] for r in rows if r["config"] == "default"]
    if default:
        print(f"default_recipe_top1: {statistics.mean(default):.4f}")


if __name__ == "__main__":
    main()
