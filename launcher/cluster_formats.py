"""Cluster configs as people write them for hydra-submitit-launcher and submitit, read with those tools' meaning.

- A Hydra launcher file (`conf/hydra/launcher/NAME.yaml`, or a config with a `hydra: launcher:` block): its
  `_target_` says SLURM or local, `defaults: [submitit_slurm]` starts from Hydra's SlurmQueueConf (its defaults
  differ from ftl's: signal_delay_s 120, max_num_timeout 0, no --mem or --cpus-per-task unless set),
  `${oc.env:VAR[,default]}` is read from this environment, `null` means unset, `???` must be given, and
  `submitit_folder` / `name` / `${hydra.*}` are noted (ftl keeps logs in the sweep dir and names jobs itself).
- submitit's words, with or without AutoExecutor's `slurm_` prefix: ftl's own keys where it has them (timeout_min,
  mem_gb, gpus_per_node, tasks_per_node, partition, ...), and every other SlurmExecutor parameter (mem_per_gpu,
  mem_per_cpu, cpus_per_gpu, gpus_per_task, comment, exclusive, mail_type, nodelist, srun_args, use_srun,
  stderr_to_stdout, wckey, ...) passed to submitit as written; a name submitit does not have is named with the
  closest one.
- SLURM keys without `executor:` mean SLURM (said in a note), never a silent local run.
"""

from __future__ import annotations

import re
from typing import Any

from core.errors import FtlError, did_you_mean

# Hydra's SlurmQueueConf defaults (hydra_plugins.hydra_submitit_launcher.config), where they differ from ftl's
HYDRA_SLURM_DEFAULTS = {"timeout_min": 60, "nodes": 1, "tasks_per_node": 1, "signal_delay_s": 120,
                        "max_num_timeout": 0, "array_parallelism": 256, "cpus_per_task": None, "mem_gb": None}  # fmt: skip
HYDRA_ONLY = {"_target_", "defaults", "submitit_folder", "name", "python"}
SUBMITIT_TO_FTL = {"time": "timeout_min", "ntasks_per_node": "tasks_per_node", "job_name": "name",
                   "num_gpus": "gpus_per_node", "folder": "submitit_folder"}  # fmt: skip
SLURM_ONLY = {"partition", "account", "qos", "constraint", "exclude", "gres", "nodes", "gpus_per_node",
              "array_parallelism", "signal_delay_s", "max_num_timeout", "setup", "additional_parameters"}  # fmt: skip
OLD_HYDRA = {"cls", "params"}


def submitit_parameters() -> set[str]:
    """Every parameter submitit's SlurmExecutor takes (its own list: _make_sbatch_string's keywords)."""
    from submitit.slurm.slurm import SlurmExecutor

    return set(SlurmExecutor._valid_parameters())


def unwrap(data: dict[str, Any], path, notes: list[str]) -> dict[str, Any]:
    """The launcher's keys: a `hydra: launcher:` block, or the file itself; Hydra-only keys settled."""
    if set(data) & OLD_HYDRA and "params" in data:
        raise FtlError(f"{path}: the Hydra 0.x submitit launcher format (cls / params / queue_parameters); ftl reads "
                       "Hydra >= 1.0 launcher configs (hydra/launcher/submitit_slurm.yaml keys) and submitit's names")  # fmt: skip
    if isinstance(data.get("hydra"), dict):
        launcher = data["hydra"].get("launcher")
        if not isinstance(launcher, dict):
            raise FtlError(f"{path}: hydra has no launcher block: ftl reads a cluster from hydra.launcher")
        notes.append("read hydra.launcher")
        data = launcher
    data = dict(data)
    target = str(data.pop("_target_", "") or "")
    defaults = data.pop("defaults", None)
    hydra = bool(target) or defaults is not None
    base = _defaults_base(defaults) or ("submitit_local" if target.endswith("LocalLauncher") else
                                        "submitit_slurm" if target.endswith("SlurmLauncher") else "")  # fmt: skip
    if base == "submitit_slurm":
        data.setdefault("executor", "slurm")
        for key, value in HYDRA_SLURM_DEFAULTS.items():
            if key not in data:
                data[key] = value
        notes.append("Hydra's submitit_slurm defaults for what the file leaves unset (signal_delay_s 120, "
                     "max_num_timeout 0, no --mem / --cpus-per-task)")  # fmt: skip
    elif base == "submitit_local":
        data.setdefault("executor", "local")
    for key in ("submitit_folder", "name"):
        if key in data:
            data.pop(key)
            if hydra or key == "name":
                notes.append(f"{key} not used: ftl keeps a sweep's logs in its dir and names jobs ftl-<sweep>-<uid>.<batch> "
                             "(how it finds them again)")  # fmt: skip
    if "python" in data and data["python"] is None:
        data.pop("python")
    return data


