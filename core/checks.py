"""Every rule a config must satisfy, on plain data: types (as OmegaConf reads them), required keys, choices,
ranges, rules between keys, and names (timm models, optimizers, activations, pretrained weights, data paths).

Plain dicts, not OmegaConf objects, so a sweep checks each of 10,000 trials' full configs in about a second
(`launcher/sweep.py`); `core.config.validate` runs the same rules on a single config.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any

from omegaconf import nodes
from omegaconf.errors import OmegaConfBaseException

# Keys whose value must be one of a few words.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.head": ("linear", "mlp"),
    "data.loader": ("torch", "ffcv", "gpu", "auto"),
    "data.ffcv_decoder": ("ftl", "stock"),
    "data.ffcv_order": ("random", "quasi-random"),
    "schedule.name": ("onecycle", "cosine", "constant"),
    "train.precision": ("auto", "no", "bf16", "fp16"),
    "finetune.strategy": ("full", "linear-probe", "freeze-then-unfreeze", "gradual"),
    "lr_find.suggestion": ("valley", "minimum", "steepest"),
    "augment.erasing_mode": ("random", "const"),
    "data.resize": ("auto", "crop", "squash", "pad", "center", "border"),  # center, border: timm's crop, pad
    "loss.name": ("cross_entropy", "triplet", "contrastive", "multi_similarity", "circle", "supcon", "ntxent",
                  "arcface", "cosface", "proxy_anchor"),  # core/losses.py LOSSES (a test keeps them equal)
    "loss.miner": ("none", "batch_hard", "semihard", "hard", "multi_similarity", "pair_margin"),
}
TUPLE_LOSSES = ("triplet", "contrastive", "multi_similarity", "circle", "supcon", "ntxent")  # pairs inside a batch
# Keys whose value must lie in a closed range [lo, hi].
RANGES: dict[str, tuple[float, float]] = {
    "data.val_split": (0.0, 0.9),
    "data.crop_pct": (0.1, 1.0),
    "augment.hflip": (0.0, 1.0),
    "augment.vflip": (0.0, 1.0),
    "augment.label_smoothing": (0.0, 0.99),
    "augment.grayscale": (0.0, 1.0),
    "augment.random_erasing": (0.0, 1.0),
    "augment.mix_prob": (0.0, 1.0),
    "augment.switch_prob": (0.0, 1.0),
    "augment.hue": (0.0, 0.5),
    "augment.translate": (0.0, 1.0),
    "train.ema_decay": (0.0, 1.0),
    "schedule.pct_start": (0.0, 1.0),
    "model.head_dropout": (0.0, 0.99),
    "model.drop_path_rate": (0.0, 0.99),
    "optim.momentum": (0.0, 1.0),
}
POSITIVE = ("data.batch_size", "train.epochs", "train.grad_accum_steps", "lr_find.num_steps", "finetune.unfreeze_every",
            "train.keep_checkpoints", "train.log_every_steps", "model.head_hidden", "data.eval_batch_size",
            "data.num_classes", "train.clip_grad_norm", "lr_find.start_lr", "lr_find.batch_size", "lr_find.end_lr",
            "lr_find.race_epochs", "model.embedding_dim", "finetune.unfrozen_lr_scale")  # fmt: skip
NON_NEGATIVE = ("train.seed", "data.num_workers", "finetune.freeze_epochs", "schedule.warmup_epochs", "schedule.min_lr",
                "optim.weight_decay", "augment.rotate", "augment.shear", "augment.color_jitter", "augment.brightness",
                "augment.contrast", "augment.saturation", "augment.channel_shift", "augment.mixup", "augment.cutmix",
                "train.checkpoint_every_steps", "tracking.log_samples", "data.samples_per_class", "loss.ce_weight",
                "train.checkpoint_min_interval_s")  # fmt: skip
TORCH_ONLY_AUGMENT = ("policy", "hue")  # the FFCV path's device augmentation has no policies and no hue shift
METRICS = ("val_top1", "val_top5", "val_loss", "train_loss")  # what every run logs per epoch


def get(cfg: dict[str, Any], key: str) -> Any:
    section, _, leaf = key.partition(".")
    return cfg.get(section, {}).get(leaf) if leaf else cfg.get(section)


# ---------------------------------------------------------------- types


@functools.cache
def schema_types() -> dict[str, Any]:
    """Dotted key -> its annotated type, from the dataclass schema in core/config.py."""
    from core.config import Config

    out: dict[str, Any] = {}
    for f in dataclasses.fields(Config):
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        if dataclasses.is_dataclass(sub):
            for k, t in typing.get_type_hints(type(sub)).items():
                out[f"{f.name}.{k}"] = t
        else:
            out[f.name] = typing.get_type_hints(Config)[f.name]
    return out


_NODES = {int: nodes.IntegerNode, float: nodes.FloatNode, bool: nodes.BooleanNode, str: nodes.StringNode}


def coerce(key: str, value: Any) -> Any:
    """The value as the schema's type for key (OmegaConf's conversions: 1 -> 1.0, 'true' -> True); ValueError."""
    return _coerce(schema_types()[key], value)


def _coerce(kind: Any, value: Any) -> Any:
    args = typing.get_args(kind)
    optional = type(None) in args
    if optional:
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
    if kind is Any:
        return value
    if typing.get_origin(kind) is list:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        return [_coerce(typing.get_args(kind)[0], v) for v in value]
    try:
        return _NODES[kind](value=value, is_optional=optional)._value()
    except OmegaConfBaseException as e:  # its message template, filled as OmegaConf's own formatter would
        text = str(e).splitlines()[0].replace("$VALUE_TYPE", type(value).__name__).replace("$VALUE", str(value))
        raise ValueError(text) from None


# ---------------------------------------------------------------- values and rules between keys


def problems(cfg: dict[str, Any]) -> list[str]:
    """Every rule a config breaks, one line each (empty: valid): each key's own, then those between keys."""
    out = []
    for section, values in cfg.items():
        if isinstance(values, dict):
            for leaf, value in values.items():
                out += key_problems(f"{section}.{leaf}", value)
    return out + cross_problems(cfg)


