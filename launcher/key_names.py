"""The names people give hyperparameters - in W&B sweep files, timm's train.py, Lightning, Hugging Face, fastai -
resolved to ftl's config keys by what they mean (`optimizer` is the optimizer's name, `model` the model's), so a
sweep written for another tool runs with the meaning its author had. Each mapping is said once when a sweep is read.
"""

from __future__ import annotations

import difflib

from core import config as config_lib

# A name (lower case, '-' as '_') -> ftl's key. One meaning each: a name that could mean two things is not here.
ROLES: dict[str, str] = {}
_GROUPS = {
    "optim.lr": "lr learning_rate base_lr max_lr init_lr initial_lr peak_lr lr0 learningrate",
    "optim.weight_decay": "wd weight_decay weightdecay l2 l2_reg",
    "optim.momentum": "momentum",
    "optim.name": "optimizer optim opt optimizer_name opt_name optimizer_type",
    "optim.layer_decay": "layer_decay layerwise_decay lr_layer_decay",
    "optim.lr_spread": "lr_spread discriminative_lr lr_mult",
    "model.name": "model model_name arch architecture backbone network net model_type encoder",
    "model.pretrained": "pretrained weights pretrained_weights init_weights",
    "model.head_dropout": "dropout drop drop_rate dropout_rate head_dropout classifier_dropout fc_dropout p_dropout",
    "model.drop_path_rate": "drop_path drop_path_rate stochastic_depth sd_rate",
    "model.act_layer": "activation activation_function act act_layer act_fn nonlinearity",
    "model.freeze": "freeze freeze_layers",
    "model.head": "head head_type",
    "model.embedding_dim": "embedding_dim emb_dim embed_dim",
    "data.batch_size": "batch_size bs batch batchsize train_batch_size per_device_train_batch_size mini_batch_size",
    "data.image_size": "image_size img_size input_size resolution size crop_size img_res imgsz",
    "data.num_workers": "num_workers workers n_workers",
    "train.epochs": "epochs epoch num_epochs n_epochs max_epochs num_train_epochs training_epochs n_epoch",
    "train.seed": "seed random_seed rng_seed",
    "train.grad_accum_steps": "grad_accum accum_steps gradient_accumulation_steps accumulate_grad_batches accum_iter",
    "train.clip_grad_norm": "clip_grad max_grad_norm grad_clip gradient_clip_val clip_grad_norm clip_norm",
    "train.precision": "precision amp mixed_precision",
    "train.ema": "ema model_ema",
    "train.ema_decay": "ema_decay model_ema_decay",
    "schedule.name": "scheduler sched lr_scheduler schedule lr_schedule scheduler_name",
    "schedule.warmup_epochs": "warmup warmup_epochs warmup_epoch warm_up_epochs",
    "schedule.min_lr": "min_lr eta_min lr_min final_lr",
    "schedule.pct_start": "pct_start warmup_pct",
    "augment.label_smoothing": "label_smoothing smoothing ls label_smooth",
    "augment.mixup": "mixup mixup_alpha",
    "augment.cutmix": "cutmix cutmix_alpha",
    "augment.policy": "aa autoaugment auto_augment randaugment rand_augment policy augment_policy",
    "augment.random_erasing": "reprob random_erasing re_prob erase_prob",
    "augment.color_jitter": "color_jitter jitter",
    "finetune.freeze_epochs": "freeze_epochs frozen_epochs head_epochs",
    "finetune.strategy": "strategy finetune_strategy fine_tune_strategy",
}
for _key, _names in _GROUPS.items():
    for _name in _names.split():
        ROLES[_name] = _key

# Names that look like a key but mean a unit ftl does not use: refused with what to write instead.
NOT_THE_SAME = {
    "warmup_steps": "ftl warms up in epochs: schedule.warmup_epochs",
    "warmup_iters": "ftl warms up in epochs: schedule.warmup_epochs",
    "steps": "ftl trains for epochs: train.epochs",
    "max_steps": "ftl trains for epochs: train.epochs",
    "num_steps": "ftl trains for epochs: train.epochs",
    "iterations": "ftl trains for epochs: train.epochs",
    "decay": "optim.weight_decay (weight decay) or schedule.name / schedule.min_lr (how the LR decays)",
    "lr_decay": "schedule.name / schedule.min_lr (how the LR decays) or optim.layer_decay (per layer)",
    "lr_head": "optim.lr (the head's LR) with optim.lr_spread or optim.layer_decay for the LRs below it",
    "head_lr": "optim.lr (the head's LR) with optim.lr_spread or optim.layer_decay for the LRs below it",
    "lr_backbone": "optim.lr_spread (the stem trains at optim.lr / lr_spread) or optim.layer_decay",
    "backbone_lr": "optim.lr_spread (the stem trains at optim.lr / lr_spread) or optim.layer_decay",
    "unfreeze_from_layer": "model.freeze (a module name: frozen up to and including it, e.g. blocks.3)",
}
# Names whose values mean an ftl key's values: name -> (key, {value as written: ftl's value})
VALUE_ROLES: dict[str, tuple[str, dict]] = {
    "freeze_backbone": ("model.freeze", {True: "backbone", False: "none"}),
    "freeze_encoder": ("model.freeze", {True: "backbone", False: "none"}),
}


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def resolve(name: str) -> tuple[str | None, str]:
    """(ftl key or None, how it was found): the key itself, a key's last part (`lr`), or a name's role."""
    keys = config_lib.schema_keys()
    if name in keys:
        return name, "key"
    norm = _norm(name)
    leaf = norm.rsplit(".", 1)[-1].rsplit("/", 1)[-1]  # `optimizer.lr`, `train/lr`: the last part
    for known in (norm, leaf):
        if known in ROLES:
            return ROLES[known], "role"
        if known in VALUE_ROLES:
            return VALUE_ROLES[known][0], "values"
    ends = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if len(ends) == 1:
        return ends[0], "leaf"
    return None, ""


def value_table(name: str) -> dict | None:
    """{value as written: ftl's value} for a VALUE_ROLES name, else None."""
    norm = _norm(name)
    return next((VALUE_ROLES[k][1] for k in (norm, norm.rsplit(".", 1)[-1]) if k in VALUE_ROLES), None)


def translate(name: str, value):
    """A value as the key a VALUE_ROLES name maps to takes it (`freeze_backbone: true` -> model.freeze=backbone);
    ValueError naming the values that name takes."""
    table = value_table(name)
    if table is None:
        return value
    if not isinstance(value, type(next(iter(table)))) or value not in table:
        raise ValueError(f"{name} takes {', '.join(str(k).lower() for k in table)} (-> {', '.join(table.values())})")
    return table[value]


def hint(name: str) -> str:
    """What to write instead of a name that maps to nothing: the nearest real keys (by the name and by its last
    part), or the unit ftl uses instead."""
    norm = _norm(name)
    leaf = norm.rsplit(".", 1)[-1].rsplit("/", 1)[-1]
    for known in (norm, leaf):
        if known in NOT_THE_SAME:
            return f"; use {NOT_THE_SAME[known]}"
    keys = config_lib.schema_keys()
    close = difflib.get_close_matches(norm, keys, n=3, cutoff=0.6)
    close += [ROLES[n] for n in difflib.get_close_matches(leaf, list(ROLES), n=3, cutoff=0.75)]
    close += [k for k in keys for m in difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75) if m]
    close = list(dict.fromkeys(close))[:3]
    return f" (did you mean: {', '.join(close)}?)" if close else "; name it by its ftl key (ftl sweep --help lists them)"
