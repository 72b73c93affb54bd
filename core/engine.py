"""The training engine: `fit(cfg, run_dir)` trains and validates; `evaluate` measures loss / top-1 / top-5.

Accelerate owns devices, mixed precision, gradient accumulation and DDP; the same code runs as one CPU process,
as 2 processes under torchrun, or on a node of GPUs. Everything a user can get wrong (data, model, weights,
output dir) is checked before the run dir is written.
"""

from __future__ import annotations

import math
import sys
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from core import checkpoint as ckpt
from core import config as config_lib
from core.data.datasets import build_datasets, build_loaders
from core.data.transforms import eval_transform, train_transform
from core.errors import FtlError
from core.models import build_model, freeze, set_frozen_bn_eval
from core.optim import create_optimizer, create_schedule
from core.tracking import JsonlLogger, truncate_after


def create_accelerator(precision: str, grad_accum_steps: int, seed: int):
    from accelerate import Accelerator, DataLoaderConfiguration

    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=grad_accum_steps,
        # A seedable sampler makes the shuffle order a function of (seed, epoch): needed for mid-epoch resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
        step_scheduler_with_optimizer=False,  # the schedule is stepped by hand, once per update
    )


def release_accelerator() -> None:
    """Forget Accelerate's process-wide state so a later fit() in the same process can pick other settings."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def choose_run_dir(cfg: DictConfig, run_dir: str | Path | None) -> Path:
    """The run dir: the resumed one, the one given, or output_dir/<name>-<time>; checked to be writable."""
    if cfg.resume:
        return Path(cfg.resume).expanduser()
    if run_dir is None:
        run_dir = Path(cfg.train.output_dir) / f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(run_dir).expanduser()
    if (run_dir / "checkpoints").exists():
        raise FtlError(f"run dir {run_dir} already holds a run; resume it with resume={run_dir} or pick another")
    parent = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FtlError(f"cannot write the run dir {run_dir}: {parent} is not writable; set train.output_dir")
    return run_dir


def train_step(accelerator, model, batch, criterion, optimizer, schedule, clip_grad_norm: float | None, channels_last=False):
    """One micro-batch: forward, backward, and on accumulation boundaries clip + optimizer step + LR step."""
    images, targets = batch
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with accelerator.accumulate(model):
        loss = criterion(model(images), targets)
        accelerator.backward(loss)
        if accelerator.sync_gradients and clip_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()  # Accelerate skips it between accumulation boundaries
        if accelerator.sync_gradients:
            schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def evaluate(accelerator, model, loader, channels_last: bool = False) -> dict[str, float]:
    """Mean loss, top-1 and top-5 over the whole loader, gathered from every rank (so every rank agrees)."""
    model.eval()
    losses, top1, top5 = [], [], []
    for images, targets in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images).float()
        loss = F.cross_entropy(logits, targets, reduction="none")
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
        loss, h1, h5 = accelerator.gather_for_metrics((loss, hits[:, 0].float(), hits.any(1).float()))
        losses.append(loss)
        top1.append(h1)
        top5.append(h5)
    n = sum(len(x) for x in losses)
    mean = lambda xs: (torch.cat(xs).sum() / max(n, 1)).item()  # noqa: E731
    return {"val_loss": mean(losses), "val_top1": mean(top1), "val_top5": mean(top5), "val_n": n}


def fit(
    cfg: DictConfig,
    run_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Train cfg to the end (or until should_stop() says so, after a checkpoint); returns the run's result."""
    config_lib.validate(cfg)
    accelerator = create_accelerator(cfg.train.precision, cfg.train.grad_accum_steps, cfg.train.seed)
    try:
        return _fit(accelerator, cfg, run_dir, should_stop)
    finally:
        accelerator.end_training()
        release_accelerator()


