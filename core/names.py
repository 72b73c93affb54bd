"""The names a config may use, from timm's own registries: model architectures, pretrained tags, optimizers and
activations - without importing torch when it can be helped.

Importing timm (and so torch) takes seconds, which a sweep's `--dry-run` should not pay for a name check; the
registries are read once per installed timm version and cached in ~/.cache/ftl/timm-names-<version>.json.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from pathlib import Path

from core.fileio import write_json_atomic

OPTIMIZER_ALIASES = {"ranger": "lookahead_radam"}  # Ranger = RAdam + Lookahead


def _cache_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ftl"
    return root / f"timm-names-{importlib.metadata.version('timm')}.json"


@functools.cache
def registries() -> dict[str, list[str]]:
    """{'models': [...], 'pretrained': [...], 'optimizers': [...], 'activations': [...]} of the installed timm."""
    path = _cache_path()
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    import timm
    import timm.optim
    from timm.layers.create_act import _ACT_LAYER_DEFAULT

    data = {"models": sorted(timm.list_models()), "pretrained": sorted(timm.list_pretrained()),
            "optimizers": sorted(timm.optim.list_optimizers()), "activations": sorted(_ACT_LAYER_DEFAULT)}  # fmt: skip
    try:
        write_json_atomic(path, data)
    except OSError:
        pass  # a read-only home: check from memory this time
    return data


@functools.cache
def _sets() -> dict[str, frozenset[str]]:
    return {k: frozenset(v) for k, v in registries().items()}


def is_model(name: str) -> bool:
    return name.split(".")[0] in _sets()["models"]


def is_pretrained_tag(tag: str) -> bool:
    return tag in _sets()["pretrained"]


def optimizer_base(name: str) -> str:
    """'Ranger' -> 'radam', 'lookahead_adamw' -> 'adamw': the timm optimizer a name builds on."""
    return OPTIMIZER_ALIASES.get(name.lower(), name.lower()).removeprefix("lookahead_")


def is_optimizer(name: str) -> bool:
    return optimizer_base(name) in _sets()["optimizers"]


def is_activation(name: str) -> bool:
    return name in _sets()["activations"]
