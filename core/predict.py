"""`ftl eval`: a run's exported model on an ImageFolder - loss, top-1, top-5 and each image's prediction.

The export (RUN_DIR/export/{best,last,ema}.safetensors with model.json, core/checkpoint.export_weights) carries
what the run validated with: the architecture and head, the class names, mean/std, image size, crop_pct and
resize mode. The images are transformed exactly as the run's validation did; their classes are matched to the
model's by name (a folder may hold fewer classes than the model knows, never others).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from core.errors import FtlError
from core.fileio import write_text_atomic


def find_export(run_dir: str | Path, weights: str) -> tuple[Path, dict[str, Any]]:
    """(weights file, model.json) of a run dir, its export dir, or an exported .safetensors."""
    path = Path(run_dir).expanduser()
    folder = path.parent if path.suffix == ".safetensors" else path / "export" if (path / "export").is_dir() else path
    file = path if path.suffix == ".safetensors" else folder / f"{weights}.safetensors"
    sidecar = folder / "model.json"
    if not file.is_file() or not sidecar.is_file():
        have = sorted(p.stem for p in folder.glob("*.safetensors")) if folder.is_dir() else []
        raise FtlError(f"{path}: no exported {file.name} with model.json (" + (f"it has: {', '.join(have)}; pick one "
                       "with --weights" if have else "not a finished ftl run dir or its export/") + ")")  # fmt: skip
    try:
        meta = json.loads(sidecar.read_text())
        if not isinstance(meta.get("classes"), list) or not meta.get("model"):  # what every export has
            raise ValueError
    except (ValueError, AttributeError):
        raise FtlError(f"{sidecar} is damaged (not the model.json ftl writes): export the run again") from None
    return file, meta


def load_model(file: Path, meta: dict[str, Any]) -> torch.nn.Module:
    """The exported architecture and head with its weights, every tensor in place (strict)."""
    from core.models import build_model
    from core.zoo import read_state_dict

    m = (meta.get("config") or {}).get("model", {})
    model, _ = build_model(meta["model"], len(meta["classes"]), None, m.get("head", meta.get("head", "linear")),
                           m.get("head_hidden", 512), m.get("head_dropout", 0.0), 0.0, m.get("act_layer"),
                           m.get("embedding_dim"))  # fmt: skip
    try:
        model.load_state_dict(read_state_dict(file))
    except RuntimeError as e:
        raise FtlError(f"{file} does not fit {meta['model']} with its head: {str(e).splitlines()[0]}") from None
    return model.eval()


def evaluate_export(run_dir: str | Path, data_dir: str | Path, weights: str = "best", batch_size: int = 64,
                    out: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """Metrics of the export on data_dir ({loss, top1, top5, n, weights}); with `out`, a CSV of every image's
    true class, predicted class and its probability."""
    from core.data.datasets import scan_image_folder
    from core.data.transforms import eval_transform, resize_mode
    from core.models import data_config

    file, meta = find_export(run_dir, weights)
    model = load_model(file, meta)
    data = (meta.get("config") or {}).get("data", {})
    crop_pct = meta.get("crop_pct") or data_config(model, None, None, data.get("crop_pct"))["crop_pct"]
    transform = eval_transform(int(meta["image_size"]), meta["mean"], meta["std"], crop_pct,
                               meta.get("resize") or resize_mode(data.get("resize", "crop")))  # fmt: skip
    folder = scan_image_folder(data_dir, "DATA")
    classes = list(meta["classes"])
    unknown = [c for c in folder.classes if c not in classes]
    if unknown:
        raise FtlError(f"DATA={data_dir} has classes the model was not trained on: {', '.join(unknown[:5])} (it "
                       f"knows {', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})")  # fmt: skip
    to_model = torch.tensor([classes.index(c) for c in folder.classes])
    folder.transform = transform  # decoded and transformed in DataLoader workers, in the folder's order
    loader = DataLoader(folder, batch_size=batch_size, num_workers=min(4, os.cpu_count() or 1))
    predicted, sums = [], torch.zeros(4)
    with torch.inference_mode():
        for images, labels in loader:
            targets = to_model[labels]
            logits = model(images).float()
            top = logits.topk(min(5, logits.shape[1]), 1).indices
            sums += torch.tensor([F.cross_entropy(logits, targets, reduction="sum").item(),
                                  top[:, 0].eq(targets).sum().item(), top.eq(targets[:, None]).any(1).sum().item(),
                                  len(targets)])  # fmt: skip
            predicted += zip(targets.tolist(), top[:, 0].tolist(), logits.softmax(1).max(1).values.tolist())
    loss, top1, top5, n = sums.tolist()
    result = {"loss": loss / max(n, 1), "top1": top1 / max(n, 1), "top5": top5 / max(n, 1), "n": int(n),
              "weights": str(file), "classes": len(folder.classes)}  # fmt: skip
    if out is not None:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", "label", "predicted", "probability"])
        writer.writerows((path, classes[t], classes[p], f"{prob:.4f}")
                         for (path, _), (t, p, prob) in zip(folder.samples, predicted))  # fmt: skip
        write_text_atomic(Path(out), text.getvalue())
    return result
