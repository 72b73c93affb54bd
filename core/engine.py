"""The training engine: `fit(cfg, run_dir)` trains and validates; `evaluate` measures loss / top-1 / top-5.

Accelerate owns devices, mixed precision, gradient accumulation and DDP; the same code runs as one CPU process,
as 2 processes under torchrun, or on a node of GPUs. Everything a user can get wrong (data, model, weights,
output dir) is checked before the run dir is written.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from core import checkpoint as ckpt
from core import config as config_lib
from core import lr_finder
from core.config import AugmentConfig
from core.data.datasets import DataSplits, build_datasets, build_loaders
from core.data.resize import image_size_at
from core.data.transforms import augment_config, batch_mixer, eval_transform, train_transform
from core.errors import FtlError
from core.fileio import write_json_atomic
from core.finetune import Phase, apply_phase, phase_at, plan_phases, stage_groups
from core.models import build_model, count_params, freeze, set_frozen_bn_eval
from core.optim import PhasedSchedule, create_optimizer, param_group_table
from core.progress import RunProgress
from core.run_dir import plan_run
from core.tracking import JsonlLogger, truncate_after


def create_accelerator(precision: str, grad_accum_steps: int, seed: int, find_unused: bool = False):
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs

    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=grad_accum_steps,
        # A seedable sampler makes the shuffle order a function of (seed, epoch): needed for mid-epoch resume.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
        step_scheduler_with_optimizer=False,  # the schedule is stepped by hand, once per update
        # Phases freeze stages after DDP wrapping: DDP must then expect parameters without gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused),
                         # a rank that never arrives fails the run in minutes instead of hanging it for 30
                         InitProcessGroupKwargs(timeout=timedelta(seconds=int(os.environ.get("FTL_DIST_TIMEOUT_S", 600))))],
    )


def release_accelerator() -> None:
    """Forget Accelerate's process-wide state so a later fit() in the same process can pick other settings."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def train_step(accelerator, model, batch, loss_fn, optimizer, schedule, clip_grad_norm: float | None,
               channels_last: bool = False, mixer: Callable | None = None):  # fmt: skip
    """One micro-batch: (mix,) forward, backward, and on accumulation boundaries clip + optimizer step + LR step."""
    images, targets = batch
    if mixer is not None and len(images) % 2 == 0:  # timm's batch Mixup pairs samples: needs an even batch
        images, targets = mixer(images, targets)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with accelerator.accumulate(model):
        loss = loss_fn(model(images), targets)
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
    """Mean loss, top-1 and top-5 over the whole loader, from every rank (so every rank agrees). Accelerate's
    loaders pad the last batches (gather_for_metrics drops the padding); FFCV loaders shard exactly, with shards
    that may differ in length, so each rank sums its own and the sums are added once at the end."""
    model.eval()
    exact = getattr(loader, "exact_shards", False)
    sums = torch.zeros(4, device=accelerator.device)  # loss, top-1 hits, top-5 hits, samples
    for images, targets in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images).float()
        loss = F.cross_entropy(logits, targets, reduction="none")
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(targets[:, None])
        values = (loss, hits[:, 0].float(), hits.any(1).float())
        if not exact:
            values = accelerator.gather_for_metrics(values)
        sums[:3] += torch.stack([v.sum() for v in values])
        sums[3] += len(values[0])
    if exact:
        sums = accelerator.reduce(sums, "sum")
    loss, top1, top5, n = sums.tolist()
    n = max(n, 1)
    return {"val_loss": loss / n, "val_top1": top1 / n, "val_top5": top5 / n, "val_n": int(sums[3].item())}


@dataclass
class Parts:
    """Everything built from the config before training; building it raises every user-fixable error."""

    model: torch.nn.Module
    source: str  # where the weights came from
    loader: str  # torch | ffcv
    classes: list[str]
    sizes: tuple[int, int]  # train / val images
    splits: DataSplits | None  # the torch path's datasets
    ffcv_split: tuple | None  # the FFCV path's (train beton, indices, val beton, indices)
    stages: list[list[str]]  # parameter names per coarse stage (stem .. head)
    always_frozen: set[str]  # frozen by model.freeze, never trained
    phases: list[Phase]
    optimizer: torch.optim.Optimizer
    mean: list[float]
    std: list[float]
    augment: AugmentConfig