def _defaults_base(defaults: Any) -> str:
    """submitit_slurm / submitit_local from a Hydra defaults list (`- submitit_slurm`, `- override
    hydra/launcher: submitit_slurm`)."""
    items = defaults if isinstance(defaults, list) else [defaults] if defaults else []
    for item in items:
        text = " ".join(f"{k} {v}" for k, v in item.items()) if isinstance(item, dict) else str(item)
        for base in ("submitit_slurm", "submitit_local"):
            if base in text:
                return base
    return ""


def resolve_interpolations(data: dict[str, Any], path) -> dict[str, Any]:
    """`${oc.env:VAR}`, `${oc.env:VAR,default}` from this environment; `???` (mandatory) refused with its key; other
    `${...}` (Hydra's runtime values) only where ftl does not read the value (settled in `unwrap`)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for key, value in data.items():
        if value == "???":
            raise FtlError(f"{path}: {key} is mandatory (???) in the file: give it a value (or remove the key)")
    try:
        conf = OmegaConf.create({"hydra": {"sweep": {"dir": "<sweep dir>"}, "job": {"name": "<sweep>"}}, "c": data})
        return OmegaConf.to_container(conf.c, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        msg = str(e).splitlines()[0]
        if "not found" in msg and "oc.env" not in msg and "Environment variable" not in msg:
            msg = f"{msg}: ftl resolves ${{oc.env:...}}; a value from another part of a Hydra config must be written out"
        raise FtlError(f"{path}: {key.removeprefix('c.')}: {msg}") from None


def to_ftl_names(data: dict[str, Any], ftl_keys: set[str], aliases: dict[str, str], path,
                 notes: list[str]) -> dict[str, Any]:  # fmt: skip
    """submitit's names (and `slurm_` prefixes) as ftl's keys; other SlurmExecutor parameters into `slurm`; a key
    neither has: one error with the closest names."""
    out: dict[str, Any] = {}
    raw: dict[str, Any] = dict(data.pop("slurm", None) or {})
    valid = submitit_parameters()
    unknown = []
    for key, value in data.items():
        name = key.removeprefix("slurm_") if key.startswith("slurm_") and key != "slurm" else key
        name = aliases.get(name, name)
        name = SUBMITIT_TO_FTL.get(name, name)
        if name == "mem" and isinstance(value, (str, int)):
            out["mem_gb"] = _mem_gb(value, key, path)
        elif name in ftl_keys:
            out[name] = value
        elif name in valid:
            raw[name] = value
        else:
            unknown.append(key)
    if unknown:
        choices = sorted(ftl_keys | valid | set(aliases))
        shown = [f"'{k}'{_closest(k, choices)}" for k in unknown]
        raise FtlError(f"{path}: unknown key{'s' * (len(unknown) > 1)} {', '.join(shown)}: not an ftl cluster key nor "
                       "a submitit SlurmExecutor parameter")  # fmt: skip
    raw = {k: v for k, v in raw.items() if v is not None}  # null: unset (not written to sbatch)
    if raw:
        out["slurm"] = raw
        if {"mem_per_cpu", "mem_per_gpu"} & set(raw) and "mem_gb" not in out:
            out["mem_gb"] = None  # sbatch refuses --mem beside them: ftl writes no --mem of its own
    if not data.get("executor") and any(k in SLURM_ONLY or k in raw for k in out) | bool(raw):
        out["executor"] = "slurm"
        notes.append("SLURM keys without executor: read as executor: slurm")
    return out


def _closest(key: str, choices: list[str]) -> str:
    return did_you_mean(key.removeprefix("slurm_"), choices, n=2)


def _mem_gb(value: Any, key: str, path) -> float:
    """submitit's / sbatch's mem ("4GB", "4096M", "16G", 4096 = MB) in GB."""
    if isinstance(value, int):
        return value / 1024
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)B?\s*", str(value), re.I)
    if not match:
        raise FtlError(f"{path}: {key}={value!r}: a size as sbatch reads it (4G, 4096M) or mem_gb: 4")
    scale = {"K": 1 / 2**20, "M": 1 / 1024, "": 1 / 1024, "G": 1, "T": 1024}[match[2].upper()]
    return float(match[1]) * scale
