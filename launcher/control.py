"""Sweep control: submit a sweep, and status / resume / cancel / wait on its sweep dir.

Everything is validated (sweep expansion, every override, the cluster config) before a sweep dir exists or a job
is queued; a failed submission leaves nothing behind.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from core import config as config_lib
from core.errors import FtlError
from launcher import manifest as mf
from launcher.clusters import ClusterConfig, load_cluster
from launcher.executors import TrialSpec, create_executor
from launcher.sweep import Sweep, load_sweep

EARLY_STOP_KEYS = {"min_epochs", "reduction_factor"}


def early_stop_spec(sweep: Sweep, sweep_dir: Path) -> dict[str, Any] | None:
    block = sweep.early_stop
    if not block:
        return None
    unknown = set(block) - EARLY_STOP_KEYS
    if unknown:
        raise FtlError(f"{sweep.path}: early_stop.{sorted(unknown)[0]} is not a key; use {sorted(EARLY_STOP_KEYS)}")
    return {"storage": str(sweep_dir.resolve() / "optuna.journal"), "study": sweep.name, "metric": sweep.metric,
            "mode": sweep.mode, "min_epochs": int(block.get("min_epochs", 1)),
            "reduction_factor": int(block.get("reduction_factor", 3))}  # fmt: skip


def specs(man: mf.Manifest, sweep_dir: Path, ids: list[str]) -> list[TrialSpec]:
    """What each job receives; W&B groups a sweep's runs by its name and names each run by its trial id."""
    recipe = str(sweep_dir.resolve() / "recipe.yaml")
    wandb = [f"tracking.group={man.name}"]
    return [TrialSpec(i, recipe, [*wandb, f"tracking.name={i}", *man.overrides, *man.trials[i].overrides],
                      str(sweep_dir.resolve() / man.trials[i].run_dir), man.early_stop) for i in ids]  # fmt: skip


def check_wandb_login(sweep: Sweep, cluster: ClusterConfig) -> None:
    """Online W&B without an API key would hang at a login prompt on a node: refuse before submitting."""
    import os

    from core.tracking import _netrc_has_wandb

    cfg = sweep.base_config
    wandb_on = cfg.tracking.wandb or any(o == "tracking.wandb=true" for t in sweep.trials for o in t.overrides)
    if wandb_on and cluster.wandb_mode == "online":
        if not (os.environ.get("WANDB_API_KEY") or cluster.env.get("WANDB_API_KEY") or _netrc_has_wandb()):
            raise FtlError(f"cluster {cluster.name} has wandb_mode=online but no W&B API key (WANDB_API_KEY or "
                           "`wandb login`); log in, or use wandb_mode: offline and `ftl sync` later")  # fmt: skip


