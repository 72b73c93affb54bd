"""The typed recipe schema and its loader: YAML recipe + dotted `key=value` overrides -> a validated Config.

Built on OmegaConf structured configs. Every user mistake becomes one FtlError that names the file or override,
the key, the value and what is allowed (with the closest valid key names for a typo).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.errors import FtlError, did_you_mean

RECIPES_DIR = Path(__file__).resolve().parent.parent / "jobs" / "recipes"


@dataclass
class ModelConfig:
    name: str = "mobilenetv2_100"  # any timm model name
    pretrained: str | None = None  # offline zoo tag, timm hub tag, weight file (.pth/.safetensors) or ftl run dir
    head: str = "linear"  # linear | mlp
    head_hidden: int = 512  # mlp head: hidden width
    head_dropout: float = 0.0  # dropout before the classifier
    embedding_dim: int | None = None  # an embedding head: features -> this many dims (metric losses), classifier on it
    drop_path_rate: float = 0.0
    freeze: str = "none"  # never trained: none | backbone | a module name (up to and including it, e.g. blocks.3)
    act_layer: str | None = None  # swap the activation where the architecture takes one (mish, leaky_relu, ...)
    channels_last: Any = "auto"  # true | false | auto (on for CUDA)
    compile: Any = "auto"  # torch.compile the forward pass: true | false | auto (CUDA, runs of >= 500 updates)
    compile_backend: str = "inductor"  # torch.compile's backend (inductor; aot_eager traces without generating code)


@dataclass
class DataConfig:
    train_dir: str = MISSING  # ImageFolder root of the training images (or a .beton, for the FFCV loader)
    val_dir: str | None = None  # ImageFolder root (or .beton) of validation images; None -> seeded stratified split
    val_split: float = 0.2  # fraction of train_dir held out when val_dir is None
    num_classes: int | None = None  # optional check against the class folders found
    image_size: Any = 224  # int, or progressive resizing: [64, 96] (equal parts) or [[0, 64], [3, 96]] (from epoch)
    resize: str = "auto"  # non-square images: crop | squash | pad (timm's center | squash | border) | auto (squash on
    #                       the torch loader: keeps the whole image; crop on ffcv / gpu, which crop in their decoders)
    crop_pct: float | None = None  # validation: resize to image_size / crop_pct, center crop; None: the model's own
    cache: Any = "auto"  # torch path: keep decoded images in RAM (true | false | auto: when they fit in 2 GiB)
    samples_per_class: int = 0  # > 0: class-balanced batches, this many samples of each class (metric losses)
    batch_size: int = 64  # per process
    eval_batch_size: int | None = None  # default: 2 x batch_size
    num_workers: int = 2  # torch: DataLoader worker processes; ffcv: decode threads; gpu: reader threads
    loader: str = "torch"  # torch | ffcv | gpu (nvJPEG on a CUDA GPU) | auto (the fastest the data and device allow)
    ffcv_decoder: str = "ftl"  # ftl (crop inside the JPEG decode) | stock (FFCV's own decoders)
    ffcv_order: str = "random"  # random (OS page cache, sharded over ranks) | quasi-random (larger than RAM)
    ffcv_os_cache: bool = True  # false: FFCV's process cache (with quasi-random)
    mean: list[float] | None = None  # default: the pretrained model's own (timm's resolve_model_data_config)
    std: list[float] | None = None


@dataclass
class AugmentConfig:
    scale: list[float] = field(default_factory=lambda: [0.35, 1.0])  # random resized crop (zoom) area range
    ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    hflip: float = 0.5  # probabilities
    vflip: float = 0.0
    rotate: float = 0.0  # degrees, +-
    shear: float = 0.0  # degrees, +-
    translate: float = 0.0  # shift, fraction of the image size
    color_jitter: float = 0.0  # shorthand: brightness = contrast = saturation = this
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0  # <= 0.5
    channel_shift: float = 0.0  # per-channel additive shift, fraction of the value range
    grayscale: float = 0.0  # probability
    policy: str | None = None  # rand-m9-mstd0.5 | augmix-m5-w4-d2 | v0 / original (AutoAugment) | trivial
    random_erasing: float = 0.0  # probability (Cutout with erasing_mode=const)
    erasing_mode: str = "random"  # random | const
    mixup: float = 0.0  # MixUp alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    mix_prob: float = 1.0  # probability of mixing a batch
    switch_prob: float = 0.5  # with both on: probability of CutMix instead of MixUp
    label_smoothing: float = 0.1


@dataclass
class OptimConfig:
    name: str = "adamw"  # any timm optimizer name (sgd, adamw, radam, lookahead_adamw, ...) or ranger
    lr: Any = 1e-3  # peak LR of the head; [low, high] spreads it over the stages; auto runs the LR finder
    lr_spread: float = 1.0  # discriminative LRs: the stem gets lr / lr_spread, geometric in between
    layer_decay: float | None = None  # timm-style layer-wise LR decay (instead of lr_spread)
    no_decay_norm_bias: bool = True  # no weight decay on norms and biases
    weight_decay: float = 0.05
    momentum: float = 0.9


@dataclass
class LRFindConfig:
    # steps, images per step and start LR: None scales them with the run (lr_finder.range_test_shape): fastai's test
    # (100 steps at the run's batch from 1e-7) for a run of 1000 updates or more, a short one (40 steps of at most
    # 32 images from 1e-5) for a shorter run, where the long one costs 3-5x the run (docs/transfer.md)
    start_lr: float | None = None
    end_lr: float = 10.0
    num_steps: int | None = None
    batch_size: int | None = None  # per process
    suggestion: str = "minimum"  # minimum (lowest loss / 10) | valley | steepest; docs/benchmarks.md: how auto fares
    each_phase: bool = False  # true: a range test as each fine-tune phase starts; false: one, the first phase's
    # a race between LRs as a phase starts: each factor x the phase's peak trains race_epochs epochs of it from the
    # same state, the lowest val_loss wins and the phase trains with it from its start ([]: none; e.g. [1, 0.33]).
    # Phases of more than race_epochs epochs race (the fine_tune recipe's unfrozen phase, not its head-only epoch)
    race: list[float] = field(default_factory=list)
    race_epochs: int = 2


@dataclass
class FinetuneConfig:
    strategy: str = "full"  # full | linear-probe | freeze-then-unfreeze | gradual
    freeze_epochs: int = 1  # freeze-then-unfreeze: epochs with only the head training
    unfreeze_every: int = 1  # gradual: epochs between unfreezing the next stage (from the head down)
    train_bn: bool = True  # BatchNorm in frozen stages keeps training (fastai); false: frozen with its statistics
    # later phases peak at lr x this (fastai: 0.5); None: 1 with a fixed LR, 0.3 with optim.lr=auto's one range
    # test (the whole network's test suggests 0.3x the head-only one's, measured: docs/transfer.md)
    unfrozen_lr_scale: float | None = None


@dataclass
class ScheduleConfig:
    name: str = "onecycle"  # onecycle | cosine | constant
    warmup_epochs: float = 0.0  # cosine: linear warmup length
    pct_start: float = 0.25  # onecycle: fraction of steps spent warming up
    min_lr: float = 1e-6


@dataclass
class TrainConfig:
    epochs: int = 5
    precision: str = "auto"  # auto (bf16 on GPUs that have it, else fp16; fp32 on CPU) | no | bf16 | fp16
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = None
    seed: int = 0
    ema: bool = False  # keep an EMA of the weights (timm ModelEmaV3) and validate it too
    ema_decay: float = 0.998  # the decay it reaches; with ema_warmup the decay grows with the updates up to it
    ema_warmup: bool = True  # decay = min(ema_decay, 1 - (1 + updates)^-2/3): short runs average what they trained
    precise_bn: int = 0  # > 0: BatchNorm statistics recomputed over up to this many train batches before validating
    deterministic: bool = False  # torch deterministic algorithms; needed for bit-exact resume
    checkpoint_every_steps: int = 0  # 0: checkpoint at the end of every epoch only
    checkpoint_min_interval_s: float = 0.0  # > 0: skip end-of-epoch checkpoints until this long after the last one
    keep_checkpoints: int = 2
    log_every_steps: int = 10
    output_dir: str = "runs"  # runs go to output_dir/<name>-<time> unless a run dir is given


@dataclass
class LossConfig:
    name: str = "cross_entropy"  # cross_entropy | a metric loss (triplet, contrastive, arcface, ...: core/losses.py)
    ce_weight: float = 0.0  # with a metric loss: + ce_weight x cross-entropy of the classifier on the embedding
    miner: str = "none"  # metric losses: none | batch_hard | semihard | hard | multi_similarity | pair_margin
    margin: float | None = None  # the metric loss's margin (None: pytorch-metric-learning's default)
    recall_at: list[int] = field(default_factory=list)  # retrieval metrics val_recall@k on the validation set


@dataclass
class TrackingConfig:
    wandb: bool = False  # false: no W&B import and no W&B call at all
    project: str = "ftl"
    entity: str | None = None
    group: str | None = None  # a sweep sets its name here
    name: str | None = None  # W&B run name (default: the run dir's name)
    run_id: str | None = None  # W&B run id (default: a hash of the run dir); kept across requeues
    job_type: str = "fine-tune"
    tags: list[str] = field(default_factory=list)
    trial: str | None = None  # set by the launcher: the trial's id (also a W&B tag trial:<id>)
    sweep_dir: str | None = None  # set by the launcher: the sweep dir the trial belongs to
    log_samples: int = 16  # validation samples with predictions logged as a W&B table (0: none)
    log_model: bool = False  # best weights as a W&B artifact


@dataclass
class Config:
    name: str = "run"
    resume: str | None = None  # a run dir whose latest checkpoint to resume exactly
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lr_find: LRFindConfig = field(default_factory=LRFindConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


@functools.cache
def schema_keys(node: Any = Config, prefix: str = "") -> list[str]:
    """All dotted leaf keys of the schema, e.g. 'model.name'."""
    keys = []
    for f in dataclasses.fields(node):
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            keys += schema_keys(type(sub), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _check_keys(values: dict[str, Any], source: str) -> None:
    valid = schema_keys()
    sections = {k.split(".")[0] for k in valid}
    for key in _flatten(values):
        if key not in valid and key not in sections:
            raise FtlError(f"{source}: unknown key '{key}'{did_you_mean(key, valid)}")


def resolve_recipe(recipe: str | Path, beside: Path | None = None) -> Path:
    """A recipe name (jobs/recipes/NAME.yaml) or a path to a YAML file. `beside`: the folder of the recipe whose
    `base:` this is - a base next to it (as written, or NAME.yaml) is found first, from any working directory."""
    if beside is not None and not Path(recipe).is_absolute():
        for candidate in (beside / recipe, beside / f"{recipe}.yaml"):
            if candidate.is_file():
                return candidate
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FtlError(f"recipe file not found: {path}")
        return path
    named = RECIPES_DIR / f"{recipe}.yaml"
    if not named.is_file():
        names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise FtlError(f"unknown recipe '{recipe}'{did_you_mean(str(recipe), names)}; recipes: {', '.join(names)}")
    return named


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core scalars: `1:00:00` stays a string (YAML 1.1 reads it as the
    base-60 number 3600, so a SLURM time limit would become 60 hours), `1e3` is a float (1.1 wants `1e+3`), only
    true/false are booleans (not yes/no/on/off) and dates stay text."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if not tag.endswith((":int", ":float", ":bool", ":timestamp"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))  # fmt: skip
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"),
    list("-+0123456789"))  # fmt: skip
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
                             r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))  # fmt: skip


def read_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping (recipe, sweep, cluster config), or an FtlError naming the file."""
    try:
        data = yaml.load(Path(path).read_text(), Loader=YamlLoader) or {}
    except yaml.YAMLError as e:
        raise FtlError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FtlError(f"{path}: cannot read it as text ({e})") from None
    if not isinstance(data, dict):
        raise FtlError(f"{path}: a {what} must be a mapping of keys, got {type(data).__name__}")
    return data


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML recipe; a top-level `base: NAME` inherits from another recipe (deep-merged)."""
    data = read_yaml_mapping(path, "recipe")
    base = data.pop("base", None)
    _check_keys(data, str(path))
    if base is None:
        return data
    base_path = resolve_recipe(base, beside=path.parent)
    if base_path.resolve() in seen:
        raise FtlError(f"{path}: recipe 'base: {base}' makes a cycle")
    merged = OmegaConf.merge(read_recipe(base_path, (*seen, path.resolve())), data)
    return OmegaConf.to_container(merged)  # type: ignore[return-value]


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Hydra-style `a.b=value` strings -> a nested dict (values parsed as YAML: 3, 1e-3, [1,2], null)."""
    parsed: dict[str, Any] = {}
    for item in overrides:
        if comma_values(item):
            raise FtlError(f"override '{item}' lists several values: sweep them with `ftl sweep` (a grid axis), or "
                           "write a list value in brackets ([a, b])")  # fmt: skip
        key, value = parse_override(item)
        if key not in _valid_keys():
            raise FtlError(f"override {item}: unknown key '{key}'{did_you_mean(key, schema_keys())}")
        *parents, leaf = key.split(".")
        node = parsed
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise FtlError(f"override '{item}': {part} is set both as a value and as a section")
        node[leaf] = value
    return parsed


