"""Checkpoints (Accelerate `save_state`, written to a temporary dir and renamed) and safetensors exports.

Layout of a run dir:
    config.yaml               the resolved config
    metrics.jsonl             step and epoch records
    checkpoints/step_00000123/  accelerate state (model, optimizer, schedule, scaler, RNG of every rank)
                                + trainer.json (epoch, step within epoch, global step, best metric)
    checkpoints/latest.json   which checkpoint is the newest complete one
    export/{best,last}.safetensors + model.json   weights usable as `model.pretrained` of a later run
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import FtlError
from core.fileio import write_atomic, write_json_atomic


@dataclass
class TrainerState:
    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # loader batches already consumed in this epoch
    global_step: int = 0  # loader batches consumed in total
    best_metric: float = float("-inf")
    best_epoch: int = -1


def save_checkpoint(accelerator, run_dir: Path, state: TrainerState, keep: int) -> Path:
    """Save the full training state; every rank takes part. Returns the checkpoint dir."""
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step_{state.global_step:08d}"
    tmp = ckpt_root / f".tmp_step_{state.global_step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / "trainer.json", asdict(state))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        write_json_atomic(ckpt_root / "latest.json", {"checkpoint": final.name, **asdict(state)})
        old = sorted(p for p in ckpt_root.glob("step_*") if p != final)
        for path in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete checkpoint of a run dir, or an FtlError saying why there is none."""
    run_dir = Path(run_dir).expanduser()
    pointer = run_dir / "checkpoints" / "latest.json"
    if not run_dir.is_dir():
        raise FtlError(f"resume={run_dir}: no such run dir")
    if not pointer.is_file():
        raise FtlError(f"resume={run_dir}: no checkpoint in {run_dir}/checkpoints (the run stopped before its first)")
    ckpt = run_dir / "checkpoints" / json.loads(pointer.read_text())["checkpoint"]
    if not (ckpt / "trainer.json").is_file():
        raise FtlError(f"resume={run_dir}: checkpoint {ckpt} is incomplete; remove it and point latest.json earlier")
    return ckpt


def load_trainer_state(ckpt: Path) -> TrainerState:
    return TrainerState(**json.loads((ckpt / "trainer.json").read_text()))


def export_weights(model, export_dir: Path, name: str, meta: dict[str, Any]) -> None:
    """Write export_dir/{name}.safetensors and update export_dir/model.json (main process only)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(export_dir / f"{name}.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    sidecar = export_dir / "model.json"
    current = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    metrics = {**current.get("metrics", {}), name: meta.pop("metrics", {})}
    write_json_atomic(sidecar, {**current, **meta, "metrics": metrics})
