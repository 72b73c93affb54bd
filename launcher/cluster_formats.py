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

import os
import re
import shutil
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


def submitit_parameters() -> set[str]:
    """Every parameter submitit's SlurmExecutor takes (its own list: _make_sbatch_string's keywords)."""
    from submitit.slurm.slurm import SlurmExecutor

    return set(SlurmExecutor._valid_parameters())


def unwrap(data: dict[str, Any], path, notes: list[str]) -> dict[str, Any]:
    """The launcher's keys - from a Hydra 0.x `cls/params` file, a config with a `hydra: launcher:` block, a
    `conf/hydra/*.yaml` with a `launcher:` block, a primary config whose defaults pick the launcher, or the file
    itself - with Hydra-only keys settled."""
    if "params" in data and "cls" in data:
        data = _hydra_0x(data, path, notes)
    selected = _launcher_choice(data.get("defaults"))
    block, where = None, ""
    if isinstance(data.get("hydra"), dict):
        block, where = data["hydra"].get("launcher"), "hydra.launcher"
    elif isinstance(data.get("launcher"), dict):
        block, where = data["launcher"], "launcher (a conf/hydra/ file)"
    if where or selected:
        if block is not None and not isinstance(block, dict):
            raise FtlError(f"{path}: {where}={block!r} must map launcher keys (timeout_min, partition, ...); write them "
                           "under it, as in hydra/launcher/submitit_slurm.yaml")  # fmt: skip
        others = sorted(set(data) - {"hydra", "launcher", "defaults"})
        if not block and not selected:
            raise FtlError(f"{path}: {where or 'the file'} is empty and its defaults pick no launcher: write "
                           "`defaults: [override hydra/launcher: submitit_slurm]` or the launcher's keys under it")  # fmt: skip
        notes.append(f"read {where or 'the launcher its defaults pick'}" + (f"; not read: {', '.join(others)} (the "
                     "application's own config)" if others else ""))  # fmt: skip
        data = dict(block or {})
        if selected == "submitit_0x":  # Hydra 0.11's hydra/launcher/submitit.yaml: queue local
            data.setdefault("executor", "local")
            notes.append("hydra/launcher: submitit is Hydra 0.11's launcher, whose queue is local")
        elif selected and "defaults" not in data:
            data["defaults"] = [selected]
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


def _launcher_choice(defaults: Any) -> str:
    """The launcher a primary config's defaults list picks (`- override hydra/launcher: submitit_slurm`), or ''."""
    for item in defaults if isinstance(defaults, list) else []:
        if isinstance(item, dict):
            for key, value in item.items():
                if str(key).removeprefix("override ").strip("/ ") == "hydra/launcher":
                    return {"submitit": "submitit_0x"}.get(str(value), str(value))
    return ""


