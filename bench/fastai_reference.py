"""fastai's `vision_learner(...).fine_tune(5)` on an ImageFolder task, with ftl's offline timm backbone (never a
download): the reference of bench/transfer_quality.py. Runs in the benchmark's fastai environment:

    PYTHONPATH=.bench-fastai python bench/fastai_reference.py DATA_ROOT --arch mobilenetv2_100 \\
        --pretrained mobilenetv2_100.tv_in1k --size 64 --seed 0 --out result.json

fastai's defaults throughout: Resize(size) item transform (random crop on train, centre crop on valid),
aug_transforms(size), batch 64, fine_tune(5) = 1 frozen epoch + 5 unfrozen at base_lr 2e-3 (one-cycle), the
model's own normalisation statistics. Prints and writes {"top1", "wall_s"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--arch", required=True)
    p.add_argument("--pretrained", required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--bs", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()

    import torch
    from fastai.vision.all import (
        ImageDataLoaders,
        Normalize,
        Resize,
        accuracy,
        aug_transforms,
        set_seed,
        vision_learner,
    )

    from core.models import data_config
    from core.zoo import load_pretrained

    torch.set_num_threads(2)
    set_seed(args.seed, reproducible=True)
    import timm

    probe = timm.create_model(args.arch, pretrained=False)
    stats = data_config(probe)
    dls = ImageDataLoaders.from_folder(args.data, train="train", valid="val", item_tfms=Resize(args.size),
                                       batch_tfms=[*aug_transforms(size=args.size),
                                                   Normalize.from_stats(stats["mean"], stats["std"])],
                                       bs=args.bs, num_workers=args.workers, seed=args.seed)  # fmt: skip
    learn = vision_learner(dls, args.arch, pretrained=False, metrics=accuracy)
    body = learn.model[0].model  # fastai's TimmBody holds the timm model (its classifier removed)
    load_pretrained(body, args.arch, args.pretrained)
    learn.fine_tune(args.epochs)
    top1 = float(learn.validate()[1])
    result = {"top1": top1, "wall_s": time.perf_counter() - STARTED}
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