def submit_sweep(sweep_file: str, cluster_name: str | None, out: str | None, overrides: list[str]) -> tuple[Path, mf.Manifest, str]:
    """Expand, validate, write the sweep dir and queue every trial; returns (sweep dir, manifest, note)."""
    sweep = load_sweep(sweep_file, overrides)
    cluster = load_cluster(cluster_name)
    check_wandb_login(sweep, cluster)
    sweep_dir = Path(out) if out else Path("sweeps") / f"{sweep.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if sweep_dir.exists():
        raise FtlError(f"sweep dir {sweep_dir} already exists; continue it with `ftl resume {sweep_dir}` or pick --out")
    early = early_stop_spec(sweep, sweep_dir)
    try:
        sweep_dir.mkdir(parents=True)
        (sweep_dir / "logs").mkdir()
    except OSError as e:
        raise FtlError(f"cannot create the sweep dir {sweep_dir}: {e.strerror}") from None
    try:
        resolved = config_lib.read_recipe(config_lib.resolve_recipe(sweep.recipe))
        (sweep_dir / "recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
        (sweep_dir / "sweep.yaml").write_text(yaml.safe_dump(sweep.spec, sort_keys=False))
        trials = {t.id: mf.TrialRecord(t.id, t.overrides, f"trials/{t.id}") for t in sweep.trials}
        man = mf.Manifest(sweep.name, sweep.recipe, sweep.overrides, sweep.metric, sweep.mode, asdict(cluster), early,
                          mf.now(), trials, sweep_file=sweep.path)  # fmt: skip
        note = _submit(man, sweep_dir, cluster, list(trials))
        mf.write(sweep_dir, man)  # once, complete: job ids included
    except BaseException:
        shutil.rmtree(sweep_dir, ignore_errors=True)  # nothing half-written (the executor queued nothing)
        raise
    return sweep_dir, man, note


def _submit(man: mf.Manifest, sweep_dir: Path, cluster: ClusterConfig, ids: list[str]) -> str:
    job_ids, note = create_executor(cluster, sweep_dir).submit(specs(man, sweep_dir, ids))
    for trial_id in ids:
        record = man.trials[trial_id]
        if trial_id in job_ids:
            record.job_ids.append(job_ids[trial_id])
            record.state = "PENDING"
        else:
            record.state = "HELD"
    return note


@dataclass
class Row:
    id: str
    state: str
    epoch: str
    metric: float | None
    best: float | None
    job_id: str
    overrides: str


def refresh(sweep_dir: str | Path) -> tuple[mf.Manifest, list[Row]]:
    """Query all job states at once (one sacct call on SLURM), merge the trials' own files, update the manifest."""
    sweep_dir = Path(sweep_dir)
    with mf.locked(sweep_dir) as man:
        cluster = ClusterConfig(**man.cluster)
        job_ids = [t.job_id for t in man.trials.values() if t.job_id]
        states = create_executor(cluster, sweep_dir).states(job_ids)
        rows = []
        for t in man.trials.values():
            progress, result = mf.read_trial_files(sweep_dir, t)
            t.state = _trial_state(t, states.get(t.job_id or "", ""), result)
            if result:
                t.result = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
            epoch = f"{progress.get('epoch', 0)}/{progress['epochs']}" if progress else "-"
            rows.append(Row(t.id, t.state, epoch, progress.get(man.metric), progress.get("best") if progress else None,
                            t.job_id or "-", " ".join(t.overrides)))  # fmt: skip
    return man, rows


def _trial_state(record: mf.TrialRecord, job_state: str, result: dict) -> str:
    if result.get("status") == "completed":
        return "COMPLETED"
    if result.get("status") == "pruned":
        return "PRUNED"
    if record.state in ("NEW", "HELD") and not record.job_id:
        return record.state
    if job_state == "COMPLETED":  # the job ended but wrote no result: interrupted without a requeue
        return "FAILED"
    if job_state in ("", "UNKNOWN"):  # accounting lags a second or two behind a fresh submission
        return record.state
    return job_state


def resume(sweep_dir: str | Path) -> tuple[list[str], str]:
    """Resubmit every trial that is not COMPLETED/PRUNED and not queued or running; returns (ids, note)."""
    sweep_dir = Path(sweep_dir)
    man, _ = refresh(sweep_dir)
    active = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}
    ids = [t.id for t in man.trials.values() if t.state not in active | {"COMPLETED", "PRUNED"}]
    if not ids:
        return [], "nothing to resume: every trial is completed, pruned, queued or running"
    with mf.locked(sweep_dir) as man:
        note = _submit(man, sweep_dir, ClusterConfig(**man.cluster), ids)
    return ids, note


def cancel(sweep_dir: str | Path) -> int:
    """Cancel every queued or running trial; finished results are kept."""
    sweep_dir = Path(sweep_dir)
    man, _ = refresh(sweep_dir)
    live = [t for t in man.trials.values() if t.job_id and t.state not in mf.FINAL_STATES]
    create_executor(ClusterConfig(**man.cluster), sweep_dir).cancel([t.job_id for t in live])  # type: ignore[misc]
    with mf.locked(sweep_dir) as man:
        for t in live:
            man.trials[t.id].state = "CANCELLED"
    return len(live)


def offline_wandb_runs(sweep_dir: str | Path) -> list[Path]:
    """The offline W&B run dirs of a sweep's trials (one per trial, or more after a resume)."""
    man = mf.read(sweep_dir)
    return sorted(p for t in man.trials.values() for p in (Path(sweep_dir) / t.run_dir / "wandb").glob("offline-run-*"))


def sync(sweep_dir: str | Path, dry_run: bool = False) -> list[Path]:
    """Upload a sweep's offline W&B runs with `wandb sync` (needs a network and a login)."""
    import subprocess
    import sys

    runs = offline_wandb_runs(sweep_dir)
    if runs and not dry_run:
        wandb_cli = Path(sys.executable).parent / "wandb"
        proc = subprocess.run([str(wandb_cli), "sync", "--include-offline", *map(str, runs)], capture_output=True,
                              text=True)  # fmt: skip
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise FtlError(f"wandb sync failed (network or login?): {tail[0]}")
    return runs


def wait(sweep_dir: str | Path, poll_s: float = 5.0, timeout_s: float | None = None) -> mf.Manifest:
    """Block until every submitted trial reaches a final state, with a progress bar."""
    from tqdm import tqdm

    man, rows = refresh(sweep_dir)
    submitted = [r for r in rows if r.state not in ("NEW", "HELD")]
    start = time.monotonic()
    with tqdm(total=len(submitted), desc="trials done", unit="trial", disable=None) as bar:  # no bar in logs
        while True:
            done = sum(r.state in mf.FINAL_STATES for r in rows if r.state not in ("NEW", "HELD"))
            bar.n = done
            best = man.best()
            bar.set_postfix_str(f"best {man.metric} {best.result[man.metric]:.4f}" if best else "", refresh=False)
            bar.refresh()
            if done >= len(submitted):
                return man
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise FtlError(f"ftl wait: {len(submitted) - done} trials still running after {timeout_s:.0f}s")
            time.sleep(poll_s)
            man, rows = refresh(sweep_dir)