def _fit(accelerator, cfg: DictConfig, run_dir, should_stop) -> dict[str, Any]:
    from accelerate.utils import broadcast_object_list, set_seed

    say = accelerator.print
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_seed(cfg.train.seed, deterministic=cfg.train.deterministic)

    # --- setup: every user-fixable problem surfaces here, before anything is written ---
    d, m, t = cfg.data, cfg.model, cfg.train
    splits = build_datasets(d.train_dir, d.val_dir, None, None, d.val_split, d.num_classes, t.seed)
    model, source = build_model(m.name, len(splits.classes), m.pretrained, m.head, m.head_hidden, m.head_dropout,
                                m.drop_path_rate)  # fmt: skip
    counts = freeze(model, m.freeze, m.train_bn)
    mean = list(d.mean or model.pretrained_cfg["mean"])
    std = list(d.std or model.pretrained_cfg["std"])
    a = cfg.augment
    splits.train.transform = train_transform(d.image_size, mean, std, a.scale, a.ratio, a.hflip, a.vflip, a.color_jitter)
    splits.val.transform = eval_transform(d.image_size, mean, std, d.crop_pct)
    optimizer = create_optimizer(model, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum)
    run_dir = broadcast_object_list([choose_run_dir(cfg, run_dir) if accelerator.is_main_process else None])[0]
    resume_from = ckpt.latest_checkpoint(run_dir) if cfg.resume else None

    train_loader, val_loader = build_loaders(splits, d.batch_size, d.eval_batch_size, d.num_workers, t.seed,
                                             pin_memory=accelerator.device.type == "cuda")  # fmt: skip
    if m.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if m.compile:
        model = torch.compile(model)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    updates_per_epoch = math.ceil(len(train_loader) / t.grad_accum_steps)
    s = cfg.schedule
    schedule = create_schedule(optimizer, s.name, updates_per_epoch * t.epochs, updates_per_epoch, s.warmup_epochs,
                               s.pct_start, s.min_lr)  # fmt: skip
    accelerator.register_for_checkpointing(schedule)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=a.label_smoothing)

    # --- the run dir: config, metrics, checkpoints, exports ---
    state = ckpt.TrainerState()
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(cfg, run_dir / "config.yaml")
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = ckpt.load_trainer_state(resume_from)
        if accelerator.is_main_process:
            truncate_after(run_dir / "metrics.jsonl", state.global_step)
    accelerator.wait_for_everyone()
    logger = JsonlLogger(run_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    export_meta = {"model": m.name, "classes": splits.classes, "num_classes": len(splits.classes), "head": m.head,
                   "image_size": d.image_size, "mean": mean, "std": std, "config": OmegaConf.to_container(cfg)}  # fmt: skip

    say(f"ftl: model {m.name} from {source}")
    say(f"ftl: {counts}")
    say(f"ftl: data {len(splits.train)} train / {len(splits.val)} val images, {len(splits.classes)} classes; "
        f"{accelerator.num_processes} process(es) on {accelerator.device.type}, precision {t.precision}")  # fmt: skip
    say(f"ftl: run dir {run_dir}" + (f" (resuming {resume_from.name}, epoch {state.epoch + 1})" if resume_from else ""))

    # --- the loop ---
    metrics: dict[str, float] = {}
    stop_flag = torch.zeros(1, device=accelerator.device)
    while state.epoch < t.epochs:
        train_loader.set_epoch(state.epoch)
        splits.train.set_epoch(state.epoch)
        loader = accelerator.skip_first_batches(train_loader, state.step_in_epoch) if state.step_in_epoch else train_loader
        model.train()
        set_frozen_bn_eval(model)
        bar = _progress(len(train_loader), state, t.epochs, accelerator.is_main_process)
        loss_sum, loss_n, started = torch.zeros((), device=accelerator.device), 0, time.perf_counter()
        for batch in loader:
            loss = train_step(accelerator, model, batch, criterion, optimizer, schedule, t.clip_grad_norm, m.channels_last)
            state.step_in_epoch += 1
            state.global_step += 1
            loss_sum += loss
            loss_n += 1
            bar.update(1)
            if not accelerator.sync_gradients:
                continue  # checkpoints and stops only happen on update boundaries
            if state.global_step % t.log_every_steps == 0:
                train_loss = (loss_sum / loss_n).item()  # a device sync: only every log_every_steps
                lr = optimizer.param_groups[-1]["lr"]
                logger.log({"step": state.global_step, "epoch": state.epoch, "train_loss": train_loss, "lr": lr})
                bar.set_postfix(loss=f"{train_loss:.3f}", lr=f"{lr:.2e}")
            if t.checkpoint_every_steps and state.global_step % t.checkpoint_every_steps == 0:
                ckpt.save_checkpoint(accelerator, run_dir, state, t.keep_checkpoints)
            if should_stop is not None:
                stop_flag.fill_(float(should_stop()))
                if accelerator.reduce(stop_flag, "max").item():  # every rank stops at the same step
                    bar.close()
                    ckpt.save_checkpoint(accelerator, run_dir, state, t.keep_checkpoints)
                    say(f"ftl: stopped at step {state.global_step} (epoch {state.epoch + 1}); checkpoint saved")
                    logger.close()
                    return _result("interrupted", run_dir, state, metrics)
        bar.close()
        epoch_time = time.perf_counter() - started
        train_loss = (loss_sum / max(loss_n, 1)).item()
        metrics = evaluate(accelerator, model, val_loader, m.channels_last)
        state.epoch += 1
        state.step_in_epoch = 0
        is_best = metrics["val_top1"] > state.best_metric
        if is_best:
            state.best_metric, state.best_epoch = metrics["val_top1"], state.epoch
        logger.log({"step": state.global_step, "epoch": state.epoch, "train_loss": train_loss,
                    "epoch_time_s": round(epoch_time, 3), **metrics})  # fmt: skip
        say(f"ftl: epoch {state.epoch}/{t.epochs} train_loss {train_loss:.4f} val_loss {metrics['val_loss']:.4f} "
            f"top1 {metrics['val_top1']:.4f} top5 {metrics['val_top5']:.4f} ({epoch_time:.1f}s)")  # fmt: skip
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            meta = {**export_meta, "epoch": state.epoch, "step": state.global_step}
            ckpt.export_weights(unwrapped, run_dir / "export", "last", {**meta, "metrics": metrics})
            if is_best:
                ckpt.export_weights(unwrapped, run_dir / "export", "best", {**meta, "metrics": metrics})
        ckpt.save_checkpoint(accelerator, run_dir, state, t.keep_checkpoints)
    logger.close()
    result = _result("completed", run_dir, state, metrics)
    if accelerator.is_main_process:
        from core.fileio import write_json_atomic

        write_json_atomic(run_dir / "result.json", result)
    return result


def _result(status: str, run_dir: Path, state: ckpt.TrainerState, metrics: dict[str, float]) -> dict[str, Any]:
    return {"status": status, "run_dir": str(run_dir), **asdict(state), **metrics}


def _progress(total: int, state: ckpt.TrainerState, epochs: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=state.step_in_epoch, desc=f"epoch {state.epoch + 1}/{epochs}",
                disable=not (enabled and sys.stderr.isatty()), leave=False, dynamic_ncols=True)  # fmt: skip