def key_problems(key: str, value: Any) -> list[str]:
    """The rules of one key alone: its choices, range, sign, shape. A sweep checks each distinct value once."""
    if key in CHOICES and value not in CHOICES[key]:
        return [f"{key}={value!r} is not one of: {', '.join(CHOICES[key])}"]
    if key in RANGES and value is not None and (not _number(value) or not RANGES[key][0] <= value <= RANGES[key][1]):
        return [f"{key}={value!r} must be between {RANGES[key][0]} and {RANGES[key][1]}"]
    if key in _POSITIVE_SET and value is not None and (not _number(value) or value <= 0):
        return [f"{key}={value!r} must be > 0"]
    if key in _NON_NEGATIVE_SET and value is not None and (not _number(value) or value < 0):
        return [f"{key}={value!r} must be >= 0"]
    if key in ("augment.scale", "augment.ratio"):
        top = 1 if key == "augment.scale" else float("inf")
        if not (isinstance(value, list) and len(value) == 2 and all(map(_number, value)) and 0 < value[0] <= value[1] <= top):
            return [f"{key}={value!r} must be [min, max] with 0 < min <= max" + " <= 1" * (key == "augment.scale")]
    if key == "optim.lr":
        return _check_lr(value)
    if key == "model.freeze" and str(value).lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
        return [f"model.freeze={value!r}: use none (nothing frozen), backbone, or a module name (e.g. blocks.3: "
                "frozen up to and including it)"]  # fmt: skip
    if key == "data.image_size":
        from core.data.resize import image_size_at

        try:
            image_size_at(value, 0)
        except ValueError as e:
            return [f"data.image_size={value!r}: {e}"]
    if key == "loss.recall_at" and not (isinstance(value, list) and all(type(k) is int and k > 0 for k in value)):
        return [f"loss.recall_at={value!r} must be a list of positive integers (k of recall@k), e.g. [1, 5]"]
    if key in ("model.channels_last", "model.compile", "data.cache") and value not in (True, False, "auto"):
        return [f"{key}={value!r} must be true, false or auto"]
    if key == "optim.lr_spread" and _number(value) and value < 1:
        return [f"optim.lr_spread={value} must be >= 1 (the stem gets lr / lr_spread)"]
    if key == "optim.layer_decay" and value is not None and not (_number(value) and 0 < value <= 1):
        return [f"optim.layer_decay={value!r} must be in (0, 1]"]
    return []