def _hydra_0x(data: dict[str, Any], path, notes: list[str]) -> dict[str, Any]:
    """Hydra 0.11's submitit launcher (`cls`, `params: {queue, folder, queue_parameters: {slurm, local, auto}}`):
    the queue it names, with that queue's parameters (submitit's raw names: time, mem, ntasks_per_node, job_name)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    params = data.get("params")
    if not isinstance(params, dict) or not isinstance(params.get("queue_parameters"), dict):
        raise FtlError(f"{path}: params must hold queue and queue_parameters (Hydra 0.11's submitit launcher); "
                       "or write Hydra >= 1.0's hydra/launcher/submitit_slurm.yaml keys")  # fmt: skip
    queue = params.get("queue", "slurm")
    if queue not in ("local", "slurm", "auto"):
        raise FtlError(f"{path}: params.queue={queue!r}: Hydra's submitit launcher has local, slurm and auto")
    executor = queue if queue != "auto" else ("slurm" if shutil.which("sbatch") else "local")
    root = OmegaConf.create({"hydra": {"launcher": data, "sweep": {"dir": "<sweep dir>"}, "job": {"name": "<sweep>"}}})
    try:
        chosen = OmegaConf.to_container(root.hydra.launcher.params.queue_parameters.get(queue) or {}, resolve=True)
    except OmegaConfBaseException as e:
        raise FtlError(f"{path}: params.queue_parameters.{queue}: {str(e).splitlines()[0]}; write the value") from None
    notes.append(f"Hydra 0.11 submitit launcher: queue {queue} -> executor {executor}")
    chosen = {("name" if k == "job_name" else k): v for k, v in chosen.items()}  # type: ignore[union-attr]
    return {**chosen, "executor": executor}


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


LABELS = {"comment"}  # keys that only label a job: an unresolvable one is dropped with a note


def is_hydra(data: dict[str, Any]) -> bool:
    """A Hydra config (its `${...}` are Hydra's), not ftl's or submitit's keywords (where `${VAR}` in a setup line is
    the shell's)."""
    return bool({"_target_", "defaults", "hydra", "cls"} & set(data)) or isinstance(data.get("launcher"), dict)


def resolve_interpolations(data: dict[str, Any], path, notes: list[str] | None = None,
                           hydra: bool = True) -> dict[str, Any]:  # fmt: skip
    """`${oc.env:VAR}`, `${oc.env:VAR,default}` from this environment; `???` (mandatory) refused with its key. In a
    Hydra file, other `${...}` as Hydra resolves them; one naming the application's config (which ftl does not
    read): a label key (comment) is dropped with a note, any other key refused with the value to write. Elsewhere,
    and where OmegaConf's grammar does not parse it (`${#VAR}`, `${VAR:-0}`), `${...}` is the shell's: kept."""
    from omegaconf import OmegaConf
    from omegaconf.errors import GrammarParseError, OmegaConfBaseException

    notes = [] if notes is None else notes
    # as Hydra resolves them: from the config's root, the launcher's siblings at hydra.launcher
    root = OmegaConf.create({"hydra": {"launcher": data, "sweep": {"dir": "<sweep dir>"}, "job": {"name": "<sweep>"}}})
    out = {}
    for key, value in data.items():
        if value == "???":
            raise FtlError(f"{path}: {key} is mandatory (???) in the file: give it a value (or remove the key)")
        env = re.fullmatch(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*),\s*\?\?\?\s*\}", str(value))
        if env and env[1] not in os.environ:
            raise FtlError(f"{path}: {key}: {value} needs {env[1]} in the environment: export {env[1]}=... (or write "
                           f"{key}: VALUE in the file)")  # fmt: skip
        if "${" not in str(value):
            out[key] = value
            continue
        if not hydra:
            out[key] = _env_only(value, key, path)
            continue
        try:
            node = OmegaConf.select(root, f"hydra.launcher.{key}", throw_on_missing=True)
            out[key] = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except GrammarParseError:
            out[key] = value
        except OmegaConfBaseException as e:
            msg = str(e).splitlines()[0]
            if "not found" in msg and "Environment variable" not in msg:
                if key in LABELS:
                    notes.append(f"{key} not used: {value!r} names the application's config, which ftl does not read")
                    continue
                msg = (f"{msg}: {value!r} names the application's Hydra config, which ftl does not read; write "
                       f"{key}: VALUE")  # fmt: skip
            elif "Environment variable" in msg:
                msg = f"{msg}: export it, or write {key}: VALUE in the file"
            raise FtlError(f"{path}: {key}: {msg}") from None
    return out


ENV = re.compile(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")


def _env_only(value: Any, key: str, path) -> Any:
    """`${oc.env:VAR[,default]}` in an ftl or submitit file (strings, lists, mappings); other `${...}` are the
    shell's and kept."""
    if isinstance(value, list):
        return [_env_only(v, key, path) for v in value]
    if isinstance(value, dict):
        return {k: _env_only(v, key, path) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, default = match[1], match[2]
        if name in os.environ:
            return os.environ[name]
        if default is None or default.strip() == "???":
            raise FtlError(f"{path}: {key}: {match[0]} needs {name} in the environment: export {name}=... (or write "
                           f"{key}: VALUE in the file)")  # fmt: skip
        return default.strip().strip("'\"")

    whole = ENV.fullmatch(value.strip())
    if whole:  # the whole value: typed as YAML reads it (`${oc.env:CPUS,6}` into an int field)
        import yaml

        return yaml.safe_load(one(whole))
    dotted = re.search(r"\$\{[A-Za-z_]\w*(\.\w+)+\}", value)  # no shell variable has a dot: a config reference
    if dotted:
        raise FtlError(f"{path}: {key}: {dotted[0]} refers to another config's value, which ftl does not read (this is "
                       f"not a Hydra file); write {key}: VALUE")  # fmt: skip
    return ENV.sub(one, value)


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
