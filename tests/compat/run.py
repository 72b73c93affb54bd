"""The compatibility corpus (tests/compat/corpus: real W&B sweep files, Hydra submitit-launcher configs and submitit
keyword sets from public repositories, SOURCES.yaml) read by ftl, each outcome classified and checked against the
tools' own code - W&B's `sweeps` package (its schema and its samplers) and submitit's executors - never by eye.

    python -m tests.compat.run            the table (docs/compat.md holds the last one)

Outcomes:
    runs as written       accepted, and what ftl runs is what the tool would: W&B's values (types, ranges, q,
                          the grid's combinations, the metric's goal, the budget, hyperband's first stop), or
                          the #SBATCH parameters submitit would get from the Hydra launcher
    refused: W&B too      W&B's own schema rejects the file; ftl's one line says why and what to write
    refused: not in ftl   a parameter or key names nothing ftl has; the line names it and the nearest keys
    refused: unsupported  something ftl cannot run (an unbounded distribution); the line says what to write
    unclear               refused without naming the key and a fix
    traceback             a crash
    wrong                 accepted, but not what the tool would do
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CORPUS = Path(__file__).resolve().parent / "corpus"
GOOD = ("runs as written", "refused: W&B too", "refused: not in ftl", "refused: unsupported")


@dataclass
class Outcome:
    file: str
    kind: str
    outcome: str
    detail: str


def sources() -> list[dict[str, Any]]:
    return yaml.safe_load((CORPUS / "SOURCES.yaml").read_text())


def wandb_oracle():
    """W&B's sweeps package (the controller's schema and samplers), or None where it is not installed."""
    try:
        import sweeps.config
        import sweeps.params
    except ImportError:
        return None
    return sweeps


# ---------------------------------------------------------------- W&B sweep files


def wandb_violations(oracle, spec: dict[str, Any]) -> list[str]:
    """W&B's own schema violations, its deprecation notes left out (the cloud runs those, with a warning)."""
    try:
        found = oracle.config.schema_violations_from_proposed_config(spec)
    except Exception as e:  # noqa: BLE001 - W&B's validator itself gives up on some malformed files
        return [f"{type(e).__name__}: {e}"]
    return [v for v in found if "Use log_uniform_values" not in v and "uses inv_log_uniform" not in v
            and "uses q_log_uniform" not in v and "'ax' is not one of" not in v]  # fmt: skip (ax: sweeps >= 0.4)


def check_wandb(path: Path, data_dir: Path, oracle) -> Outcome:
    from core.errors import FtlError
    from launcher.sweep import load_sweep

    name = str(path.relative_to(CORPUS))
    spec = yaml.safe_load(path.read_text())  # as W&B's CLI reads it (YAML 1.1)
    w_rejects = wandb_violations(oracle, spec) if oracle and isinstance(spec, dict) else []
    try:
        sweep = load_sweep(path, [f"data.train_dir={data_dir}"], recipe="base")
    except FtlError as e:
        return Outcome(name, "wandb", classify_refusal(str(e), path, w_rejects), str(e))
    except Exception as e:  # noqa: BLE001 - a crash is an outcome here
        return Outcome(name, "wandb", "traceback", f"{type(e).__name__}: {e} | {traceback.format_exc(limit=-2)}")
    if w_rejects:
        return Outcome(name, "wandb", "wrong", f"accepted, but W&B rejects it: {w_rejects[0]}")
    problem = compare_with_wandb(spec, sweep, oracle)
    return Outcome(name, "wandb", "wrong" if problem else "runs as written", problem or "; ".join(sweep.notes))


def classify_refusal(message: str, path: Path, w_rejects: list[str]) -> str:
    """A refusal is clear when it names the file and says what to write; which kind of refusal it is."""
    clear = str(path) in message and any(w in message for w in ("did you mean", "write", "use ", "add ", "keep one",
                                                                  "remove", "give", "name it", "; ftl reads"))  # fmt: skip
    if not clear:
        return "unclear"
    if w_rejects or "W&B:" in message or "(W&B" in message:
        return "refused: W&B too" if w_rejects else ("refused: not in ftl" if "names no ftl" in message else "refused: unsupported")
    if any(w in message for w in ("names no ftl config key", "not one W&B accepts", "names no metric ftl logs")):
        return "refused: not in ftl"
    return "refused: unsupported"


