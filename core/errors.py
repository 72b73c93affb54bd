"""The one error type for mistakes a user can make (bad config, missing data, wrong weights), and suggestions.

The CLI prints an FtlError as a single line and exits with code 2; anything else is a bug and keeps its traceback.
"""

import difflib
from collections.abc import Iterable


class FtlError(Exception):
    """A user-caused error: the message names what is wrong and how to fix it."""


# What people call a key in timm's train.py, Hugging Face, Lightning or fastai -> ftl's last key segment.
KEY_SYNONYMS = {
    "learning_rate": "lr", "lr_rate": "lr", "base_lr": "lr", "max_lr": "lr", "wd": "weight_decay",
    "bs": "batch_size", "batch": "batch_size", "train_batch_size": "batch_size", "per_device_train_batch_size":
    "batch_size", "epoch": "epochs", "num_epochs": "epochs", "n_epochs": "epochs", "max_epochs": "epochs",
    "num_train_epochs": "epochs", "img_size": "image_size", "input_size": "image_size", "resolution": "image_size",
    "size": "image_size", "arch": "name", "model_name": "name", "model": "name", "opt": "name", "optimizer": "name",
    "sched": "name", "scheduler": "name", "warmup": "warmup_epochs", "smoothing": "label_smoothing",
    "mixup_alpha": "mixup", "cutmix_alpha": "cutmix", "drop_path": "drop_path_rate", "workers": "num_workers",
    "amp": "precision", "mixed_precision": "precision", "grad_accum": "grad_accum_steps", "accum_steps":
    "grad_accum_steps", "gradient_accumulation_steps": "grad_accum_steps", "clip_grad": "clip_grad_norm",
    "max_grad_norm": "clip_grad_norm", "model_ema": "ema", "model_ema_decay": "ema_decay", "aa": "policy",
    "reprob": "random_erasing", "data_dir": "train_dir", "train_data": "train_dir", "val_data": "val_dir",
    "output": "output_dir", "checkpoint_dir": "output_dir",
}  # fmt: skip


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest choices, or '' when nothing is close. For dotted keys the last
    segment counts too, with the names other tools use for it (`optim.learning_rate` -> `optim.lr`)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    if "." in name or any("." in c for c in choices):
        section, _, leaf = name.rpartition(".")
        leaf = KEY_SYNONYMS.get(leaf.lower(), leaf)
        leaves = {}
        for c in choices:
            leaves.setdefault(c.rpartition(".")[2], []).append(c)
        by_leaf = [c for m in difflib.get_close_matches(leaf, list(leaves), n=n, cutoff=0.75) for c in leaves[m]]
        same_section = [c for c in by_leaf if c.rpartition(".")[0] == section]
        close = list(dict.fromkeys(same_section + by_leaf + close))[:n]
    return f" (did you mean: {', '.join(close)}?)" if close else ""
