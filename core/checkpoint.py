"""Checkpoints: the full training state in files that hold only tensors and plain data, each one checksummed.

    checkpoints/step_00000123/
        model.safetensors    the model's weights (unwrapped: no `module.` / `_orig_mod.` prefixes)
        ema.safetensors      the EMA weights, when train.ema
        optimizer.pt         optimizer state (tensors + numbers), read back with torch.load(weights_only=True)
        extra.pt             schedule and grad-scaler state (plain data), same
        rng_<rank>.pt        every rank's RNG states (torch, CUDA, Python, NumPy) as tensors and numbers
        trainer.json         written last: epoch / step counters, the running loss, the last metrics, and the size
                             and blake2b of every file above. A checkpoint without it is half-written.

The checkpoint is assembled in `.tmp_step_*`, fsynced and renamed into place (a checkpoint it replaces is moved
aside first, deleted after), so a kill leaves either the whole checkpoint or an ignorable temporary dir. Nothing
is unpickled on resume: a run dir someone else can write cannot run code.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import FtlError
from core.faults import fault_point
from core.fileio import write_atomic, write_json_atomic

CHECKPOINT_FORMAT = 2


@dataclass
class TrainerState:
    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # loader batches already consumed in this epoch
    global_step: int = 0  # loader batches consumed in total
    best_metric: float = float("-inf")
    best_epoch: int = -1
    loss_sum: float = 0.0  # the epoch's training loss so far (so a resumed epoch logs what the twin logs)
    loss_n: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # the last validation (a resumed finished run reports it)


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors and numbers (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    state = {"torch": torch.get_rng_state(), "python": (version, torch.tensor(mt, dtype=torch.int64), gauss),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached)}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))


def save_checkpoint(accelerator, run_dir: Path, state: TrainerState, keep: int, model, optimizer, schedule,
                    ema=None, guard: Callable[[], None] = lambda: None) -> Path:  # fmt: skip
    """Save the full training state; every rank takes part (each writes its RNG). Returns the checkpoint dir.

    The files are written and fsynced in `.tmp_step_N`, guard() is called (the run dir's lease: a fenced process
    stops here, having written nothing visible), then the dir is renamed into place - a checkpoint of the same step
    is moved aside first and deleted only after - and only then are old checkpoints pruned. A full disk is one line
    naming the path and the free space; the checkpoints before stay intact."""
    root = run_dir / "checkpoints"
    final, tmp = root / f"step_{state.global_step:08d}", root / f".tmp_step_{state.global_step:08d}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        torch.save(rng_state(), tmp / f"rng_{accelerator.process_index}.pt")
        if accelerator.is_main_process:
            _save_tensors(model.state_dict(), tmp / "model.safetensors")
            if ema is not None:
                _save_tensors(ema.module.state_dict(), tmp / "ema.safetensors")
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            scaler = getattr(accelerator, "scaler", None)
            torch.save({"schedule": schedule.state_dict(), "scaler": scaler.state_dict() if scaler else None},
                       tmp / "extra.pt")  # fmt: skip
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            fault_point("checkpoint-files")
            files = {p.name: {"bytes": p.stat().st_size, "blake2b": _digest(p)} for p in sorted(tmp.iterdir())}
            write_json_atomic(tmp / "trainer.json", {"format": CHECKPOINT_FORMAT, "world_size": accelerator.num_processes,
                                                     "state": asdict(state), "files": files})  # fmt: skip
            _sync(tmp)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError of its stream
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(root, e):
            kept = sorted(p.name for p in root.glob("step_*"))
            raise FtlError(f"no space left on the device of {root} ({shutil.disk_usage(root).free / 2**20:.0f} MiB "
                           f"free) while saving step {state.global_step}: the checkpoints before it are intact "
                           f"({', '.join(kept) or 'none yet'}); free some space and resume") from None  # fmt: skip
        raise
    guard()
    if accelerator.is_main_process:
        _replace_dir(tmp, final)
        for newer in (p for p in root.glob("step_*") if p.name > final.name):
            newer.rename(newer.with_name(f"set_aside_{newer.name}"))  # a fenced writer's, after we resumed
        old = sorted(p for p in root.glob("step_*") if p != final)
        for path in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def disk_full(folder: Path, error: BaseException) -> bool:
    """Whether a failed write failed for lack of space: ENOSPC / EDQUOT, or (torch's writer hides the errno) an
    error while less than 64 MiB are left."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        return shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename tmp onto final; an existing final (the same step saved again) is moved aside first and deleted
    only once the new one is in place, so a kill at any instant leaves one complete checkpoint of that step."""
    aside = final.with_name(f".old_{final.name}")
    shutil.rmtree(aside, ignore_errors=True)
    if final.exists():
        final.rename(aside)
        fault_point("checkpoint-moved-aside")
    tmp.rename(final)
    _sync(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _sync(folder: Path) -> None:
    """fsync a directory: the files (and renames) in it are on disk, not only in the page cache."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a complete checkpoint cannot be trusted (a file missing, truncated or changed), or None."""
    try:
        meta = json.loads((ckpt / "trainer.json").read_text())
        files = meta["files"]
        TrainerState(**meta["state"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"trainer.json is unreadable ({type(e).__name__})"
    if meta.get("format") != CHECKPOINT_FORMAT:
        return f"it is in format {meta.get('format', 1)}, this ftl reads {CHECKPOINT_FORMAT} (an older ftl wrote it)"
    for name, info in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != info["bytes"]:
            return f"{name} is truncated or grown ({path.stat().st_size} bytes, {info['bytes']} written)"
        if _digest(path) != info["blake2b"]:
            return f"{name} does not match its checksum"
    return None


def read_trainer_state(ckpt: Path) -> TrainerState:
    return TrainerState(**json.loads((ckpt / "trainer.json").read_text())["state"])


def load_checkpoint(accelerator, ckpt: Path, model, optimizer, schedule, ema=None) -> TrainerState:
    """Restore what save_checkpoint wrote (already verified by the caller): weights, optimizer, schedule, scaler,
    this rank's RNG. Only tensors and plain data are read."""
    from safetensors.torch import load_file

    meta = json.loads((ckpt / "trainer.json").read_text())
    model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
    if ema is not None and (ckpt / "ema.safetensors").is_file():
        ema.module.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    extra = torch.load(ckpt / "extra.pt", weights_only=True)
    schedule.load_state_dict(extra["schedule"])
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and extra["scaler"] is not None:
        scaler.load_state_dict(extra["scaler"])
    rank_file = ckpt / f"rng_{accelerator.process_index}.pt"
    if meta["world_size"] == accelerator.num_processes and rank_file.is_file():
        set_rng_state(torch.load(rank_file, weights_only=True))
    else:
        accelerator.print(f"ftl: note: checkpoint written by {meta['world_size']} process(es), resumed by "
                          f"{accelerator.num_processes}: training continues, but not bit-exactly")  # fmt: skip
    return TrainerState(**meta["state"])


def export_weights(model, export_dir: Path, name: str, meta: dict[str, Any]) -> None:
    """Write export_dir/{name}.safetensors and update export_dir/model.json (main process only)."""
    _save_tensors(model.state_dict(), export_dir / f"{name}.safetensors")
    sidecar = export_dir / "model.json"
    current = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    metrics = {**current.get("metrics", {}), name: meta.pop("metrics", {})}
    write_json_atomic(sidecar, {**current, **meta, "metrics": metrics})