def build_parts(cfg: DictConfig, say: Callable[[str], None] = print) -> Parts:
    from core.data.beton import choose_loader

    d, m, t, f = cfg.data, cfg.model, cfg.train, cfg.finetune
    loader = choose_loader(d, say)
    splits = ffcv_split = None
    if loader == "torch":
        splits = build_datasets(d.train_dir, d.val_dir, None, None, d.val_split, d.num_classes, t.seed)
        classes, sizes = splits.classes, (len(splits.train), len(splits.val))
    else:
        from core.data.ffcv_loader import open_split

        ffcv_split = train, t_idx, _, v_idx = open_split(d, t.seed)
        classes, sizes = train.classes, (len(t_idx), len(v_idx))
        if d.num_classes is not None and d.num_classes != len(classes):
            raise FtlError(f"data.num_classes={d.num_classes} but {train.path} has {len(classes)} classes")
    model, source = build_model(m.name, len(classes), m.pretrained, m.head, m.head_hidden, m.head_dropout,
                                m.drop_path_rate, m.act_layer)  # fmt: skip
    freeze(model, m.freeze, f.train_bn)
    always_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    stages = stage_groups(model)
    phases = plan_phases(f.strategy, t.epochs, len(stages), f.freeze_epochs, f.unfreeze_every)
    peak, spread = config_lib.lr_plan(cfg)
    o = cfg.optim
    optimizer = create_optimizer(model, o.name, peak or 1e-3, o.weight_decay, o.momentum, stages, spread,
                                 o.layer_decay, o.no_decay_norm_bias)  # fmt: skip
    mean = list(d.mean or model.pretrained_cfg["mean"])
    std = list(d.std or model.pretrained_cfg["std"])
    augment = augment_config(cfg.augment)
    if splits is not None:
        splits.train.transform = train_transform(image_size_at(d.image_size, 0, t.epochs), mean, std, augment)
        splits.val.transform = eval_transform(image_size_at(d.image_size, 0, t.epochs), mean, std, d.crop_pct)
    return Parts(model, source, loader, classes, sizes, splits, ffcv_split, stages, always_frozen, phases, optimizer,
                 mean, std, augment)  # fmt: skip


def set_image_size(parts: Parts, loaders: tuple, size: int, crop_pct: float) -> None:
    """Progressive resizing. torch: new transforms take effect in the next epoch's (freshly started) loader
    workers; ffcv: the decoders' output size, read when the next epoch allocates its buffers."""
    if parts.splits is None:
        for loader in loaders:
            loader.set_image_size(size)
        return
    parts.splits.train.transform = train_transform(size, parts.mean, parts.std, parts.augment)
    parts.splits.val.transform = eval_transform(size, parts.mean, parts.std, crop_pct)


def make_loss(label_smoothing: float) -> Callable:
    """Cross-entropy for class targets (with label smoothing) and for MixUp/CutMix soft targets."""
    from timm.loss import SoftTargetCrossEntropy

    hard, soft = torch.nn.CrossEntropyLoss(label_smoothing=label_smoothing), SoftTargetCrossEntropy()
    return lambda logits, targets: soft(logits, targets) if targets.ndim == 2 else hard(logits, targets)


def prepare(accelerator, cfg: DictConfig, parts: Parts):
    """Loaders, channels_last / compile, and Accelerate's prepare (DDP wrapping happens here). FFCV loaders shard
    by rank themselves and are not given to Accelerate."""
    d, m = cfg.data, cfg.model
    model = parts.model
    if m.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if m.compile:
        model = torch.compile(model)
    if parts.loader == "ffcv":
        from core.data.ffcv_loader import build_ffcv_loaders

        size = image_size_at(d.image_size, 0, cfg.train.epochs)
        train_loader, val_loader = build_ffcv_loaders(d, parts.ffcv_split, cfg.train.seed, parts.augment, parts.mean,
                                                      parts.std, size, accelerator.device, accelerator.process_index,
                                                      accelerator.num_processes, m.channels_last)  # fmt: skip
        model, optimizer = accelerator.prepare(model, parts.optimizer)
        return model, optimizer, train_loader, val_loader
    train_loader, val_loader = build_loaders(parts.splits, d.batch_size, d.eval_batch_size, d.num_workers,
                                             cfg.train.seed, pin_memory=accelerator.device.type == "cuda")  # fmt: skip
    return accelerator.prepare(model, parts.optimizer, train_loader, val_loader)


