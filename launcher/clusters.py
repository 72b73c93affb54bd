"""Cluster configs (cluster_configs/*.yaml): where and how trials run, validated before anything is submitted.

`local` is the embedded default: trials run as subprocesses on this machine, `max_parallel` at a time. A SLURM
config names the partition and the resources of one trial (nodes x gpus_per_node tasks, one per GPU).
"""

from __future__ import annotations

import dataclasses
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
    nodes: int = 1  # per trial
    gpus_per_node: int = 0  # one task per GPU; 0: one CPU task per node
    cpus_per_task: int = 2
    mem_gb: float = 8
    time_min: int = 60
    array_parallelism: int = 256  # array tasks running at once
    max_requeues: int = 3  # preemptions / time-outs a trial may survive
    setup: list[str] = field(default_factory=list)  # shell lines run before each trial (module load ...)
    sbatch: dict[str, Any] = field(default_factory=dict)  # extra sbatch options, e.g. {exclusive: true}
    env: dict[str, str] = field(default_factory=dict)  # environment of the trials
    wandb_mode: str = "offline"  # offline on compute nodes unless the cluster has a network
    python: str | None = None  # interpreter on the nodes (default: the one running ftl)


def list_clusters() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_cluster(name_or_path: str | None) -> ClusterConfig:
    """A cluster config by name (cluster_configs/NAME.yaml) or path; None is `local`."""
    if name_or_path in (None, "local") and not (CONFIG_DIR / "local.yaml").is_file():
        return ClusterConfig()
    path = Path(name_or_path or "local")
    if not path.is_file():
        path = CONFIG_DIR / f"{name_or_path or 'local'}.yaml"
    if not path.is_file():
        raise FtlError(f"unknown cluster '{name_or_path}'{did_you_mean(str(name_or_path), list_clusters())}; "
                       f"clusters: {', '.join(list_clusters())} (or a path to a YAML file)")  # fmt: skip
    data = read_yaml_mapping(path, "cluster config")
    valid = [f.name for f in dataclasses.fields(ClusterConfig)]
    for key in data:
        if key not in valid:
            raise FtlError(f"{path}: unknown key '{key}'{did_you_mean(key, valid)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ClusterConfig), data)
    except OmegaConfBaseException as e:
        raise FtlError(f"{path}: {getattr(e, 'full_key', '?')}: {str(e).splitlines()[0]}") from None
    cluster = ClusterConfig(**OmegaConf.to_container(merged))  # type: ignore[arg-type]
    problems = []
    if cluster.executor not in ("local", "slurm"):
        problems.append(f"executor={cluster.executor!r} must be local or slurm")
    if cluster.wandb_mode not in ("offline", "online", "disabled"):
        problems.append(f"wandb_mode={cluster.wandb_mode!r} must be offline, online or disabled")
    for key in ("max_parallel", "nodes", "cpus_per_task", "time_min", "array_parallelism"):
        if getattr(cluster, key) < 1:
            problems.append(f"{key}={getattr(cluster, key)} must be >= 1")
    if cluster.gpus_per_node < 0 or cluster.max_requeues < 0:
        problems.append("gpus_per_node and max_requeues must be >= 0")
    if problems:
        raise FtlError(f"{path}: " + "; ".join(problems))
    return cluster


def tasks_per_node(cluster: ClusterConfig) -> int:
    return max(cluster.gpus_per_node, 1)
