"""The training engine in torchtune's recipe shape: `FineTune(cfg).setup(run_dir)` builds each piece with a small
builder (data, network, speed settings, optimizer, schedule, run dir, tracking), `train()` is the loop you read top
to bottom, `cleanup()` releases the processes' state. `fit(cfg, run_dir)` does the three; `evaluate` measures loss /
top-1 / top-5.

Accelerate owns devices, mixed precision, gradient accumulation and DDP; the same code runs as one CPU process, as
2 processes under torchrun, or on a node of GPUs. The plain module (`self.module`) is the handle for names, phases,
EMA, checkpoints and exports; the DDP-wrapped one (`self.model`) for gradient sync; `self.forward` - the
`torch.compile`d form when model.compile is on - only computes outputs, so compiling never renames a parameter.
Everything a user can get wrong (data, model, weights, output dir) is checked before the run dir is written.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
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
from core.data.loaders import DataSource, build_loaders, open_data
from core.data.resize import image_size_at
from core.data.transforms import augment_config, batch_mixer, eval_transform, resize_mode, train_transform
from core.errors import FtlError
from core.fileio import write_json_atomic
from core.finetune import Phase, apply_phase, phase_at, plan_phases, stage_groups
from core.lease import Lease, LeaseLost
from core.lease import take as take_lease
from core.losses import FeatureTap, build_objective, head_module, recall_at_k
from core.models import build_model, count_params, data_config, freeze, recompute_bn_stats, set_frozen_bn_eval
from core.optim import PhasedSchedule, create_optimizer, param_group_table
from core.progress import RunProgress
from core.run_dir import plan_run
from core.tracking import JsonlLogger, check_login, truncate_after, write_summary

COMPILE_MIN_UPDATES = 500  # model.compile=auto compiles (on CUDA) runs of at least this many optimizer updates
CACHE_MAX_BYTES = 2 * 2**30  # data.cache=auto keeps decoded images in RAM up to this size
CACHE_MAX_SAMPLES = 200_000  # ... and only for datasets up to this many images (decoding them all first is serial)
# optim.lr=auto, one range test: later phases peak at its LR x this (finetune.unfrozen_lr_scale unset). The whole
# network's own test chose 0.16-0.57x (mean 0.30) the head-only test's on fmnist, both backbones, 5 seeds
AUTO_UNFROZEN_SCALE = 0.3
STOP_POLL_UPDATES = 16  # several processes: agree on a stop request every this many updates (a collective)


def create_accelerator(precision: str, grad_accum_steps: int, seed: int, find_unused: bool = False):
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs

    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=grad_accum_steps,
        # A seedable sampler makes the shuffle order a function of (seed, epoch): needed for mid-epoch resume.
        # Batches reach the device with non-blocking copies from pinned memory.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed, non_blocking=True),
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
               channels_last: bool = False, mixer: Callable | None = None, forward: Callable | None = None):  # fmt: skip
    """One micro-batch: (mix,) forward, backward, and on accumulation boundaries clip + optimizer step + LR step.
    `model` is the (DDP-wrapped) module gradients sync through; `forward` computes outputs (default: model)."""
    images, targets = batch
    if mixer is not None:  # any batch size: an odd batch mixes all but its last sample (transforms.OddBatchMixer)
        images, targets = mixer(images, targets)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with accelerator.accumulate(model):
        loss = loss_fn((model if forward is None else forward)(images), targets)
        accelerator.backward(loss)
        if accelerator.sync_gradients and clip_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()  # Accelerate skips it between accumulation boundaries
        if accelerator.sync_gradients:
            schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def evaluate(accelerator, model, loader, channels_last: bool = False, tap: FeatureTap | None = None,
             recall_at: tuple[int, ...] = ()) -> dict[str, float]:  # fmt: skip
    """Mean loss, top-1 and top-5 over the whole loader, from every rank (so every rank agrees); with recall_at
    and a tap, retrieval recall@k of the tapped embeddings too (val_recall@k). Accelerate's loaders pad the last
    batches (gather_for_metrics drops the padding); FFCV and GPU loaders shard exactly, with shards that may
    differ in length, so each rank sums its own and the sums are added once at the end."""
    model.eval()
    exact = getattr(loader, "exact_shards", False)
    sums = torch.zeros(4, device=accelerator.device)  # loss, top-1 hits, top-5 hits, samples
    embedded: list[tuple[torch.Tensor, torch.Tensor]] = []
    for images, targets in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images).float()
        if tap is not None and recall_at:
            emb = tap.take().float()
            embedded.append((emb, targets) if exact else accelerator.gather_for_metrics((emb, targets)))
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
    metrics = {"val_loss": loss / n, "val_top1": top1 / n, "val_top5": top5 / n, "val_n": int(sums[3].item())}
    if embedded:
        emb, labels = (torch.cat(x) for x in zip(*embedded))
        if exact and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object([(emb.cpu(), labels.cpu())])
            emb, labels = torch.cat([e for e, _ in parts]), torch.cat([lab for _, lab in parts])
        metrics.update({f"val_recall@{k}": v for k, v in recall_at_k(emb, labels, recall_at).items()})
    return metrics


def make_loss(label_smoothing: float) -> Callable:
    """Cross-entropy for class targets (with label smoothing) and for MixUp/CutMix soft targets."""
    from core.losses import Objective

    return Objective(label_smoothing)


def seed_everything(seed: int, deterministic: bool) -> None:
    from accelerate.utils import set_seed

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_seed(seed, deterministic=deterministic)


# ---------------------------------------------------------------- builders


def resolve_precision(precision: str) -> tuple[str, str]:
    """train.precision: auto -> bf16 on a GPU that has it, fp16 (with a grad scaler) on one without, fp32 on CPU.
    Returns (the precision, why)."""
    if precision != "auto":
        return precision, "as set"
    # the device Accelerate will pick, without creating its process state (that would fix it before Accelerator)
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if use_cpu or not torch.cuda.is_available():
        return "no", "auto: fp32 on CPU"
    if torch.cuda.is_bf16_supported():
        return "bf16", "auto: the GPU supports bf16"
    return "fp16", "auto: no bf16 on this GPU, fp16 with a grad scaler"


@dataclass
class Speed:
    """channels_last and torch.compile, resolved for this device and run length, with the reason printed."""

    channels_last: bool
    compile: bool
    note: str


def resolve_speed(channels_last: Any, compile_: Any, device: torch.device, updates: int) -> Speed:
    """model.channels_last: auto -> on for CUDA; model.compile: auto -> on for CUDA when the run has at least
    COMPILE_MIN_UPDATES optimizer updates (compiling takes ~a minute; a shorter run would not earn it back).
    An explicit true/false always wins."""
    cuda = device.type == "cuda"
    cl = cuda if channels_last == "auto" else bool(channels_last)
    co = (cuda and updates >= COMPILE_MIN_UPDATES) if compile_ == "auto" else bool(compile_)
    why_cl = f"auto: {'CUDA' if cuda else device.type}" if channels_last == "auto" else "as set"
    why_co = (f"auto: {'CUDA' if cuda else device.type}, {updates:,} updates "
              f"{'>=' if updates >= COMPILE_MIN_UPDATES else '<'} {COMPILE_MIN_UPDATES}") if compile_ == "auto" else "as set"  # fmt: skip
    note = f"channels_last {'on' if cl else 'off'} ({why_cl}), compile {'on' if co else 'off'} ({why_co})"
    return Speed(cl, co, note)


@dataclass
class Network:
    """The model and how it trains: its coarse stages, the fine-tune phases, what stays frozen."""

    module: torch.nn.Module
    source: str  # where the weights came from
    stages: list[list[str]]
    phases: list[Phase]
    always_frozen: set[str]


def build_network(m: Any, f: Any, epochs: int, num_classes: int) -> Network:
    """A timm model with its weights and head (core/models.py), frozen as model.freeze says, and its phase plan."""
    module, source = build_model(m.name, num_classes, m.pretrained, m.head, m.head_hidden, m.head_dropout,
                                 m.drop_path_rate, m.act_layer, m.embedding_dim)  # fmt: skip
    freeze(module, m.freeze, f.train_bn)
    always_frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
    stages = stage_groups(module)
    phases = plan_phases(f.strategy, epochs, len(stages), f.freeze_epochs, f.unfreeze_every)
    return Network(module, source, stages, phases, always_frozen)


def build_optimizer(net: Network, o: Any, peak: float | None, spread: float) -> torch.optim.Optimizer:
    return create_optimizer(net.module, o.name, peak or 1e-3, o.weight_decay, o.momentum, net.stages, spread,
                            o.layer_decay, o.no_decay_norm_bias)  # fmt: skip


def build_schedule(optimizer, s: Any, peaks: list[float | None], phases: list[Phase],
                   updates_per_epoch: int) -> PhasedSchedule:  # fmt: skip
    return PhasedSchedule(optimizer, s.name, peaks, [p.epochs * updates_per_epoch for p in phases], updates_per_epoch,
                          s.warmup_epochs, s.pct_start, s.min_lr)  # fmt: skip


def build_torch_data(data: DataSource, d: Any, augment, mean: list[float], std: list[float], crop_pct: float,
                     sizes: list[int], say: Callable[[str], None]) -> None:  # fmt: skip
    """The torch path's transforms as data.resize says (train and eval), and the in-memory cache of decoded images
    (data.cache: auto caches what fits in CACHE_MAX_BYTES). Call after build_loaders, before the first batch."""
    splits, mode = data.opened, resize_mode(d.resize)
    splits.train.set_make_transform(lambda s: train_transform(s, mean, std, augment, mode))
    splits.val.set_make_transform(lambda s: eval_transform(s, mean, std, crop_pct, mode))
    for dataset in (splits.train, splits.val):
        dataset.transform  # built now: a bad augment.policy is an error before the run dir is written
    if d.cache is False or (d.cache == "auto" and sum(data.sizes) > CACHE_MAX_SAMPLES):
        say(f"ftl: data.resize={d.resize} ({mode}); data.cache={d.cache}: images read from disk each epoch")
        return
    # keep enough pixels for the largest input: the smallest zoom crop, or the eval crop, at the largest size
    short = math.ceil(max(sizes) / min(math.sqrt(min(augment.scale)), crop_pct))
    started = time.perf_counter()
    budget = CACHE_MAX_BYTES if d.cache == "auto" else float("inf")
    kept = splits.train.cache_images(budget, short) and splits.val.cache_images(budget, short)
    if not kept:
        splits.train.cache = splits.val.cache = None
    say(f"ftl: data.resize={d.resize} ({mode}); data.cache={d.cache}: " + (f"decoded images kept in RAM (short side <= {short} px, "
        f"{time.perf_counter() - started:.1f}s)" if kept else "over 2 GiB decoded, read from disk each epoch"))  # fmt: skip


def build_tracking(cfg: DictConfig, run_dir: Path, main: bool, resume_step: int):
    """metrics.jsonl always; a W&B run (main process) when tracking.wandb."""
    logger = JsonlLogger(run_dir / "metrics.jsonl", enabled=main)
    if not (cfg.tracking.wandb and main):
        return logger, None
    from core.checks import logged_metrics
    from core.tracking import WandbTracker

    tr, values = cfg.tracking, config_lib.to_dict(cfg)
    tags = [*tr.tags, *([f"trial:{tr.trial}"] if tr.trial else [])]  # find a trial's run from `ftl status`
    run = WandbTracker(run_dir, values, tr.project, tr.entity, tr.group, tr.name, tr.job_type, tags, tr.run_id,
                       resume_step)  # fmt: skip
    for name in sorted(logged_metrics(values)):
        run.define_metric(name)  # W&B keeps each metric's best (and last) in the run's summary
    return logger, run


def set_aside(checkpoints: list[Path]) -> None:
    """Newer checkpoints than the one resumed (e.g. a damaged one) are renamed out of the way, not deleted."""
    for path in checkpoints:
        path.rename(path.with_name(f"set_aside_{path.name}"))


# ---------------------------------------------------------------- the recipe


def fit(cfg: DictConfig, run_dir: str | Path | None = None, should_stop: Callable[[], bool] | None = None,
        on_epoch_end: Callable[[int, dict[str, float]], bool] | None = None, lease: Lease | None = None) -> dict[str, Any]:  # fmt: skip
    """Train cfg to the end; returns the run's result. should_stop() is polled at updates: when true, a checkpoint
    is saved and the run returns 'interrupted' (resume continues it). on_epoch_end(epoch, metrics) is called on the
    main process after each validation: when it returns true the run ends 'pruned' (early stopping). `lease` is the
    run dir's (core/lease.py) when the caller took it; otherwise fit takes one once every check has passed, and
    checks it before every write: LeaseLost when a newer process took the run dir over."""
    config_lib.validate(cfg)
    run = FineTune(cfg, should_stop, on_epoch_end, lease)
    try:
        run.setup(run_dir)
        return run.train()
    except BaseException as e:  # W&B shows how the run ended, not a clean finish (a fenced process writes nothing)
        if getattr(run, "wandb", None) is not None and not isinstance(e, LeaseLost):
            run.wandb.finish("interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
        if isinstance(e, KeyboardInterrupt) and getattr(run, "run_dir", None) is not None:
            e.run_dir = run.run_dir  # type: ignore[attr-defined] - where a caller can say how to continue
        raise
    finally:
        run.cleanup()


class FineTune:
    """One fine-tuning run: setup() builds, train() loops, cleanup() releases."""

    def __init__(self, cfg: DictConfig, should_stop: Callable[[], bool] | None = None,
                 on_epoch_end: Callable[[int, dict[str, float]], bool] | None = None, lease: Lease | None = None):  # fmt: skip
        self.cfg, self.should_stop, self.on_epoch_end, self.lease = cfg, should_stop, on_epoch_end, lease
        self.created = time.perf_counter()
        self.precision, self.precision_note = resolve_precision(cfg.train.precision)
        self.accelerator = create_accelerator(self.precision, cfg.train.grad_accum_steps, cfg.train.seed,
                                              find_unused=cfg.finetune.strategy != "full")  # fmt: skip
        self.say = self.accelerator.print
        self.main = self.accelerator.is_main_process
        self.spent: dict[str, float] = defaultdict(float)  # seconds per part of the run (result.json's time_s)

    @contextlib.contextmanager
    def timed(self, part: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.spent[part] += time.perf_counter() - started

    def time_spent(self) -> dict[str, float]:
        """Where this process's time went: start (interpreter, imports, config: from process start to the run),
        build (data, model, loaders, image cache), lr_find, train (of which first_update: the first epoch's
        loader start and first step), precise_bn, validate, export, checkpoint; total from process start."""
        import psutil

        total = time.time() - psutil.Process().create_time()
        return {"start": round(total - (time.perf_counter() - self.created), 3),
                **{k: round(v, 3) for k, v in self.spent.items()}, "total": round(total, 3)}  # fmt: skip

    def setup(self, run_dir: str | Path | None) -> None:
        from accelerate.utils import broadcast_object_list
        from timm.utils import ModelEmaV3

        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        if cfg.tracking.wandb and self.main:
            check_login()  # before the run dir exists
        with self.timed("build"):
            self.build()  # every user-fixable problem surfaces here or in plan_run, before anything is written
        self.plan = broadcast_object_list([plan_run(cfg.resume, run_dir, cfg.name, t.output_dir) if self.main else None])[0]
        self.run_dir: Path = self.plan.run_dir
        if self.main and self.lease is None:  # one writer from here on (checked before every write: guard())
            self.lease = take_lease(self.run_dir)
        self._restore_moved_aside()
        self.schedule = build_schedule(self.optimizer, cfg.schedule, self._phase_peaks(), self.net.phases,
                                       self.updates_per_epoch)  # fmt: skip
        # use_warmup: the decay grows with the updates (1 - (1 + n)^-2/3) up to ema_decay, so a run of 20 updates
        # averages its last few, not the pretrained start (a fixed 0.998 would keep 96% of the start after 20)
        self.ema = ModelEmaV3(self.module, decay=t.ema_decay, use_warmup=t.ema_warmup) if t.ema else None
        self.ema_tap = FeatureTap(head_module(self.ema.module)) if self.ema is not None and self.tap else None
        self.last_save = time.perf_counter()
        self.mixer = batch_mixer(self.augment, len(self.data.classes))
        self.state = ckpt.TrainerState()
        if self.plan.checkpoint is not None:  # every file was verified against its checksum by plan_run
            self.state = ckpt.load_checkpoint(acc, self.plan.checkpoint, self.module, self.optimizer, self.schedule,
                                              self.ema)  # fmt: skip
        # the run dir: written only now that every check passed, and by one process (the newest lease's)
        if self.main:
            self.guard()
            config_lib.save(cfg, self.run_dir / "config.yaml")
            set_aside(self.plan.set_aside)
            truncate_after(self.run_dir / "metrics.jsonl", self.state.global_step)
        acc.wait_for_everyone()
        resume_step = self.state.global_step if self.plan.checkpoint else 0
        self.logger, self.wandb = build_tracking(cfg, self.run_dir, self.main, resume_step)
        self.progress = RunProgress(self.run_dir, t.epochs, len(self.train_loader), cfg.data.batch_size * acc.num_processes,
                                    self.main)  # fmt: skip
        self._announce()

    def build(self) -> None:
        """Data, network, loaders, objective, optimizer: what a run and `ftl lr-find` share (no file written)."""
        cfg, acc = self.cfg, self.accelerator
        d, m, t, lo = cfg.data, cfg.model, cfg.train, cfg.loss
        seed_everything(t.seed, t.deterministic)
        self.data: DataSource = open_data(d, t.seed, acc.device, self.say, cfg.augment)
        check_data(cfg, self.data)
        self.net = build_network(m, cfg.finetune, t.epochs, len(self.data.classes))
        lf = cfg.lr_find
        if lf.race and not any(p.epochs > lf.race_epochs for p in self.net.phases):
            raise FtlError(f"lr_find.race: no phase is longer than lr_find.race_epochs={lf.race_epochs} (phases of "
                           f"{[p.epochs for p in self.net.phases]} epochs), so nothing would race: lower "
                           "race_epochs, train longer or drop lr_find.race")  # fmt: skip
        own = data_config(self.net.module, d.mean, d.std, d.crop_pct)  # the model's own where data.* is unset
        self.mean, self.std, self.crop_pct = own["mean"], own["std"], own["crop_pct"]
        self.augment = augment_config(cfg.augment)
        self.size = image_size_at(d.image_size, 0, t.epochs)
        per_rank = self.data.sizes[0] // acc.num_processes
        estimate = t.epochs * max(1, per_rank // d.batch_size) // t.grad_accum_steps  # what compile=auto weighs
        self.speed = resolve_speed(m.channels_last, m.compile, acc.device, estimate)
        if self.data.backend == "torch":
            self.data.opened.train.samples_per_class = d.samples_per_class  # class-balanced batches when > 0
        d_resolved = OmegaConf.merge(d, {"crop_pct": self.crop_pct})
        self.train_loader, self.val_loader = build_loaders(self.data, d_resolved, t.seed, self.augment, self.mean,
                                                           self.std, self.size, acc, self.speed.channels_last)  # fmt: skip
        if self.data.backend == "torch":
            sizes = [image_size_at(d.image_size, e, t.epochs) for e in range(t.epochs)]
            build_torch_data(self.data, d, self.augment, self.mean, self.std, self.crop_pct, sizes, self.say)
        self.updates_per_epoch = math.ceil(len(self.train_loader) / t.grad_accum_steps)
        # the module, its DDP wrapping for gradient sync, and the compiled forward
        self.module = self.net.module
        if self.speed.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        # the objective first: a metric loss with weights of its own (ArcFace) puts them in the head to be optimized
        self.loss_fn, self.tap = build_objective(self.module, lo.name, len(self.data.classes),
                                                 cfg.augment.label_smoothing, lo.ce_weight, lo.miner, lo.margin)  # fmt: skip
        if self.tap is None and lo.recall_at:  # retrieval metrics of a plain classifier: its pooled features
            self.tap = FeatureTap(head_module(self.module))
        self.peak, spread = config_lib.lr_plan(cfg)
        self.model, self.optimizer = acc.prepare(self.module, build_optimizer(self.net, cfg.optim, self.peak, spread))
        self.forward = torch.compile(self.model, backend=m.compile_backend) if self.speed.compile else self.model

    def train(self) -> dict[str, Any]:
        """The loop: per epoch, the phase and image size, the updates, then validation, exports and a checkpoint."""
        acc, t, state = self.accelerator, self.cfg.train, self.state
        metrics: dict[str, float] = dict(state.metrics)  # a resumed finished run reports its last validation
        size, phase, status = None, None, "completed"
        while state.epoch < t.epochs:
            if phase != (new_phase := self.net.phases[index := phase_at(self.net.phases, state.epoch)]):
                phase = new_phase
                apply_phase(self.module, self.net.stages, phase, self.net.always_frozen, self.cfg.finetune.train_bn)
                self.say(f"ftl: epoch {state.epoch + 1}: stages {phase.first_trainable_stage}..{len(self.net.stages) - 1}"
                         f" of 0..{len(self.net.stages) - 1} train; {count_params(self.module)}")  # fmt: skip
                if self.schedule.peaks[index] is None:  # optim.lr=auto: this phase's LR, found as it starts
                    self.schedule.set_peak(index, self._auto_lr(index))
                if self._race_due(index):  # lr_find.race: the phase's LR chosen by training from its start
                    if (winner := self._race(index)) is None:
                        return self._interrupt(metrics)
                    self.schedule.set_peak(index, winner)
            if size != (new_size := image_size_at(self.cfg.data.image_size, state.epoch, t.epochs)):
                size = new_size
                for loader in (self.train_loader, self.val_loader):
                    loader.set_image_size(size)
            self.train_loader.set_epoch(state.epoch)
            self.train_loader.skip_batches(state.step_in_epoch)  # a resumed epoch starts where it stopped
            self.model.train()
            set_frozen_bn_eval(self.module)
            self.progress.start_epoch(state.epoch, state.step_in_epoch)
            # the epoch's running loss; a resumed epoch starts from the checkpoint's, so it logs what its twin logs
            loss_sum, loss_n = torch.tensor(state.loss_sum, device=acc.device), state.loss_n
            started = time.perf_counter()
            for batch in self.train_loader:
                loss = train_step(acc, self.model, batch, self.loss_fn, self.optimizer, self.schedule,
                                  t.clip_grad_norm, self.speed.channels_last, self.mixer, self.forward)  # fmt: skip
                state.step_in_epoch += 1
                state.global_step += 1
                if "first_update" not in self.spent:
                    self.spent["first_update"] = time.perf_counter() - started
                loss_sum += loss
                loss_n += 1
                if not acc.sync_gradients:
                    continue  # EMA, logs, checkpoints and stops only happen on update boundaries
                if self.ema is not None:
                    self.ema.update(self.module, step=self.schedule.updates)
                if state.global_step % t.log_every_steps == 0:
                    train_loss = (loss_sum / loss_n).item()  # a device sync: only every log_every_steps
                    lr = self.optimizer.param_groups[-1]["lr"]
                    self._log({"step": state.global_step, "epoch": state.epoch + 1, "train_loss": train_loss,
                               "lr": lr, "input_px": batch[0].shape[-1]})  # fmt: skip
                    self.progress.step(state.epoch, state.step_in_epoch, train_loss, lr)
                else:
                    self.progress.step(state.epoch, state.step_in_epoch)
                if t.checkpoint_every_steps and state.global_step % t.checkpoint_every_steps == 0:
                    state.loss_sum, state.loss_n = loss_sum.item(), loss_n
                    self._save()
                if self._stop_requested():
                    state.loss_sum, state.loss_n = loss_sum.item(), loss_n
                    return self._interrupt(metrics)
            epoch_time = time.perf_counter() - started
            self.spent["train"] += epoch_time
            train_loss = (loss_sum / max(loss_n, 1)).item()
            if t.precise_bn:  # BN statistics of the weights as they are now, from this epoch's own batches
                with self.timed("precise_bn"):
                    self.train_loader.set_epoch(state.epoch)
                    recompute_bn_stats(acc, self.module, self.train_loader, t.precise_bn, self._prepare_batch)
            with self.timed("validate"):
                metrics = self._validate()
            state.epoch += 1
            state.step_in_epoch, state.loss_sum, state.loss_n, state.metrics = 0, 0.0, 0, metrics
            is_best = metrics["val_top1"] > state.best_metric
            if is_best:
                state.best_metric, state.best_epoch = metrics["val_top1"], state.epoch
            self._log({"step": state.global_step, "epoch": state.epoch, "train_loss": train_loss, "image_size": size,
                       "epoch_time_s": round(epoch_time, 3), **metrics})  # fmt: skip
            if self.main:
                write_summary(self.run_dir)  # summary.csv, as timm's train.py writes it
            self.say(f"ftl: epoch {state.epoch}/{t.epochs} train_loss {train_loss:.4f} val_loss {metrics['val_loss']:.4f} "
                     f"top1 {metrics['val_top1']:.4f} top5 {metrics['val_top5']:.4f}"
                     + (f" ema_top1 {metrics['val_ema_top1']:.4f}" if self.ema is not None else "")
                     + f" ({epoch_time:.1f}s)")  # fmt: skip
            if self.main:
                with self.timed("export"):
                    self._export(is_best, size, metrics)
            if self._epoch_checkpoint_due():
                self._save()
            self.progress.end_epoch(state.epoch, state.best_metric, state.best_epoch, metrics)
            if self._prune(metrics) and state.epoch < t.epochs:
                self.say(f"ftl: early-stopped after epoch {state.epoch}")
                status = "pruned"
                break
        return self._finish(status, metrics)

    def cleanup(self) -> None:
        if getattr(self, "logger", None) is not None:
            self.logger.close()  # a run that failed must not keep metrics.jsonl open
        self.accelerator.end_training()
        release_accelerator()

    # ------------------------------------------------------------ pieces of the loop

    def _restore_moved_aside(self) -> None:
        """The checkpoint to resume was moved aside by a save that was killed before its replacement was in place
        (`.old_step_N`, core/checkpoint.py): renamed back, now that this process owns the run dir."""
        chosen = self.plan.checkpoint
        if chosen is None or not chosen.name.startswith(".old_"):
            return
        restored = chosen.with_name(chosen.name.removeprefix(".old_"))
        if self.main:
            self.guard()
            chosen.rename(restored)
        self.accelerator.wait_for_everyone()
        self.plan.checkpoint = restored

    def guard(self) -> None:
        """Before a durable write: LeaseLost if a newer process owns the run dir (main process; the others write
        nothing durable of their own, and follow the main one at the next collective)."""
        if self.main and self.lease is not None:
            self.lease.check()

    def _guard_all(self) -> None:
        """guard() agreed by every rank (before a checkpoint's rename: all ranks stop together)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return self.guard()
        from accelerate.utils import broadcast_object_list

        problem = None
        if self.main:
            try:
                self.guard()
            except LeaseLost as e:
                problem = str(e)
        problem = broadcast_object_list([problem])[0]
        if problem:
            raise LeaseLost(problem)

    def _log(self, record: dict[str, Any]) -> None:
        self.guard()
        self.logger.log(record)
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def _save(self) -> None:
        with self.timed("checkpoint"):
            ckpt.save_checkpoint(self.accelerator, self.run_dir, self.state, self.cfg.train.keep_checkpoints,
                                 self.module, self.optimizer, self.schedule, self.ema, guard=self._guard_all)  # fmt: skip
        self.last_save = time.perf_counter()

    def _epoch_checkpoint_due(self) -> bool:
        """The end-of-epoch checkpoint: always after the last epoch; before, only when the last checkpoint is at
        least train.checkpoint_min_interval_s old (0: every epoch). Skipping one never costs exactness: a resume
        starts from an earlier checkpoint (or the beginning) and replays the same steps; a stop always saves."""
        t = self.cfg.train
        if self.state.epoch >= t.epochs or not t.checkpoint_min_interval_s:
            return True
        due = time.perf_counter() - self.last_save >= t.checkpoint_min_interval_s
        from accelerate.utils import broadcast_object_list

        return bool(broadcast_object_list([due])[0]) if self.accelerator.num_processes > 1 else due

    def _stop_requested(self) -> bool:
        """should_stop(), agreed by every rank. One process: a plain Python check, no device sync. Several: a
        collective every STOP_POLL_UPDATES updates (so all ranks stop at the same step)."""
        if self.should_stop is None:
            return False
        acc = self.accelerator
        if acc.num_processes == 1:
            return bool(self.should_stop())
        if (self.state.global_step // acc.gradient_accumulation_steps) % STOP_POLL_UPDATES:
            return False
        flag = torch.tensor([float(self.should_stop())], device=acc.device)
        return bool(acc.reduce(flag, "max").item())

    def _interrupt(self, metrics: dict[str, float]) -> dict[str, Any]:
        self.progress.close()
        self._save()
        self.say(f"ftl: stopped at step {self.state.global_step} (epoch {self.state.epoch + 1}); checkpoint saved")
        self.logger.close()
        if self.wandb is not None:
            self.wandb.finish("interrupted")
        result = self._result("interrupted", metrics)
        if self.main:
            self.guard()
            write_json_atomic(self.run_dir / "result.json", result)
        return result

    def _result(self, status: str, metrics: dict[str, float]) -> dict[str, Any]:
        """What result.json says: how the run ended, where it stands, its metrics, and which lease (and job)
        wrote it - so a launcher never takes one attempt's result for another's."""
        owner = {"lease": self.lease.token, "job": self.lease.owner.get("job")} if self.lease is not None else {}
        return {"status": status, "run_dir": str(self.run_dir), **asdict(self.state), **metrics, **owner}

    def _validate(self) -> dict[str, float]:
        ks = tuple(self.cfg.loss.recall_at)
        metrics = evaluate(self.accelerator, self.forward, self.val_loader, self.speed.channels_last, self.tap, ks)
        if self.ema is not None:
            ema = evaluate(self.accelerator, self.ema.module, self.val_loader, self.speed.channels_last, self.ema_tap, ks)
            metrics.update({f"val_ema_{k[4:]}": v for k, v in ema.items()})
        return metrics

    def _export(self, is_best: bool, size: int, metrics: dict[str, float]) -> None:
        """export/last (and best, and ema) safetensors with model.json, after an epoch (main process)."""
        m = self.cfg.model
        meta = {"model": m.name, "classes": self.data.classes, "num_classes": len(self.data.classes), "head": m.head,
                "mean": self.mean, "std": self.std, "crop_pct": self.crop_pct, "resize": resize_mode(self.cfg.data.resize),
                "config": OmegaConf.to_container(self.cfg), "image_size": size,
                "epoch": self.state.epoch, "step": self.state.global_step}  # fmt: skip
        named = [("last", self.module)] + [("best", self.module)] * is_best
        named += [("ema", self.ema.module)] if self.ema is not None else []
        self.guard()
        for name, weights in named:
            ckpt.export_weights(weights, self.run_dir / "export", name, {**meta, "metrics": metrics})

    def _prune(self, metrics: dict[str, float]) -> bool:
        from accelerate.utils import broadcast_object_list

        prune = self.on_epoch_end(self.state.epoch, metrics) if self.on_epoch_end and self.main else False
        return bool(broadcast_object_list([prune])[0])

    def _finish(self, status: str, metrics: dict[str, float]) -> dict[str, Any]:
        self.logger.close()
        result = {**self._result(status, metrics), "weights_digest": weights_digest(self.module),
                  "time_s": self.time_spent()}  # fmt: skip
        if self.main:
            self.guard()
            write_json_atomic(self.run_dir / "result.json", result)
        if self.wandb is not None:
            self.guard()
            self._wandb_media()
            self.wandb.finish(status)
        return result

    # ------------------------------------------------------------ setup helpers

    def _phase_peaks(self) -> list[float | None]:
        """Each phase's peak LR. A fixed LR: the first phase's, later ones x finetune.unfrozen_lr_scale (unset: 1).
        optim.lr=auto: the first phase's from the LR finder now, later ones x the scale (unset:
        AUTO_UNFROZEN_SCALE); with lr_find.each_phase a later phase's from its own test when it starts (None until
        then), in the state it trains. A resumed run reuses the LRs it chose."""
        phases, first = self.net.phases, phase_at(self.net.phases, 0)
        scale = self.cfg.finetune.unfrozen_lr_scale  # later phases: the first's x scale
        if scale is None:
            scale = 1.0 if self.peak is not None else AUTO_UNFROZEN_SCALE
        if self.peak is not None or not self.cfg.lr_find.each_phase:
            peak = self.peak if self.peak is not None else self._auto_lr(first)
            peaks = [peak * (1.0 if i <= first else scale) for i in range(len(phases))]
        else:
            peaks = [self._chosen_lr(i) if self.plan.resuming else None for i in range(len(phases))]
            peaks[first] = peaks[first] or self._auto_lr(first)
        if self.plan.resuming:  # a phase that raced trains with its winner (the checkpoint replays its schedule)
            peaks = [self._race_winner(i) or p for i, p in enumerate(peaks)]
        return peaks

    def _race_due(self, index: int) -> bool:
        """A race as phase `index` starts: lr_find.race set, the phase longer than race_epochs, not raced before
        (a resumed run reuses its winner), and the run at the phase's first update."""
        lf, phase = self.cfg.lr_find, self.net.phases[index]
        return (bool(lf.race) and phase.epochs > lf.race_epochs and self._race_winner(index) is None
                and (self.state.epoch, self.state.step_in_epoch) == (phase.start_epoch, 0))  # fmt: skip

    def _race_winner(self, index: int) -> float | None:
        path = self.run_dir / f"lr_race_phase{index + 1}.json"
        return float(json.loads(path.read_text())["chosen"]) if path.is_file() else None

    def _race(self, index: int) -> float | None:
        """lr_find.race: phase `index`'s peak LR chosen by training. From the phase's start, each candidate (the
        phase's peak x each factor) trains lr_find.race_epochs epochs of the phase's own schedule (and precise BN),
        then is validated; the lowest val_loss wins. Weights, optimizer, schedule, RNG and the accelerator's step
        come back as they were after each, and the phase trains with the winner from its start (the race's steps
        are not kept). Measured (docs/benchmarks.md): two epochs into the unfrozen phase, validation ranked two LRs
        as their final top-1 did in 9 of 9 pairs; after one the higher LR led in every pair. lr_race_phaseN.json
        records each candidate's score. None when a stop was requested (the state is back at the phase's start)."""
        acc, t, lf, state = self.accelerator, self.cfg.train, self.cfg.lr_find, self.state
        peak = self.schedule.peaks[index]
        saved = (copy.deepcopy(self.module.state_dict()), copy.deepcopy(self.optimizer.state_dict()),
                 self.schedule.state_dict(), ckpt.rng_state(), acc.step)  # fmt: skip

        def restore(lr: float) -> None:
            self.module.load_state_dict(saved[0])
            self.optimizer.load_state_dict(copy.deepcopy(saved[1]))  # its tensors would otherwise alias the copy
            self.schedule.peaks[index] = lr
            self.schedule.load_state_dict(saved[2])
            ckpt.set_rng_state(saved[3])
            acc.step = saved[4]

        scores: dict[float, float] = {}
        with self.timed("lr_race"):
            for factor in lf.race:
                restore(lr := peak * factor)
                for epoch in range(state.epoch, state.epoch + lf.race_epochs):
                    self._set_image_size(epoch)
                    self.train_loader.set_epoch(epoch)
                    self.model.train()
                    set_frozen_bn_eval(self.module)
                    for batch in self.train_loader:
                        train_step(acc, self.model, batch, self.loss_fn, self.optimizer, self.schedule, t.clip_grad_norm,
                                   self.speed.channels_last, self.mixer, self.forward)  # fmt: skip
                        if self._stop_requested():
                            restore(peak)
                            self._set_image_size(state.epoch)
                            return None
                    if t.precise_bn:
                        self.train_loader.set_epoch(epoch)
                        recompute_bn_stats(acc, self.module, self.train_loader, t.precise_bn, self._prepare_batch)
                scores[lr] = evaluate(acc, self.forward, self.val_loader, self.speed.channels_last)["val_loss"]
                self.say(f"ftl: lr race, phase {index + 1}: lr {lr:.2e} -> val_loss {scores[lr]:.4f} after "
                         f"{lf.race_epochs} epochs")  # fmt: skip
            chosen = min(scores, key=scores.__getitem__)
            restore(chosen)
            self._set_image_size(state.epoch)
        if self.main:
            self.guard()
            write_json_atomic(self.run_dir / f"lr_race_phase{index + 1}.json",
                              {"phase": index + 1, "epochs": lf.race_epochs, "chosen": chosen,
                               "candidates": [{"lr": lr, "val_loss": v} for lr, v in scores.items()]})  # fmt: skip
        self.say(f"ftl: lr race, phase {index + 1}: {chosen:.2e} wins")
        return chosen

    def _set_image_size(self, epoch: int) -> None:
        size = image_size_at(self.cfg.data.image_size, epoch, self.cfg.train.epochs)
        for loader in (self.train_loader, self.val_loader):
            loader.set_image_size(size)

    def _lr_find_stem(self, phase: int) -> str:
        return "lr_find" if phase == phase_at(self.net.phases, 0) else f"lr_find_phase{phase + 1}"

    def _chosen_lr(self, phase: int) -> float | None:
        path = self.run_dir / f"{self._lr_find_stem(phase)}.json"
        return float(json.loads(path.read_text())["chosen"]) if path.is_file() else None

    def _auto_lr(self, phase: int) -> float:
        """optim.lr: auto - the LR finder (`range_test`) in the state `phase` trains, with the run's loss and
        gradient accumulation; lr_find[_phaseN].{json,png} in the run dir. A resumed run reuses the LR it chose."""
        lf, run_dir, stem = self.cfg.lr_find, self.run_dir, self._lr_find_stem(phase)
        if self.plan.resuming and (chosen := self._chosen_lr(phase)) is not None:
            return chosen
        with self.timed("lr_find"):
            result = self.range_test(phase)
        # a later phase whose loss only rises (a model that already fits its data) keeps the LR of the phase before
        first = phase_at(self.net.phases, 0)  # its test runs before the schedule exists
        before = self.schedule.peaks[first:phase] if phase > first else []
        kept = next((p for p in reversed(before) if p is not None), None)
        chosen = lr_finder.choose(result, lf.suggestion, fallback=kept)
        how = lf.suggestion if lf.suggestion in result.suggestions else "no suggestion (loss rose from the start): kept"
        if self.main:
            self.guard()
            run_dir.mkdir(parents=True, exist_ok=True)
            stages = f"{self.net.phases[phase].first_trainable_stage}..{len(self.net.stages) - 1}"
            title = f"LR range test, phase {phase + 1} (stages {stages} train)"
            lr_finder.save(result, run_dir, mark=lf.suggestion, stem=stem, title=title)
            data = json.loads((run_dir / f"{stem}.json").read_text())
            write_json_atomic(run_dir / f"{stem}.json", {**data, "phase": phase + 1, "chosen": chosen, "how": how})
        self.say(f"ftl: optim.lr=auto -> phase {phase + 1}: {how} {chosen:.2e} (plot: {run_dir / stem}.png)")
        return chosen

    def range_test(self, phase: int | None = None) -> lr_finder.LRFindResult:
        """The LR range test on what build() made, in the state `phase` trains (default: the first; its stages
        frozen): one update per point over train.grad_accum_steps micro-batches, and one stream of batches for
        the whole test (torch path: one DataLoader over seeded passes through the data; other loaders: their
        passes in turn). Weights, optimizer and RNG come back as they were; the phase's state stays applied."""
        cfg, acc = self.cfg, self.accelerator
        lf, d, t = cfg.lr_find, cfg.data, cfg.train
        phase = phase_at(self.net.phases, 0) if phase is None else phase
        apply_phase(self.module, self.net.stages, self.net.phases[phase], self.net.always_frozen, cfg.finetune.train_bn)
        steps, size, start_lr = lr_finder.range_test_shape(lf.num_steps, lf.batch_size, lf.start_lr,
                                                     self.updates_per_epoch * t.epochs, d.batch_size)  # fmt: skip
        needed = steps * t.grad_accum_steps
        if self.data.backend == "torch":
            from core.data.datasets import range_test_loader

            batches = iter(range_test_loader(self.data.opened.train, size, needed, t.seed, d.num_workers,
                                             acc.process_index, acc.num_processes))  # fmt: skip
        else:  # the run's own loader: the first `size` images of each batch
            batches = ((x[:size], y[:size]) for x, y in passes(self.train_loader, needed))
        try:
            return lr_finder.lr_range_test(acc, self.model, self.optimizer, batches, self.loss_fn, start_lr,
                                           lf.end_lr, steps, forward=self.forward, accum_steps=t.grad_accum_steps,
                                           prepare=self._prepare_batch)  # fmt: skip
        finally:
            self.train_loader.set_epoch(0)

    def _prepare_batch(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch from a loader that may not place it (the range test's): on the device, channels_last if set."""
        device = self.accelerator.device
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        return (images.contiguous(memory_format=torch.channels_last) if self.speed.channels_last else images), targets

    def _announce(self) -> None:
        acc, state, t, plan = self.accelerator, self.state, self.cfg.train, self.plan
        self.say(f"ftl: model {self.cfg.model.name} from {self.net.source}")
        self.say(f"ftl: data {self.data.sizes[0]} train / {self.data.sizes[1]} val images, {len(self.data.classes)} "
                 f"classes, {self.data.backend} loader; {acc.num_processes} process(es) on {acc.device.type}, "
                 f"precision {self.precision} ({self.precision_note}); {self.speed.note}")  # fmt: skip
        lo = self.cfg.loss
        if lo.name != "cross_entropy" and not lo.ce_weight:  # measured: arcface alone validated at top-1 0.09
            self.say(f"ftl: note: loss.name={lo.name} with loss.ce_weight=0 trains no classifier: val_top1 (and the "
                     "best checkpoint it picks) says nothing; read val_recall@k, or set loss.ce_weight > 0")  # fmt: skip
        names = {id(p): n for n, p in self.module.named_parameters()}
        self.say("ftl: parameter groups\n" + param_group_table(self.optimizer, names))
        resumed = f" (resuming {plan.checkpoint.name}, epoch {state.epoch + 1})" if plan.checkpoint else ""
        if state.epoch >= t.epochs:
            resumed = f" (finished at {plan.checkpoint.name}: its result as it ended)"
        self.say(f"ftl: run dir {self.run_dir}" + (resumed or " (no complete checkpoint: from the beginning)" * plan.resuming))

    @torch.no_grad()
    def _wandb_media(self) -> None:
        """The LR-finder plot, the augmentation preview, a table of validation samples with predictions, and
        (optionally) the best weights."""
        from core.preview import augment_grid

        cfg, run, run_dir, step = self.cfg, self.wandb, self.run_dir, self.state.global_step
        for plot in sorted(run_dir.glob("lr_find*.png")):
            run.log_image(plot.stem, plot, step)
        run.log_image("augment_preview", augment_grid(cfg, run_dir / "augment_preview.png", samples=4, repeats=6), step)
        n = min(cfg.tracking.log_samples, self.data.sizes[1])
        if n:
            self.module.eval()
            images, labels = first_samples(self.val_loader, n)
            probs = self.module(images.to(self.accelerator.device)).float().softmax(-1).cpu()
            mean, std = torch.tensor(self.mean).view(3, 1, 1), torch.tensor(self.std).view(3, 1, 1)
            classes = self.data.classes
            rows = [[run.wandb.Image((img * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()),
                     classes[label], classes[int(p.argmax())], float(p.max())]
                    for img, label, p in zip(images, labels, probs)]  # fmt: skip
            run.log_table("val_samples", ["image", "label", "prediction", "confidence"], rows, step)
        if cfg.tracking.log_model and (run_dir / "export" / "best.safetensors").is_file():
            run.log_artifact(run_dir / "export" / "best.safetensors", f"{run_dir.name}-best")


def first_samples(loader, n: int) -> tuple[torch.Tensor, list[int]]:
    """The first n validation samples as the model sees them: the loader's own when it has them, else from its
    first batches."""
    import itertools

    if hasattr(loader, "first_samples"):
        return loader.first_samples(n)
    batches = list(itertools.islice(loader, math.ceil(n / loader.batch_size)))
    return torch.cat([x.cpu() for x, _ in batches])[:n], torch.cat([y.cpu() for _, y in batches])[:n].tolist()


def find_lr(cfg: DictConfig, out_dir: str | Path) -> lr_finder.LRFindResult:
    """`ftl lr-find`: the LR range test exactly as `optim.lr: auto` runs it (same build, same stream of batches,
    same state); writes lr_find.{json,png} to out_dir."""
    config_lib.validate(cfg)
    run = FineTune(cfg)
    try:
        run.build()
        result = run.range_test()
        if run.main:
            lr_finder.save(result, Path(out_dir), mark=cfg.lr_find.suggestion)
        return result
    finally:
        run.cleanup()


def passes(loader, n: int):
    """n batches from a loader's successive passes (epochs 0, 1, ... of its own shuffle and augmentation)."""
    epoch, left = 0, n
    while left > 0:
        loader.set_epoch(epoch)
        for batch in loader:
            yield batch
            left -= 1
            if left == 0:
                return
        epoch += 1


def check_data(cfg: DictConfig, data: DataSource) -> None:
    """Rules that need the opened data: data.resize on the loader `auto` picked, a metric loss's batches."""
    from core.checks import batch_problem

    d = cfg.data
    if data.backend != "torch" and d.resize != "auto" and resize_mode(d.resize) != "crop":
        raise FtlError(f"data.resize={d.resize} runs only on the torch path (data.loader={d.loader} chose {data.backend}, "
                       "which crops as data.resize=crop): set data.loader=torch or data.resize=crop")  # fmt: skip
    problem = batch_problem(cfg.loss.name, d.batch_size, d.samples_per_class, len(data.classes))
    if problem:
        raise FtlError(problem)
    if d.samples_per_class and d.batch_size // d.samples_per_class > len(data.classes):
        raise FtlError(f"data.samples_per_class={d.samples_per_class}: a batch of {d.batch_size} needs "
                       f"{d.batch_size // d.samples_per_class} classes, the data has {len(data.classes)}; raise "
                       "data.samples_per_class or lower data.batch_size")  # fmt: skip


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of this process's weights: DDP ranks that trained the same model print the same one."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()