def fit(
    cfg: DictConfig,
    run_dir: str | Path | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch_end: Callable[[int, dict[str, float]], bool] | None = None,
) -> dict[str, Any]:
    """Train cfg to the end; returns the run's result. should_stop() is polled after every update: when true, a
    checkpoint is saved and the run returns 'interrupted' (resume continues it). on_epoch_end(epoch, metrics) is
    called on the main process after each validation: when it returns true the run ends 'pruned' (early stopping)."""
    config_lib.validate(cfg)
    accelerator = create_accelerator(cfg.train.precision, cfg.train.grad_accum_steps, cfg.train.seed,
                                     find_unused=cfg.finetune.strategy != "full")  # fmt: skip
    try:
        return _fit(accelerator, cfg, run_dir, should_stop, on_epoch_end)
    finally:
        accelerator.end_training()
        release_accelerator()


def seed_everything(cfg: DictConfig) -> None:
    from accelerate.utils import set_seed

    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_seed(cfg.train.seed, deterministic=cfg.train.deterministic)


def _fit(accelerator, cfg: DictConfig, run_dir, should_stop, on_epoch_end) -> dict[str, Any]:
    from accelerate.utils import broadcast_object_list
    from timm.utils import ModelEmaV3

    say = accelerator.print
    d, m, t = cfg.data, cfg.model, cfg.train
    seed_everything(cfg)

    # --- setup: every user-fixable problem surfaces here, before anything is written ---
    parts = build_parts(cfg, say)
    plan = broadcast_object_list([plan_run(cfg.resume, run_dir, cfg.name, t.output_dir)
                                  if accelerator.is_main_process else None])[0]  # fmt: skip
    run_dir = plan.run_dir
    model, optimizer, train_loader, val_loader = prepare(accelerator, cfg, parts)
    unwrapped = accelerator.unwrap_model(model)
    loss_fn = make_loss(cfg.augment.label_smoothing)
    peak, _ = config_lib.lr_plan(cfg)
    if peak is None and (run_dir / "lr_find.json").is_file() and plan.resuming:
        peak = json.loads((run_dir / "lr_find.json").read_text())["chosen"]
    elif peak is None:  # optim.lr: auto
        peak = _auto_lr(accelerator, cfg, model, optimizer, train_loader, loss_fn, run_dir)
    updates_per_epoch = math.ceil(len(train_loader) / t.grad_accum_steps)
    s = cfg.schedule
    schedule = PhasedSchedule(optimizer, s.name, peak, [p.epochs * updates_per_epoch for p in parts.phases],
                              updates_per_epoch, s.warmup_epochs, s.pct_start, s.min_lr)  # fmt: skip
    ema = ModelEmaV3(unwrapped, decay=t.ema_decay) if t.ema else None
    mixer = batch_mixer(parts.augment, len(parts.classes))
    state = ckpt.TrainerState()
    if plan.checkpoint is not None:  # every file was verified against its checksum by plan_run
        state = ckpt.load_checkpoint(accelerator, plan.checkpoint, unwrapped, optimizer, schedule, ema)

    # --- the run dir: written only now that every check passed ---
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(cfg, run_dir / "config.yaml")
        set_aside(plan.set_aside)
        truncate_after(run_dir / "metrics.jsonl", state.global_step)
    accelerator.wait_for_everyone()
    logger = JsonlLogger(run_dir / "metrics.jsonl", enabled=accelerator.is_main_process)
    wandb_run = (_wandb_tracker(cfg, run_dir, state.global_step if plan.checkpoint else 0)
                 if cfg.tracking.wandb and accelerator.is_main_process else None)  # fmt: skip

    def log(record: dict[str, Any]) -> None:
        logger.log(record)
        if wandb_run is not None:
            wandb_run.log(record, step=record["step"])

    def save(state: ckpt.TrainerState) -> None:
        ckpt.save_checkpoint(accelerator, run_dir, state, t.keep_checkpoints, unwrapped, optimizer, schedule, ema)
    export_meta = {"model": m.name, "classes": parts.classes, "num_classes": len(parts.classes),
                   "head": m.head, "mean": parts.mean, "std": parts.std, "config": OmegaConf.to_container(cfg)}  # fmt: skip

    say(f"ftl: model {m.name} from {parts.source}")
    say(f"ftl: data {parts.sizes[0]} train / {parts.sizes[1]} val images, {len(parts.classes)} classes, "
        f"{parts.loader} loader; {accelerator.num_processes} process(es) on {accelerator.device.type}, "
        f"precision {t.precision}")  # fmt: skip
    names = {id(p): n for n, p in unwrapped.named_parameters()}
    say("ftl: parameter groups\n" + param_group_table(optimizer, names))
    resumed = f" (resuming {plan.checkpoint.name}, epoch {state.epoch + 1})" if plan.checkpoint else ""
    if state.epoch >= t.epochs:
        resumed = f" (finished at {plan.checkpoint.name}: its result as it ended)"  # type: ignore[union-attr]
    say(f"ftl: run dir {run_dir}" + (resumed or " (no complete checkpoint: from the beginning)" * plan.resuming))

    # --- the loop ---
    metrics: dict[str, float] = dict(state.metrics)  # a resumed finished run reports its last validation
    progress = RunProgress(run_dir, t.epochs, len(train_loader), d.batch_size * accelerator.num_processes,
                           accelerator.is_main_process)  # fmt: skip
    stop_flag = torch.zeros(1, device=accelerator.device)
    size, phase = None, None
    while state.epoch < t.epochs:
        if phase != (new_phase := parts.phases[phase_at(parts.phases, state.epoch)]):
            phase = new_phase
            apply_phase(unwrapped, parts.stages, phase, parts.always_frozen, cfg.finetune.train_bn)
            say(f"ftl: epoch {state.epoch + 1}: stages {phase.first_trainable_stage}..{len(parts.stages) - 1} of "
                f"0..{len(parts.stages) - 1} train; {count_params(unwrapped)}")  # fmt: skip
        if size != (new := image_size_at(d.image_size, state.epoch, t.epochs)):
            size = new
            set_image_size(parts, (train_loader, val_loader), size, d.crop_pct)
        loader = _epoch_loader(accelerator, parts, train_loader, state)
        model.train()
        set_frozen_bn_eval(unwrapped)
        progress.start_epoch(state.epoch, state.step_in_epoch)
        # the epoch's running loss; a resumed epoch starts from the checkpoint's, so it logs what its twin logs
        loss_sum = torch.tensor(state.loss_sum, device=accelerator.device)
        loss_n, started = state.loss_n, time.perf_counter()
        for batch in loader:
            loss = train_step(accelerator, model, batch, loss_fn, optimizer, schedule, t.clip_grad_norm,
                              m.channels_last, mixer)  # fmt: skip
            state.step_in_epoch += 1
            state.global_step += 1
            loss_sum += loss
            loss_n += 1
            if not accelerator.sync_gradients:
                continue  # EMA, logs, checkpoints and stops only happen on update boundaries
            if ema is not None:
                ema.update(unwrapped, step=schedule.updates)
            if state.global_step % t.log_every_steps == 0:
                train_loss = (loss_sum / loss_n).item()  # a device sync: only every log_every_steps
                lr = optimizer.param_groups[-1]["lr"]
                log({"step": state.global_step, "epoch": state.epoch + 1, "train_loss": train_loss, "lr": lr,
                     "input_px": batch[0].shape[-1]})  # fmt: skip
                progress.step(state.epoch, state.step_in_epoch, train_loss, lr)
            else:
                progress.step(state.epoch, state.step_in_epoch)
            if t.checkpoint_every_steps and state.global_step % t.checkpoint_every_steps == 0:
                state.loss_sum, state.loss_n = loss_sum.item(), loss_n
                save(state)
            if should_stop is not None:
                stop_flag.fill_(float(should_stop()))
                if accelerator.reduce(stop_flag, "max").item():  # every rank stops at the same step
                    progress.close()
                    state.loss_sum, state.loss_n = loss_sum.item(), loss_n
                    save(state)
                    say(f"ftl: stopped at step {state.global_step} (epoch {state.epoch + 1}); checkpoint saved")
                    logger.close()
                    if wandb_run is not None:
                        wandb_run.finish()
                    result = _result("interrupted", run_dir, state, metrics)
                    if accelerator.is_main_process:
                        write_json_atomic(run_dir / "result.json", result)
                    return result
        epoch_time = time.perf_counter() - started
        train_loss = (loss_sum / max(loss_n, 1)).item()
        metrics = evaluate(accelerator, model, val_loader, m.channels_last)
        if ema is not None:
            metrics.update({f"val_ema_{k[4:]}": v for k, v in evaluate(accelerator, ema.module, val_loader).items()})
        state.epoch += 1
        state.step_in_epoch, state.loss_sum, state.loss_n, state.metrics = 0, 0.0, 0, metrics
        is_best = metrics["val_top1"] > state.best_metric
        if is_best:
            state.best_metric, state.best_epoch = metrics["val_top1"], state.epoch
        log({"step": state.global_step, "epoch": state.epoch, "train_loss": train_loss, "image_size": size,
             "epoch_time_s": round(epoch_time, 3), **metrics})  # fmt: skip
        say(f"ftl: epoch {state.epoch}/{t.epochs} train_loss {train_loss:.4f} val_loss {metrics['val_loss']:.4f} "
            f"top1 {metrics['val_top1']:.4f} top5 {metrics['val_top5']:.4f}"
            + (f" ema_top1 {metrics['val_ema_top1']:.4f}" if ema is not None else "") + f" ({epoch_time:.1f}s)")  # fmt: skip
        if accelerator.is_main_process:
            meta = {**export_meta, "image_size": size, "epoch": state.epoch, "step": state.global_step}
            _export_epoch(run_dir, unwrapped, ema, is_best, meta, metrics)
        save(state)
        progress.end_epoch(state.epoch, state.best_metric, state.best_epoch, metrics)
        prune = on_epoch_end(state.epoch, metrics) if on_epoch_end and accelerator.is_main_process else False
        if broadcast_object_list([prune])[0] and state.epoch < t.epochs:
            say(f"ftl: early-stopped after epoch {state.epoch}")
            status = "pruned"
            break
    else:
        status = "completed"
    logger.close()
    result = {**_result(status, run_dir, state, metrics), "weights_digest": weights_digest(unwrapped)}
    if accelerator.is_main_process:
        write_json_atomic(run_dir / "result.json", result)
    if wandb_run is not None:
        _wandb_media(cfg, wandb_run, unwrapped, parts, val_loader, run_dir, state.global_step, accelerator.device)
        wandb_run.finish()
    return result


