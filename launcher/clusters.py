"""Cluster configs (cluster_configs/*.yaml): where and how trials run, validated before anything is submitted.

`local` is the embedded default: trials run as subprocesses on this machine, `max_parallel` at a time. A SLURM
config names the partition and the resources of one trial (nodes x tasks_per_node tasks, one per GPU by default).
Keys are submitit's (and hydra-submitit-launcher's) names - timeout_min, max_num_timeout, additional_parameters,
tasks_per_node, gres, exclude, signal_delay_s ..., with or without AutoExecutor's `slurm_` prefix; a Hydra launcher
file (`_target_`, `defaults: [submitit_slurm]`, `${oc.env:...}`) is read as Hydra reads it; any other SlurmExecutor
parameter (mem_per_gpu, comment, exclusive, ...) is passed to submitit (launcher/cluster_formats.py). ftl's earlier
names (time_min, max_requeues, sbatch) are read as aliases. Every unknown key is reported at once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.config import read_yaml_mapping
from core.errors import FtlError, did_you_mean

CONFIG_DIR = Path(__file__).resolve().parent.parent / "cluster_configs"


@dataclass
class ClusterConfig:
    name: str = "local"
    executor: str = "local"  # local | slurm
    max_parallel: int = 2  # local: trials at a time
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None  # nodes to avoid, e.g. "n[3-4]"
    gres: str | None = None  # generic resources, e.g. "gpu:a100:4" (instead of gpus_per_node)
    nodes: int = 1  # per trial
    gpus_per_node: int = 0
    tasks_per_node: int | None = None  # default: one task per GPU (1 without GPUs)
    cpus_per_task: int | None = 2  # null: not written (the partition's default)
    mem_gb: float | None = 8  # null: not written (mem_per_cpu / mem_per_gpu in `slurm`, or the partition's default)
    # minutes, or a SLURM time string: "90", "1:00:00", "2-00:00:00" (read as SLURM reads it); unset: 60 on SLURM,
    # no limit locally. Enforced on both: USR2 signal_delay_s before it (checkpoint, requeue), killed at it.
    timeout_min: Any = None
    signal_delay_s: int = 90  # USR2 this long before the time limit: the trial checkpoints and requeues
    array_parallelism: int = 256  # array tasks running at once
    max_num_timeout: int = 3  # preemptions / time-outs a trial may survive (requeues)
    setup: list[str] = field(default_factory=list)  # shell lines run before each trial (module load ...)
    additional_parameters: dict[str, Any] = field(default_factory=dict)  # any other sbatch option, {begin: now+1h}
    env: dict[str, Any] = field(default_factory=dict)  # environment of the trials (null: take it from the submitter's)
    secrets: list[str] = field(default_factory=list)  # env names never written to disk (also any *KEY/TOKEN/...)
    wandb_mode: str = "offline"  # offline on compute nodes unless the cluster has a network
    python: str | None = None  # interpreter on the nodes (default: the one running ftl)
    slurm: dict[str, Any] = field(default_factory=dict)  # any other SlurmExecutor parameter, as submitit names it


ALIASES = {"time_min": "timeout_min", "max_requeues": "max_num_timeout", "sbatch": "additional_parameters",
           "time": "timeout_min", "ntasks_per_node": "tasks_per_node"}  # `slurm_X` is X (submitit's AutoExecutor)


def with_current_names(data: dict[str, Any]) -> dict[str, Any]:
    """Aliases (ftl's earlier names, submitit's AutoExecutor slurm_* names) -> the current key names."""
    return {ALIASES.get(k.removeprefix("slurm_"), k.removeprefix("slurm_")) if k != "slurm" else k: v for k, v in data.items()}


def cluster_from_dict(data: dict[str, Any]) -> ClusterConfig:
    """A stored cluster config (sweep.json), whatever names the ftl that wrote it used."""
    known = {f.name for f in dataclasses.fields(ClusterConfig)}
    return ClusterConfig(**{k: v for k, v in with_current_names(data).items() if k in known})


def list_clusters() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_cluster(name_or_path: str | None, notes: list[str] | None = None) -> ClusterConfig:
    """A cluster config by name (cluster_configs/NAME.yaml) or path; None is `local`. ftl's keys, submitit's and
    hydra-submitit-launcher's (launcher/cluster_formats.py); how it was read is appended to `notes`."""
    from launcher.cluster_formats import is_hydra, resolve_interpolations, to_ftl_names, unwrap

    notes = [] if notes is None else notes
    if name_or_path in (None, "local") and not (CONFIG_DIR / "local.yaml").is_file():
        return ClusterConfig()
    path = Path(name_or_path or "local")
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path or 'local'}.yaml"
    if not path.is_file():
        raise FtlError(f"unknown cluster '{name_or_path}'{did_you_mean(str(name_or_path), list_clusters())}; "
                       f"clusters: {', '.join(list_clusters())} (or a path to a YAML file)")  # fmt: skip
    raw = read_yaml_mapping(path, "cluster config")
    data = resolve_interpolations(unwrap(raw, path, notes), path, notes, hydra=is_hydra(raw))
    valid = [f.name for f in dataclasses.fields(ClusterConfig)]
    twice = [f"{k} and {ALIASES[k]}" for k in data if k in ALIASES and ALIASES[k] in data]
    if twice:
        raise FtlError(f"{path}: {twice[0]} name the same setting; keep one")
    data = to_ftl_names(data, set(valid), ALIASES, path, notes)
    data = {k: v for k, v in data.items() if v is not None or k in NULLABLE}  # null: unset (the default)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ClusterConfig), data)
    except OmegaConfBaseException as e:
        raise FtlError(f"{path}: {getattr(e, 'full_key', '?')}: {str(e).splitlines()[0]}") from None
    cluster = ClusterConfig(**OmegaConf.to_container(merged))  # type: ignore[arg-type]
    problems = []
    if cluster.timeout_min is None and cluster.executor == "slurm":
        cluster.timeout_min = 60
    try:
        if cluster.timeout_min is not None:
            cluster.timeout_min = slurm_minutes(cluster.timeout_min)
    except ValueError as e:
        problems.append(f"timeout_min={cluster.timeout_min!r}: {e}")
        cluster.timeout_min = 1
    if cluster.executor not in ("local", "slurm"):
        problems.append(f"executor={cluster.executor!r} must be local or slurm")
    if cluster.wandb_mode not in ("offline", "online", "disabled"):
        problems.append(f"wandb_mode={cluster.wandb_mode!r} must be offline, online or disabled")
    if cluster.timeout_min is not None and cluster.timeout_min <= 0:
        problems.append(f"timeout_min={cluster.timeout_min} must be a positive time")
    for key in ("max_parallel", "nodes", "array_parallelism"):
        if getattr(cluster, key) < 1:
            problems.append(f"{key}={getattr(cluster, key)} must be >= 1")
    if cluster.cpus_per_task is not None and cluster.cpus_per_task < 1:
        problems.append(f"cpus_per_task={cluster.cpus_per_task} must be >= 1")
    if cluster.gpus_per_node < 0 or cluster.max_num_timeout < 0 or cluster.signal_delay_s < 0:
        problems.append("gpus_per_node, max_num_timeout and signal_delay_s must be >= 0")
    if cluster.tasks_per_node is not None and cluster.tasks_per_node < 1:
        problems.append(f"tasks_per_node={cluster.tasks_per_node} must be >= 1")
    if problems:
        raise FtlError(f"{path}: " + "; ".join(problems))
    return cluster