@functools.cache
def _valid_keys() -> frozenset[str]:
    keys = schema_keys()
    return frozenset([*keys, *(k.split(".")[0] for k in keys)])


@functools.lru_cache(maxsize=65536)
def parse_override(item: str) -> tuple[str, Any]:
    """'optim.lr=1e-3' -> ('optim.lr', 0.001): the value read as YAML (a flow list, null, a number), else text.
    Hydra's `+key=v` / `++key=v` are read as `key=v` (every key of ftl's schema exists); `~key` is refused."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if key.startswith("~"):
        raise FtlError(f"override '{item}': ~KEY (delete a key) does not apply: every key of ftl's config exists; "
                       f"set {key[1:]}=null or leave it out")  # fmt: skip
    key = key.removeprefix("++").removeprefix("+")
    if not sep or not key or any(not part for part in key.split(".")):
        raise FtlError(f"override '{item}' is not of the form key=value (e.g. optim.lr=1e-3)")
    try:
        value = yaml.load(text, Loader=YamlLoader) if text.strip() else ""
    except yaml.YAMLError:
        value = text  # not YAML: the text itself (a path with odd characters, say)
    if isinstance(value, dict):
        raise FtlError(f"override '{item}': set the keys one by one ({key}.KEY=VALUE), not a mapping")
    return key, value


def format_value(value: Any) -> str:
    """A value as an override string that parses back to the same value (YAML flow style)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return yaml.safe_dump(value).strip().removesuffix("\n...").removesuffix("...").strip()