def _epoch_loader(accelerator, parts: Parts, train_loader, state: ckpt.TrainerState):
    """The training loader set to the epoch, past the batches a resumed epoch already consumed."""
    train_loader.set_epoch(state.epoch)
    if parts.splits is not None:
        parts.splits.train.set_epoch(state.epoch)
    if not state.step_in_epoch:
        return train_loader
    if parts.splits is None:
        train_loader.skip_batches(state.step_in_epoch)
        return train_loader
    return accelerator.skip_first_batches(train_loader, state.step_in_epoch)


def _export_epoch(run_dir: Path, model, ema, is_best: bool, meta: dict[str, Any], metrics: dict[str, float]) -> None:
    """export/last (and best, and ema) safetensors with model.json, after an epoch (main process)."""
    names = [("last", model)] + [("best", model)] * is_best + ([("ema", ema.module)] if ema is not None else [])
    for name, weights in names:
        ckpt.export_weights(weights, run_dir / "export", name, {**meta, "metrics": metrics})


def _wandb_tracker(cfg: DictConfig, run_dir: Path, resume_step: int):
    from core.tracking import WandbTracker

    tr = cfg.tracking
    return WandbTracker(run_dir, OmegaConf.to_container(cfg, resolve=True), tr.project, tr.entity, tr.group,  # type: ignore[arg-type]
                        tr.name, tr.job_type, list(tr.tags), tr.run_id, resume_step)  # fmt: skip