_POSITIVE_SET, _NON_NEGATIVE_SET = frozenset(POSITIVE), frozenset(NON_NEGATIVE)


def cross_problems(cfg: dict[str, Any]) -> list[str]:
    """The rules between keys (and the required ones): checked for every trial of a sweep."""
    out = []
    a, d, t, o, f, lf = (cfg[k] for k in ("augment", "data", "train", "optim", "finetune", "lr_find"))
    if d.get("train_dir") in (None, "???", ""):
        out.append("data.train_dir is required (set it in the recipe or as data.train_dir=...)")
    epochs, size = t.get("epochs"), d.get("image_size")
    if isinstance(size, list) and size and isinstance(size[0], list) and _number(epochs):
        late = [s[0] for s in size if isinstance(s, list) and s and _number(s[0]) and s[0] >= epochs]
        if late:
            out.append(f"data.image_size: a size starts at epoch {late[0]}, after the last (train.epochs={epochs})")
    if d.get("loader") == "ffcv":
        out += [f"augment.{k}={a[k]!r} runs only on the torch path: set data.loader=torch or drop it"
                for k in TORCH_ONLY_AUGMENT if a.get(k)]  # fmt: skip
    out += _resize_and_loss_problems(cfg)
    if o.get("layer_decay") is not None and (isinstance(o.get("lr"), list) or o.get("lr_spread", 1) != 1):
        out.append("optim.layer_decay and discriminative LRs (optim.lr: [low, high] or optim.lr_spread) both spread "
                   "the LR over the layers: use one")  # fmt: skip
    if isinstance(o.get("lr"), list) and o.get("lr_spread", 1) != 1:
        out.append("optim.lr: [low, high] already sets the spread; drop optim.lr_spread")
    scale = f.get("unfrozen_lr_scale")
    if o.get("lr") == "auto" and lf.get("each_phase") and _number(scale):
        out.append(f"finetune.unfrozen_lr_scale={scale} has no effect with optim.lr=auto (each phase finds its own LR):"
                   " drop it or set lr_find.each_phase=false")  # fmt: skip
    race = lf.get("race") or []
    if not isinstance(race, (list, tuple)) or not all(_number(x) and x > 0 for x in race) or len(race) == 1:
        out.append(f"lr_find.race={race!r} must be a list of at least two factors > 0 of the phase's LR, e.g. [1, 0.33]"
                   " (or [] for none)")  # fmt: skip
    if _number(lf.get("start_lr")) and _number(lf.get("end_lr")) and lf["start_lr"] >= lf["end_lr"]:
        out.append(f"lr_find.start_lr={lf['start_lr']} must be below lr_find.end_lr={lf['end_lr']}")
    if f.get("strategy") == "freeze-then-unfreeze" and _number(epochs) and _number(f.get("freeze_epochs")):
        if f["freeze_epochs"] >= epochs:
            out.append(f"finetune.freeze_epochs={f['freeze_epochs']} leaves no unfrozen epoch in train.epochs={epochs}; "
                       "lower it or use finetune.strategy=linear-probe")  # fmt: skip
    warmup = cfg["schedule"].get("warmup_epochs")
    if cfg["schedule"].get("name") == "cosine" and _number(warmup) and _number(epochs) and warmup >= epochs:
        out.append(f"schedule.warmup_epochs={warmup} must be below train.epochs={epochs}")
    return out