def comma_values(item: str) -> list[str] | None:
    """Hydra's sweep syntax `key=a,b,c` -> ['a', 'b', 'c'] (commas outside brackets and quotes); None otherwise."""
    key, sep, text = item.partition("=")
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if not sep or not parts:
        return None
    return [p.strip() for p in [*parts, text[start:]]]


def build(values: list[dict[str, Any]], source: str = "config", base: DictConfig | None = None,
          check: bool = True) -> DictConfig:  # fmt: skip
    """Merge plain dicts onto the schema (or onto an already built `base`, which is much faster: the structured
    schema is the costly part) and validate types, choices and ranges."""
    cfg = base if base is not None else OmegaConf.structured(Config)
    try:
        for v in values:
            cfg = OmegaConf.merge(cfg, v)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        raise FtlError(f"{source}: {key}: {str(e).splitlines()[0]}") from None
    if check:
        validate(cfg, source)
    return cfg  # type: ignore[return-value]


def validate(cfg: DictConfig, source: str = "config", overridden: dict[str, str] | None = None) -> None:
    """Every rule of core/checks.py (values, rules between keys, names): one FtlError listing every problem. A
    problem with a key set on the command line (`overridden`: key -> override) is blamed on that override."""
    from core import checks

    values = to_dict(cfg)
    problems = [f"{key} is required (set it in the recipe or as {key}=...)" for key in OmegaConf.missing_keys(cfg)]
    problems += [p for p in checks.problems(values) if not (problems and p.startswith("data.train_dir is required"))]
    problems += checks.name_problems(values)
    if not problems:
        return
    overridden = overridden or {}
    ours = [p for p in problems if re.match(r"[\w.]+", p) and re.match(r"[\w.]+", p).group(0) in overridden]  # type: ignore[union-attr]
    theirs = [p for p in problems if p not in ours]
    parts = ([f"{source}: " + "; ".join(theirs)] if theirs else []) + ["command line: " + "; ".join(ours)] * bool(ours)
    raise FtlError(" | ".join(parts))