def set_aside(checkpoints: list[Path]) -> None:
    """Newer checkpoints than the one resumed (e.g. a damaged one) are renamed out of the way, not deleted."""
    for path in checkpoints:
        path.rename(path.with_name(f"set_aside_{path.name}"))


@torch.no_grad()
def _wandb_media(cfg: DictConfig, run, model, parts: Parts, val_loader, run_dir: Path, step: int, device) -> None:
    """The LR-finder plot, the augmentation preview, a table of validation samples with predictions, and
    (optionally) the best weights."""
    from core.preview import augment_grid

    if (run_dir / "lr_find.png").is_file():
        run.log_image("lr_find", run_dir / "lr_find.png", step)
    run.log_image("augment_preview", augment_grid(cfg, run_dir / "augment_preview.png", samples=4, repeats=6), step)
    n = min(cfg.tracking.log_samples, parts.sizes[1])
    if n:
        model.eval()
        if parts.splits is not None:
            images = torch.stack([parts.splits.val[i][0] for i in range(n)])
            labels = [parts.splits.val.samples[i][1] for i in range(n)]
        else:  # the FFCV loader: the first validation batch(es)
            batches = list(itertools.islice(val_loader, math.ceil(n / val_loader.batch_size)))
            images = torch.cat([x.cpu() for x, _ in batches])[:n]
            labels = torch.cat([y.cpu() for _, y in batches])[:n].tolist()
        probs = model(images.to(device)).float().softmax(-1).cpu()
        mean, std = torch.tensor(parts.mean).view(3, 1, 1), torch.tensor(parts.std).view(3, 1, 1)
        classes = parts.classes
        rows = [[run.wandb.Image((img * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()),
                 classes[label], classes[int(p.argmax())], float(p.max())]
                for img, label, p in zip(images, labels, probs)]  # fmt: skip
        run.log_table("val_samples", ["image", "label", "prediction", "confidence"], rows, step)
    if cfg.tracking.log_model and (run_dir / "export" / "best.safetensors").is_file():
        run.log_artifact(run_dir / "export" / "best.safetensors", f"{run_dir.name}-best")


def _auto_lr(accelerator, cfg, model, optimizer, train_loader, loss_fn, run_dir: Path) -> float:
    """optim.lr: auto - run the LR finder (model and optimizer restored after), keep its plot and choice."""
    lf = cfg.lr_find
    train_loader.set_epoch(0)
    result = lr_finder.lr_range_test(accelerator, model, optimizer, train_loader, loss_fn, lf.start_lr, lf.end_lr,
                                     lf.num_steps)  # fmt: skip
    chosen = lr_finder.choose(result, lf.suggestion)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        lr_finder.save(result, run_dir, mark=lf.suggestion)
        data = json.loads((run_dir / "lr_find.json").read_text())
        write_json_atomic(run_dir / "lr_find.json", {**data, "chosen": chosen})
    accelerator.print(f"ftl: optim.lr=auto -> {lf.suggestion} {chosen:.2e} (plot: {run_dir / 'lr_find.png'})")
    return chosen


def find_lr(cfg: DictConfig, out_dir: str | Path) -> lr_finder.LRFindResult:
    """`ftl lr-find`: the LR range test on the recipe's model and data; writes lr_find.{json,png} to out_dir."""
    config_lib.validate(cfg)
    accelerator = create_accelerator(cfg.train.precision, 1, cfg.train.seed)
    try:
        seed_everything(cfg)
        parts = build_parts(cfg)
        out_dir = Path(out_dir)
        model, optimizer, train_loader, _ = prepare(accelerator, cfg, parts)
        phase = parts.phases[0]
        apply_phase(accelerator.unwrap_model(model), parts.stages, phase, parts.always_frozen, cfg.finetune.train_bn)
        train_loader.set_epoch(0)
        lf = cfg.lr_find
        result = lr_finder.lr_range_test(accelerator, model, optimizer, train_loader, make_loss(
            cfg.augment.label_smoothing), lf.start_lr, lf.end_lr, lf.num_steps)  # fmt: skip
        if accelerator.is_main_process:
            lr_finder.save(result, out_dir, mark=lf.suggestion)
        return result
    finally:
        accelerator.end_training()
        release_accelerator()


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of this process's weights: DDP ranks that trained the same model print the same one."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _result(status: str, run_dir: Path, state: ckpt.TrainerState, metrics: dict[str, float]) -> dict[str, Any]:
    return {"status": status, "run_dir": str(run_dir), **asdict(state), **metrics}