NULLABLE = {"tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "partition", "account", "qos",
            "constraint", "exclude", "gres", "python"}  # fmt: skip


def tasks_per_node(cluster: ClusterConfig) -> int:
    """Tasks of a trial on each node: as configured, else one per GPU (one without GPUs)."""
    return cluster.tasks_per_node or max(cluster.gpus_per_node, 1)


def slurm_minutes(value: Any) -> float:
    """A time limit as SLURM reads it, in minutes (to the second: SLURM rounds up to whole minutes, the local
    executor keeps the seconds): 90 | "90" (minutes) | "90:30" (minutes:seconds) | "1:00:00" (hours:minutes:
    seconds) | "2-12" | "2-12:30" | "2-12:30:00" (days-hours[:minutes[:seconds]])."""
    if isinstance(value, bool):
        raise ValueError("use minutes or a SLURM time string such as 1:00:00 or 2-00:00:00")
    if isinstance(value, (int, float)):
        minutes = float(value)
    else:
        match = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", str(value))
        if not match:
            raise ValueError("use minutes or a SLURM time string: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
        days, a, b, c = match.groups()
        if days is not None:  # D-HH[:MM[:SS]]
            minutes = int(days) * 1440 + int(a) * 60 + int(b or 0) + int(c or 0) / 60
        elif c is not None:  # HH:MM:SS
            minutes = int(a) * 60 + int(b) + int(c) / 60
        else:  # MM[:SS]
            minutes = int(a) + int(b or 0) / 60
    if minutes <= 0:
        raise ValueError("must be a positive time")
    return round(minutes * 60) / 60


SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


def is_secret(cluster: ClusterConfig, name: str) -> bool:
    return name in cluster.secrets or any(word in name.upper() for word in SECRET_WORDS)


def job_environment(cluster: ClusterConfig) -> tuple[dict[str, str], dict[str, str]]:
    """(public, secret) environment of the trials. Public values may be written into submission scripts; secret
    ones come from the cluster file's value or, when it is null, from this (the submitting) environment, and are
    handed over through the environment only (sbatch exports it; the local runner inherits it)."""
    public = {k: str(v) for k, v in cluster.env.items() if v is not None and not is_secret(cluster, k)}
    public["WANDB_MODE"] = cluster.wandb_mode
    names = {*cluster.secrets, *(k for k in cluster.env if is_secret(cluster, k) or cluster.env[k] is None)}
    secret = {}
    for name in names:
        value = cluster.env.get(name)
        value = os.environ.get(name) if value is None else str(value)
        if value is not None:
            secret[name] = value
    return public, secret


def missing_secrets(cluster: ClusterConfig) -> list[str]:
    _, secret = job_environment(cluster)
    names = {*cluster.secrets, *(k for k, v in cluster.env.items() if v is None)}
    return sorted(n for n in names if n not in secret)


def public_dict(cluster: ClusterConfig) -> dict[str, Any]:
    """The cluster config as stored in a sweep dir: secret values left out (null: read again at submission)."""
    data = dataclasses.asdict(cluster)
    data["env"] = {k: (None if is_secret(cluster, k) else v) for k, v in cluster.env.items()}
    return data