def lr_plan(cfg: DictConfig) -> tuple[float | None, float]:
    """(peak LR or None for auto, spread): `lr: [low, high]` is peak high with spread high / low."""
    lr = cfg.optim.lr
    if lr == "auto":
        return None, cfg.optim.lr_spread
    if isinstance(lr, (list, ListConfig)):
        return float(lr[1]), float(lr[1]) / float(lr[0])
    return float(lr), cfg.optim.lr_spread


def load(recipe: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """Load a recipe by name or path, apply `key=value` overrides, validate, and return the Config. An error the
    recipe causes names the recipe file; one an override causes names the override."""
    path = resolve_recipe(recipe)
    cfg = build([read_recipe(path)], source=str(path), check=False)
    return apply_overrides(cfg, overrides or [], str(path))


def apply_overrides(cfg: DictConfig, overrides: list[str], source: str) -> DictConfig:
    """Overrides onto a built config (type errors name the override), then every check (see validate)."""
    for override in overrides:
        try:
            cfg = OmegaConf.merge(cfg, parse_overrides([override]))
        except OmegaConfBaseException as e:
            raise FtlError(f"command line {override}: {str(e).splitlines()[0]}") from None
    keys = {parse_override(o)[0]: o for o in overrides}
    if "model.name" in keys and "model.pretrained" not in keys:  # the recipe's weights follow the model chosen
        from core.zoo import weights_for

        cfg.model.pretrained = weights_for(cfg.model.name, cfg.model.pretrained)
    validate(cfg, source, keys)
    return cfg


def save(cfg: DictConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    from core.fileio import write_text_atomic

    write_text_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    """A config as plain data (picklable, YAML- and JSON-able)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def from_yaml(path: str | Path) -> DictConfig:
    """Re-load a config saved by `save` (e.g. from a run dir or export)."""
    return build([OmegaConf.to_container(OmegaConf.load(path))], source=str(path))  # type: ignore[list-item]