def compare_with_wandb(spec: dict[str, Any], sweep, oracle) -> str:
    """'' when what ftl runs is what W&B would; else what differs."""
    metric = spec.get("metric") or {}
    if metric and sweep.mode != ("max" if metric.get("goal") == "maximize" else "min"):
        return f"metric goal {metric.get('goal')!r} read as mode {sweep.mode}"
    if oracle is None:
        return ""
    params = flat_params(spec["parameters"])
    if spec["method"] == "grid":
        return compare_grid(spec, params, sweep, oracle)
    if sweep.search["n_trials"] != spec.get("run_cap", sweep.search["n_trials"]):
        return f"run_cap {spec.get('run_cap')} read as n_trials {sweep.search['n_trials']}"
    et = spec.get("early_terminate")
    if et and sweep.search["early_stop"]["min_epochs"] != first_band(et):
        return f"hyperband first stop {sweep.search['early_stop']['min_epochs']}, W&B's {first_band(et)}"
    return compare_samples(params, sweep, oracle)


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    out = {}
    for name, p in params.items():
        if isinstance(p, dict) and "parameters" in p:
            out.update(flat_params(p["parameters"], f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = p
    return out


def first_band(et: dict[str, Any]) -> int:
    """W&B's first hyperband band (hyperband_stopping.py's rule)."""
    eta = et.get("eta", 3)
    if "max_iter" in et:
        band, bands = et["max_iter"], []
        for _ in range(int(et["s"])):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
        return min(bands)
    return int(et["min_iter"])


def ftl_values(sweep, n: int = 40) -> list[dict[str, Any]]:
    """n trials of ftl's search space as its workers would ask them (Optuna's random sampler), typed."""
    import optuna

    from jobs.study import suggest

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append({o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in suggest(trial, sweep.search["space"], "random", 0)})
        study.tell(trial, 0.0)
    fixed = {o.split("=", 1)[0]: yaml.safe_load(o.split("=", 1)[1]) for o in sweep.overrides if "=" in o}
    return [{**fixed, **v} for v in out]


def key_of(sweep, name: str) -> str:
    """The ftl key a W&B parameter was read as (the sweep's notes say `name -> key`)."""
    for note in sweep.notes:
        if note.startswith(f"{name} -> "):
            return note.split(" -> ", 1)[1]
    return name


def compare_samples(params: dict[str, Any], sweep, oracle) -> str:
    samples = ftl_values(sweep)
    for name, p in params.items():
        key = key_of(sweep, name)
        hp = oracle.params.HyperParameter(name, p)
        us = [i / 200 for i in range(1, 200)]
        wb = [hp.ppf(u) for u in us]
        got = [s.get(key) for s in samples]
        if hp.type in (hp.CONSTANT,):
            if any(g != p["value"] for g in got):
                return f"{name}: constant {p['value']!r}, ftl ran {got[0]!r}"
            continue
        if hp.type in (hp.CATEGORICAL, hp.CATEGORICAL_PROB):
            if any(g not in p["values"] for g in got):
                return f"{name}: ftl ran {[g for g in got if g not in p['values']][:2]}, not among {p['values']}"
            continue
        numbers = [float(w) for w in wb]
        lo, hi = min(numbers), max(numbers)
        integer = all(isinstance(w, (int,)) or type(w).__name__.startswith("int") for w in wb)
        for g in got:
            if not isinstance(g, (int, float)) or isinstance(g, bool):
                return f"{name}: ftl ran {g!r}, W&B draws numbers"
            if integer and not float(g).is_integer():
                return f"{name}: ftl ran {g!r}, W&B draws integers ({hp.type})"
            span = max(abs(hi - lo), 1e-12)
            if g < lo - span * 0.02 - float(p.get("q", 0) or 0) or g > hi + span * 0.02 + float(p.get("q", 0) or 0):
                return f"{name}: ftl ran {g!r}, outside W&B's draws [{lo:g}, {hi:g}]"
            q = p.get("q", 1.0 if hp.type.startswith("param_q") else None)
            if q and abs(g / q - round(g / q)) > 1e-6:
                return f"{name}: ftl ran {g!r}, not a multiple of q={q}"
    return ""


def compare_grid(spec: dict[str, Any], params: dict[str, Any], sweep, oracle) -> str:
    """ftl's trials against W&B's grid (its grid_search over no finished runs, run after run)."""
    config = oracle.SweepConfig(spec)
    runs: list = []
    while True:
        suggestion = oracle.next_run(config, runs)
        if suggestion is None or len(runs) > 10_000:
            break
        runs.append(suggestion)
    cap = spec.get("run_cap")
    from launcher.key_names import translate

    wb = {tuple(sorted((key_of(sweep, k), _canon(translate(k, v["value"]))) for k, v in flat_config(r.config).items()
                       if k in params and "value" not in params[k])) for r in runs}  # fmt: skip
    ftl = {tuple(sorted((k, _canon(yaml.safe_load(v))) for k, v in (o.split("=", 1) for o in t.overrides)))
           for t in sweep.trials}  # fmt: skip
    if cap is None and wb != ftl:
        return f"grid: {len(ftl)} trials, W&B runs {len(wb)} ({sorted(wb - ftl)[:1]} missing, {sorted(ftl - wb)[:1]} extra)"
    if cap is not None and (len(ftl) != min(cap, len(wb)) or not ftl <= wb):
        return f"grid with run_cap {cap}: {len(ftl)} trials, W&B runs {min(cap, len(wb))}"
    return ""


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in config.items():
        if isinstance(v.get("value"), dict) and k not in ("value",):
            out.update({f"{k}.{ik}": {"value": iv} for ik, iv in v["value"].items()})
        else:
            out[k] = v
    return out


def _canon(value: Any) -> Any:
    """One spelling per value: what a program gets on its command line (`--lr=1e-3` from W&B's YAML 1.1 string
    '1e-3' or from the number) means the same number."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return tuple(value) if isinstance(value, list) else value


# ---------------------------------------------------------------- Hydra launcher configs and submitit keyword sets


def check_cluster(path: Path, kind: str, work: Path) -> Outcome:
    from core.errors import FtlError
    from launcher.clusters import load_cluster

    name = str(path.relative_to(CORPUS))
    for var in re.findall(r"\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*),\s*\?\?\?\s*\}", path.read_text()):
        os.environ.setdefault(var, f"corpus-{var.lower()}")  # as on the author's cluster, where it is set
    try:
        notes: list[str] = []
        cluster = load_cluster(str(path), notes)
    except FtlError as e:
        message = str(e)
        clear = str(path) in message and any(w in message for w in ("did you mean", "give", "write", "ftl reads"))
        kind_of = "refused: not in ftl" if "unknown key" in message else "refused: unsupported"
        return Outcome(name, kind, kind_of if clear else "unclear", message)
    except Exception as e:  # noqa: BLE001
        return Outcome(name, kind, "traceback", f"{type(e).__name__}: {e} | {traceback.format_exc(limit=-2)}")
    problem = compare_with_submitit(path, kind, cluster, work)
    return Outcome(name, kind, "wrong" if problem else "runs as written",
                   problem or "; ".join([f"executor {cluster.executor}", *notes]))


def reference_parameters(path: Path, kind: str, work: Path) -> dict[str, Any] | None:
    """The SlurmExecutor parameters the file gives submitit, as hydra-submitit-launcher (or the training script's
    AutoExecutor call) passes them; None where the file is not a SLURM config."""
    import submitit
    from omegaconf import OmegaConf

    from launcher.cluster_formats import resolve_interpolations, unwrap

    raw = yaml.safe_load(path.read_text()) or {}
    data = unwrap(dict(raw), path, [])
    if data.get("executor") == "local":
        return None
    data.pop("executor", None)
    data = resolve_interpolations(data, path)
    data = {k: v for k, v in data.items() if v is not None}
    generic = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "stderr_to_stdout"}
    params = {k if (k in generic or k.startswith("slurm_")) else f"slurm_{k}": v for k, v in data.items()}
    executor = submitit.AutoExecutor(folder=str(work / path.stem), cluster="slurm")
    try:
        executor.update_parameters(**OmegaConf.to_container(OmegaConf.create(params)))
    except Exception:  # noqa: BLE001 - submitit itself refuses the keyword set
        return {}
    return dict(executor._executor.parameters)


def compare_with_submitit(path: Path, kind: str, cluster, work: Path) -> str:
    """'' when ftl gives submitit what the tool would (the keys the file sets); else what differs."""
    from launcher.slurm_executor import SlurmExecutor

    reference = reference_parameters(path, kind, work)
    if reference is None:
        return "" if cluster.executor == "local" else f"executor {cluster.executor}, the file is a local launcher"
    if not reference:
        return ""
    if cluster.executor != "slurm":
        return f"read as executor {cluster.executor}, the file is a SLURM launcher"
    ours = dict(SlurmExecutor(cluster, work / path.stem)._submitit(4, "ftl-x").parameters)
    skip = {"job_name", "array_parallelism", "setup"}
    for key, value in reference.items():
        if key in skip:
            continue
        mine = ours.get(key)
        if key == "mem" and mine is not None:
            mine, value = _mb(mine), _mb(value)
        if key == "gpus_per_node" and value == 0:
            value = None  # sbatch --gpus-per-node=0 asks for what no flag asks for: no GPU
        if mine != value:
            return f"{key}: ftl gives submitit {mine!r}, the launcher {value!r}"
    return ""


def _mb(text: Any) -> float:
    number = float(str(text).rstrip("GBMK") or 0)
    return number * 1024 if str(text).upper().endswith(("G", "GB")) else number


# ---------------------------------------------------------------- the table


def run(data_dir: Path) -> list[Outcome]:
    oracle = wandb_oracle()
    out = []
    for entry in sources():
        path = CORPUS / entry["file"]
        if entry["kind"] == "wandb":
            out.append(check_wandb(path, data_dir, oracle))
        else:
            out.append(check_cluster(path, entry["kind"], data_dir / "submitit"))
    return out


def summary(outcomes: list[Outcome]) -> str:
    """The counts table: one row per kind of file, one column per outcome."""
    by: dict[str, dict[str, int]] = {}
    for o in outcomes:
        by.setdefault(o.kind, {}).setdefault(o.outcome, 0)
        by[o.kind][o.outcome] += 1
    columns = (*GOOD, "unclear", "traceback", "wrong")
    lines = ["| kind | files | " + " | ".join(columns) + " |", "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |"]
    for kind, counts in by.items():
        lines.append(f"| {kind} | {sum(counts.values())} | " + " | ".join(str(counts.get(k, 0)) for k in columns) + " |")
    return "\n".join(lines)


def table(outcomes: list[Outcome], data_dir: Path) -> str:
    """The summary, then one row per file with what ftl said (or the notes of what it ran)."""
    lines = [summary(outcomes), "", "| file | outcome | what ftl said or ran |", "| --- | --- | --- |"]
    for o in outcomes:
        detail = o.detail.replace(f"{CORPUS}/", "").replace(str(data_dir), "DATA").replace("|", "/")
        lines.append(f"| {o.file} | {o.outcome} | {detail[:240]} |")
    return "\n".join(lines)


DOC = Path(__file__).resolve().parents[2] / "docs" / "compat.md"
HEADER = """# Compatibility corpus: real W&B sweep files and Hydra / submitit cluster configs

Real files from public repositories (tests/compat/corpus, with each file's source URL, commit and licence in
SOURCES.yaml), read by ftl as their authors wrote them; `python -m tests.compat.run --write` regenerates this page
and tests/compat/test_corpus.py fails when ftl's outcome and this page disagree. Correctness is checked against the
tools' own code: W&B's `sweeps` package (its schema, its samplers' distributions, its grid, hyperband's bands) and
the #SBATCH parameters submitit's executor gets from the Hydra launcher. Outcomes are described in tests/compat/run.py.

Most W&B files in the corpus were written for programs other than an image classifier (language models, GANs,
segmentation): they are refused for the parameter that names something ftl does not have, with the nearest ftl keys.

"""


def with_data_dir(fn):
    """fn(data_dir) with a temporary train dir of two classes (what a dry run needs to see)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for cls in ("a", "b"):
            (Path(tmp) / cls).mkdir()
        return fn(Path(tmp))


if __name__ == "__main__":
    outcomes, text = with_data_dir(lambda d: (lambda o: (o, table(o, d)))(run(d)))
    print(text)
    if "--write" in sys.argv:
        DOC.write_text(HEADER + text + "\n")
    sys.exit(any(o.outcome not in GOOD for o in outcomes))