def _resize_and_loss_problems(cfg: dict[str, Any]) -> list[str]:
    """data.resize on the loaders that support it; a metric loss's head, batches and targets."""
    a, d, m, loss = cfg["augment"], cfg["data"], cfg["model"], cfg.get("loss", {})
    out, loader, name = [], d.get("loader"), loss.get("name", "cross_entropy")
    if d.get("resize", "auto") not in ("auto", "crop", "center") and loader in ("ffcv", "gpu"):
        out.append(f"data.resize={d['resize']} runs only on the torch path (the {loader} loader crops as data.resize=crop"
                   "): set data.loader=torch or data.resize=crop")  # fmt: skip
    spc, batch = d.get("samples_per_class") or 0, d.get("batch_size")
    if spc and loader in ("ffcv", "gpu"):
        out.append(f"data.samples_per_class={spc} (class-balanced batches) runs only on the torch path: set "
                   "data.loader=torch")  # fmt: skip
    if spc and _number(batch) and (spc < 2 or batch % spc or batch // spc < 2):
        out.append(f"data.samples_per_class={spc} must be >= 2 and divide data.batch_size={batch} into >= 2 classes "
                   "per batch")  # fmt: skip
    if name == "cross_entropy":
        if loss.get("miner", "none") != "none":
            out.append(f"loss.miner={loss['miner']} needs a metric loss (loss.name=triplet, ...); set loss.miner=none")
        return out
    if not m.get("embedding_dim"):
        out.append(f"loss.name={name} trains an embedding: set model.embedding_dim (e.g. 128)")
    if a.get("mixup") or a.get("cutmix"):
        out.append(f"loss.name={name} needs whole labels: set augment.mixup=0 and augment.cutmix=0")
    if name in TUPLE_LOSSES and _number(batch):
        classes = d.get("num_classes")
        if batch < 2 or (spc == 0 and _number(classes) and batch <= classes):
            out.append(f"loss.name={name} compares samples within a batch: data.batch_size={batch} from "
                       f"{classes or 'any number of'} classes may hold no pair of one class; set "
                       "data.samples_per_class (class-balanced batches) or a larger data.batch_size")  # fmt: skip
    elif loss.get("miner", "none") != "none":
        out.append(f"loss.miner={loss['miner']} selects pairs/triplets for {', '.join(TUPLE_LOSSES)}; loss.name={name} "
                   "compares with class proxies: set loss.miner=none")  # fmt: skip
    return out


def batch_problem(loss_name: str, batch_size: int, samples_per_class: int, num_classes: int) -> str | None:
    """With the data open: a pair/triplet loss whose random batches (batch_size from num_classes classes) can
    miss positive pairs altogether (pigeonhole: only batch_size > num_classes guarantees one)."""
    if loss_name not in TUPLE_LOSSES or samples_per_class or batch_size > num_classes:
        return None
    return (f"loss.name={loss_name} compares samples within a batch: data.batch_size={batch_size} from {num_classes} "
            f"classes may hold no pair of one class; set data.samples_per_class (e.g. "
            f"{max(2, batch_size // max(2, min(num_classes, batch_size // 2)))}: class-balanced batches) or "
            f"data.batch_size > {num_classes}")  # fmt: skip


def _number(value: Any) -> bool:
    return type(value) in (int, float) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_lr(lr: Any) -> list[str]:
    if lr == "auto" or (_number(lr) and lr > 0):
        return []
    if isinstance(lr, list) and len(lr) == 2 and all(map(_number, lr)) and 0 < lr[0] <= lr[1]:
        return []
    return [f"optim.lr={lr!r} must be a number > 0, [low, high] with 0 < low <= high, or auto"]


def logged_metrics(cfg: dict[str, Any]) -> set[str]:
    """The metrics a run of cfg logs every epoch (what a sweep may rank trials by)."""
    metrics = set(METRICS)
    if get(cfg, "train.ema"):
        metrics |= {f"val_ema_{m.removeprefix('val_')}" for m in METRICS if m.startswith("val_")}
    return metrics


# ---------------------------------------------------------------- names


def name_problems(cfg: dict[str, Any]) -> list[str]:
    """Names that do not exist: timm model, optimizer, activation, pretrained weights."""
    model = get(cfg, "model.name")
    return [p for p in (_model(model), _optimizer(get(cfg, "optim.name")), _activation(get(cfg, "model.act_layer")),
                        _pretrained(get(cfg, "model.pretrained"), model)) if p]  # fmt: skip


def path_problems(cfg: dict[str, Any]) -> list[str]:
    """Data paths that do not exist (a sweep checks them before submitting; a run, when it opens them)."""
    out = []
    for key in ("data.train_dir", "data.val_dir"):
        path = get(cfg, key)
        if path not in (None, "???", ""):
            problem = _data_path(str(path), key)
            if problem:
                out.append(f"{key}={path}: {problem}")
    return out


@functools.cache
def _model(name: Any) -> str | None:
    from core import names
    from core.errors import did_you_mean

    if not isinstance(name, str) or not names.is_model(name):
        arch = str(name).split(".")[0]
        return f"model.name={name!r} is not a timm model{did_you_mean(arch, names.registries()['models'])}"
    return None


@functools.cache
def _optimizer(name: Any) -> str | None:
    from core import names
    from core.errors import did_you_mean

    if not isinstance(name, str) or not names.is_optimizer(name):
        valid = names.registries()["optimizers"] + list(names.OPTIMIZER_ALIASES)
        return f"optim.name={name!r} is not a timm optimizer{did_you_mean(str(name).lower(), valid)}"
    return None


@functools.cache
def _activation(name: Any) -> str | None:
    from core import names
    from core.errors import did_you_mean

    if name is not None and not names.is_activation(str(name)):
        return (f"model.act_layer={name!r} is not a timm activation"
                f"{did_you_mean(str(name), names.registries()['activations'])}")  # fmt: skip
    return None


@functools.cache
def _pretrained(value: Any, model: Any) -> str | None:
    """An offline zoo tag for this architecture, a weight file, an ftl run or export, or a timm pretrained tag."""
    from core import names
    from core.zoo import OFFLINE_ZOO, WEIGHT_SUFFIXES

    if value is None:
        return None
    value, arch = str(value), str(model).split(".")[0]
    if value in OFFLINE_ZOO:
        zoo_arch = OFFLINE_ZOO[value].arch
        return None if zoo_arch == arch else f"model.pretrained={value} is for {zoo_arch}; set model.name={zoo_arch}"
    path = Path(value).expanduser()
    if path.exists():
        return None
    if "/" in value or path.suffix in WEIGHT_SUFFIXES:
        return f"model.pretrained={value}: no such weight file or ftl run/export"
    if "." not in value:  # a tag of the model's own architecture: `a1_in1k` for resnet50
        value = f"{arch}.{value}"
    if names.is_pretrained_tag(value):
        tag_arch = value.split(".")[0]
        return None if tag_arch == arch else f"model.pretrained={value} is for {tag_arch}; set model.name={tag_arch}"
    return (f"model.pretrained={value!r} is not an offline zoo tag ({', '.join(OFFLINE_ZOO)}), a weight file, an "
            "ftl run dir or a timm pretrained tag (arch.tag)")  # fmt: skip


SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "eval")


def split_problem(root: Path, what: str) -> str | None:
    """A dataset root holding split folders (train/, val/ ... each with class folders) given where a class root
    belongs: read as classes it trains a "train vs val" model without a word. The fix, or None."""
    splits = [s for s in SPLIT_NAMES if (root / s).is_dir() and any(d.is_dir() for d in (root / s).iterdir())]
    if len(splits) < 2 or splits[0] not in ("train", "training"):
        return None
    train, val = splits[0], next((s for s in splits[1:] if s != "test"), splits[1])
    fix = (f"set data.train_dir={root / train} data.val_dir={root / val}" if what.startswith("data.")
           else f"give one split, e.g. {root / train}")  # fmt: skip
    return f"holds the dataset's splits ({', '.join(s + '/' for s in splits)}), not its classes: {fix}"


@functools.cache
def _data_path(path: str, key: str = "data.train_dir") -> str | None:
    p = Path(path).expanduser()
    if p.is_dir():
        return split_problem(p, key)
    if p.suffix == ".beton" and p.is_file():
        return None
    return "no such directory" if not p.exists() else "not a directory (an ImageFolder root) or a .beton file"
