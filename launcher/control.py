"""Sweep control: submit a sweep, and status / resume / cancel / wait on its sweep dir.

Everything is validated (the sweep, every trial's config, the cluster) before a sweep dir exists or a job is
queued. Every command that decides something about trials decides and acts under the sweep lock, on state read
fresh inside it (launcher/manifest.py), so two commands at once never queue a trial twice.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from core import config as config_lib
from core.errors import FtlError
from core.fileio import write_text_atomic
from core.tracking import shown_overrides
from launcher import manifest as mf
from launcher import states as st
from launcher.clusters import ClusterConfig, cluster_from_dict, load_cluster, missing_secrets, public_dict
from launcher.executors import Executor, create_executor
from launcher.sweep import Sweep, load_sweep


def early_stop_spec(sweep: Sweep, sweep_dir: Path) -> dict[str, Any] | None:
    """What each grid trial's early-stopping reporter needs (jobs/early_stop.py; a search's workers pass theirs)."""
    if not sweep.early_stop or sweep.search:
        return None
    return {"storage": str(sweep_dir.resolve() / "optuna.journal"), "study": sweep.name, "metric": sweep.metric,
            "mode": sweep.mode, "pruner": sweep.early_stop}  # fmt: skip


def check_wandb_login(sweep: Sweep, cluster: ClusterConfig) -> None:
    """Online W&B without an API key would hang at a login prompt on a node: refuse before submitting."""
    from core.tracking import has_credentials

    cfg = sweep.base_config
    wandb_on = cfg.tracking.wandb or any(o == "tracking.wandb=true" for t in sweep.trials for o in t.overrides)
    if wandb_on and cluster.wandb_mode == "online" and not (cluster.env.get("WANDB_API_KEY") or has_credentials()):
        raise FtlError(f"cluster {cluster.name} has wandb_mode=online but no W&B API key (WANDB_API_KEY or "
                       "`wandb login`); log in, or use wandb_mode: offline and `ftl sync` later")  # fmt: skip


def check_secrets(cluster: ClusterConfig) -> None:
    missing = missing_secrets(cluster)
    if missing:
        raise FtlError(f"cluster {cluster.name}: {', '.join(missing)} must be set in this environment (secrets are "
                       "taken from it at submission and never written to disk); export them and retry")  # fmt: skip


def executor_for(man: mf.Manifest) -> Executor:
    return create_executor(cluster_from_dict(man.cluster), man.dir)


def submit_sweep(sweep_file: str, cluster_name: str | None, out: str | None, overrides: list[str],
                 on_created=lambda sweep_dir, man: None, say=lambda text: None,
                 recipe: str | None = None) -> tuple[Path, mf.Manifest, str]:  # fmt: skip
    """Expand and validate, write the sweep dir complete, then queue its trials; returns (sweep dir, manifest, note).

    A refusal before anything was queued removes the sweep dir again; after that, the dir stays (with what was
    queued recorded) and `ftl resume` queues the rest. Ctrl-C never removes a dir with queued jobs."""
    sweep = load_sweep(sweep_file, overrides, recipe)
    cluster_notes: list[str] = []
    cluster = load_cluster(cluster_name, cluster_notes)
    if sweep.notes or cluster_notes:
        say(sweep.notes + [f"cluster: {n}" for n in cluster_notes])
    if sweep.max_parallel:  # `max_parallel` of a grid (its file or the command line): trials at a time
        cluster.max_parallel = cluster.array_parallelism = sweep.max_parallel
    check_wandb_login(sweep, cluster)
    check_secrets(cluster)
    sweep_dir = Path(out) if out else Path("sweeps") / f"{sweep.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if sweep_dir.exists() and sweep.search and (sweep_dir / mf.SWEEP).is_file():
        return extend_search(sweep_dir, sweep), mf.read(sweep_dir), "the search continues with its study"
    if sweep_dir.exists() and (sweep_dir / mf.SWEEP).is_file():
        return sweep_dir, *extend_grid(sweep_dir, sweep)
    if sweep_dir.exists():
        raise FtlError(f"sweep dir {sweep_dir} already exists; continue it with `ftl resume {sweep_dir}` or pick --out")
    executor = create_executor(cluster, sweep_dir)
    executor.limits()  # the cluster answers (partition exists, limits readable) before the dir is written
    executor.check_request()  # and could run a trial as configured (SLURM: sbatch --test-only)
    resolved = config_lib.read_recipe(config_lib.resolve_recipe(sweep.recipe))
    folder = "workers" if sweep.search else "trials"
    trials = {t.id: mf.TrialRecord(t.id, t.overrides, f"{folder}/{t.id}") for t in sweep.trials}
    man = mf.Manifest(sweep.name, sweep.recipe, sweep.overrides, sweep.metric, sweep.mode, public_dict(cluster),
                      early_stop_spec(sweep, sweep_dir), mf.now(), trials, sweep_file=sweep.path, uid=mf.new_uid(),
                      search=sweep.search, max_attempts=sweep.max_attempts)  # fmt: skip
    mf.create(sweep_dir, man, {"recipe.yaml": yaml.safe_dump(resolved, sort_keys=False),
                               "sweep.yaml": yaml.safe_dump(sweep.spec, sort_keys=False)})  # fmt: skip
    on_created(sweep_dir, man)
    try:
        with mf.locked(sweep_dir) as man:
            note = executor.submit(man, list(man.jobs.values()))
    except FtlError as e:
        queued = sum(bool(t.job_ids) for t in mf.read(sweep_dir).jobs.values())
        if not queued:
            shutil.rmtree(sweep_dir, ignore_errors=True)  # nothing was queued: leave nothing behind
            raise
        what = "search workers" if man.search else "trials"
        raise FtlError(f"{e}; {queued} of {len(man.jobs)} {what} were queued and are recorded in {sweep_dir}: "
                       f"fix the cause, then `ftl resume {sweep_dir}` queues the rest") from None  # fmt: skip
    return sweep_dir, man, note


# A search's settings, by what extending it may do with each: applied from now on, or refused (another study)
EXTEND_APPLIES = ("n_trials", "max_parallel", "stale_after_s", "max_attempts")
EXTEND_REFUSES = ("space_hash", "method", "seed", "program", "early_stop")


def extend_search(sweep_dir: Path, sweep: Sweep) -> Path:
    """`ftl sweep FILE --out DIR n_trials=N` on an existing search: the same study with a new budget, worker count,
    stale_after_s or max_attempts (applied from now on), then its workers resumed. Anything else changed - the
    space, method, seed, program, early stopping, metric, recipe or overrides - would make another study: refused,
    with what changed. A budget below the trials already asked is refused."""
    with mf.locked(sweep_dir) as man:
        old, new = man.search, sweep.search
        if not old or not new:
            raise FtlError(f"sweep dir {sweep_dir} is not a search: continue it with `ftl resume {sweep_dir}`")
        check_study(man)
        changed = [k.replace("_hash", "") for k in EXTEND_REFUSES if old.get(k) != new.get(k)]
        changed += _changed(man, sweep)
        if changed:
            raise FtlError(f"sweep dir {sweep_dir} holds a search with another {' / '.join(changed)}: continuing its "
                           "study with a changed search would mix two searches; pick a new --out")  # fmt: skip
        if new["n_trials"] < len(man.trials):
            raise FtlError(f"n_trials={new['n_trials']} is below the {len(man.trials)} trials this search already "
                           f"asked; give n_trials >= {len(man.trials)}")  # fmt: skip
        settings = {k: new[k] for k in EXTEND_APPLIES if k in new and old.get(k) != new[k]}
        if settings:
            man.append([{"e": "search", **settings}])
    resume(sweep_dir)
    return sweep_dir


def _changed(man: mf.Manifest, sweep: Sweep) -> list[str]:
    """What the sweep file changes that makes its trials not compare with the launched ones."""
    return [k for k in ("recipe", "metric", "mode", "overrides") if getattr(man, k) != getattr(sweep, k)]


def extend_grid(sweep_dir: Path, sweep: Sweep) -> tuple[mf.Manifest, str]:
    """`ftl sweep FILE --out DIR` on an existing grid: the trials of FILE that DIR does not hold yet (new values,
    new seeds) are added and queued, with every unfinished trial (as `ftl resume`); finished ones never run again.
    Another recipe, metric or sweep-wide overrides would compare trials that are not alike: refused."""
    with mf.locked(sweep_dir) as man:
        if man.search or sweep.search:
            raise FtlError(f"sweep dir {sweep_dir} holds a {'search' if man.search else 'grid'} and {sweep.path} is "
                           f"a {'search' if sweep.search else 'grid'}: pick a new --out")  # fmt: skip
        if changed := _changed(man, sweep):
            raise FtlError(f"sweep dir {sweep_dir} holds a grid with another {' / '.join(changed)}: its trials would "
                           f"not compare with the new ones; pick a new --out")  # fmt: skip
        new = [t for t in sweep.trials if t.id not in man.jobs]
        if new:
            man.append([{"e": "add", "trials": [[t.id, t.overrides] for t in new]}])
            write_text_atomic(sweep_dir / "sweep.yaml", yaml.safe_dump(sweep.spec, sort_keys=False))
    ids, note = resume(sweep_dir)
    kept = len(sweep.trials) - len(new)
    grown = f"{len(new)} new trials added ({kept} of the file's {len(sweep.trials)} were there already)"
    return mf.read(sweep_dir), grown + (f"; queued {len(ids)} trials" if ids else f"; {note}")


@dataclass
class Row:
    id: str
    state: str
    epoch: str  # "done/total"
    metric: float | None
    best: float | None
    job_id: str
    overrides: str
    step: str = "-"  # "step/steps" within the running epoch
    img_per_s: float | None = None
    eta_s: float | None = None
    cause: str = ""  # why it did not succeed


@mf.gc_paused()
def refresh(sweep_dir: str | Path, recover: bool = True) -> tuple[mf.Manifest, list[Row]]:
    """Fresh states of every trial (one scheduler query for all), merged with the trials' own files. Read without
    the sweep lock; what changed is appended in one short hold of it (`manifest.commit`). Jobs an interrupted
    submission queued are adopted; the local runner is replaced if it died."""
    man = mf.read(sweep_dir)
    executor = executor_for(man)
    if recover:
        executor.recover(man, cancel_orphans=False)
    files = mf.TrialFiles(man)
    executor.refresh(man, files)
    mf.commit(man)  # also folds what was appended meanwhile: a worker that ended has told its trials
    executor.after_change(man)
    return man, rows_of(man, files)


def rows_of(man: mf.Manifest, files: mf.TrialFiles | None = None) -> list[Row]:
    files = files or mf.TrialFiles(man)
    rows = []
    for t in man.trials.values():
        progress, result = files(t)
        if not progress and not result and not t.result:  # not started (most of a large queued sweep)
            rows.append(Row(t.id, t.state, "-", None, None, t.job_id or "-", shown_overrides(t.overrides), "-", None, None,
                            t.cause))  # fmt: skip
            continue
        epoch = f"{progress.get('epoch', 0)}/{progress['epochs']}" if "epochs" in progress else "-"
        metric = result.get(man.metric, progress.get(man.metric, t.result.get(man.metric)))
        best = progress.get("best") if isinstance(progress.get("best"), (int, float)) else None
        live = st.phase(t.state) == "live" and "steps_per_epoch" in progress
        rows.append(Row(t.id, t.state, epoch, metric if isinstance(metric, (int, float)) else None, best,
                        t.job_id or "-", shown_overrides(t.overrides),
                        f"{progress.get('step_in_epoch', 0)}/{progress['steps_per_epoch']}" if live else "-",
                        progress.get("img_per_s") if live else None, progress.get("eta_s") if live else None,
                        t.cause if not st.is_success(t.state) else ""))  # fmt: skip
    return rows


def resume(sweep_dir: str | Path, max_attempts: int | None = None) -> tuple[list[str], str]:
    """Queue again every trial that needs it (never submitted, held back, interrupted submission, failed, held by
    SLURM, lost, or still being cancelled - a new attempt fences the old one: core/lease.py); one locked decision,
    so a second `ftl resume` at the same time finds nothing left to do. A trial that failed max_attempts times
    is left FAILED with its cause (max_attempts raises the sweep's limit from now on)."""
    sweep_dir = Path(sweep_dir)
    with mf.locked(sweep_dir) as man:
        if max_attempts is not None and max_attempts != man.max_attempts:
            man.append([{"e": "settings", "max_attempts": max_attempts}])
        cluster = cluster_from_dict(man.cluster)
        check_secrets(cluster)
        check_study(man)
        executor = create_executor(cluster, sweep_dir)
        executor.recover(man, cancel_orphans=True)
        executor.refresh(man, mf.TrialFiles(man))
        wanted = [t for t in man.jobs.values() if st.needs_resume(t.state) or t.state == "CANCELLING"]
        if man.search:  # every slot that is not queued or running, while trials are left to ask or to finish
            wanted = [t for t in man.jobs.values() if st.is_settled(t.state) or t.state == "CANCELLING"]
            wanted = wanted if search_has_work(man) else []
        todo = [t for t in wanted if man.search or t.failures < man.max_attempts]
        poisoned = len(wanted) - len(todo)
        held = [t.job_id for t in todo if st.phase(t.state) == "held" and t.job_id]
        if held:
            executor.cancel(held)  # REQUEUE_HOLD / SPECIAL_EXIT: cancelled, then queued afresh (exact resume)
        note = (f"{poisoned} trials failed {man.max_attempts} times and stay FAILED (`ftl status` shows why; "
                f"`ftl resume {sweep_dir} --max-attempts N` retries them)" if poisoned else "")  # fmt: skip
        if not todo:
            executor.after_change(man)
            what = "the search's budget is spent" if man.search else "every trial is completed, pruned, queued or running"
            return [], note or f"nothing to resume: {what}"
        submitted = executor.submit(man, todo)
    note = "; ".join(n for n in (submitted, note) if n)
    return [t.id for t in todo if t.job_ids and t.state == "PENDING"], note


def cancel(sweep_dir: str | Path) -> int:
    """Cancel every queued or running job (marked first, so the mark sticks whatever the scheduler reports next);
    finished results are kept. A cancelled job is CANCELLING until its process is gone (it saves a checkpoint
    first; the local runner kills it after KILL_WAIT_S, SLURM after its KillWait). Returns how many."""
    sweep_dir = Path(sweep_dir)
    with mf.locked(sweep_dir) as man:
        executor = executor_for(man)
        executor.recover(man, cancel_orphans=True)
        executor.refresh(man, mf.TrialFiles(man))
        live = [t for t in man.jobs.values() if t.job_id and st.phase(t.state) in ("pending", "live", "held", "unknown")
                and t.state != "CANCELLING"]  # fmt: skip
        for t in live:
            man.update(t, cancelled=True, state="CANCELLING" if st.phase(t.state) == "live" else "CANCELLED")
        mf.save_states(man)
        executor.cancel([t.job_id for t in live if t.job_id])
    return len(live)


def sync(sweep_dir: str | Path, dry_run: bool = False, entity: str | None = None,
         project: str | None = None) -> list[Path]:  # fmt: skip
    """Upload a sweep's offline W&B runs (launcher/wandb_sync.py), with states fresh so runs still being written
    are left for later."""
    from launcher import wandb_sync

    refresh(sweep_dir)
    return wandb_sync.sync(sweep_dir, dry_run, entity, project)


DEFAULT_WAIT_S = 7 * 24 * 3600


def wait(sweep_dir: str | Path, poll_s: float = 5.0, timeout_s: float | None = DEFAULT_WAIT_S,
         on_update: Callable[[mf.Manifest, list[Row]], None] = lambda man, rows: None) -> mf.Manifest:  # fmt: skip
    """Refresh every poll_s seconds until every trial is settled (final, held by SLURM, or never submitted),
    calling on_update after each refresh. FtlError after timeout_s (None or 0: no limit)."""
    start = time.monotonic()
    while True:
        man, rows = refresh(sweep_dir)
        on_update(man, rows)
        settled = sum(st.is_settled(t.state) for t in man.jobs.values())  # a search: its workers
        if settled == len(man.jobs):
            return man
        if timeout_s and time.monotonic() - start > timeout_s:
            raise FtlError(f"ftl wait: {len(man.jobs) - settled} jobs not done after {timeout_s:.0f}s "
                           f"(`ftl status {sweep_dir}`; --timeout 0 waits for ever)")  # fmt: skip
        time.sleep(poll_s)


def progress_line(man: mf.Manifest) -> str:
    counts = ", ".join(f"{n} {s.lower()}" for s, n in mf.counts(man).items()) or "no trial yet"
    best = man.best()
    line = counts + (f"; best {man.metric} {best.result[man.metric]:.4f} ({best.id})" if best else "")
    if man.search:
        s = man.search
        workers = ", ".join(f"{n} {k.lower()}" for k, n in mf.counts(man, man.jobs).items())
        line = f"{s['method']} search, {len(man.trials)}/{s['n_trials']} trials asked: {line}; workers: {workers}"
    return line


def search_has_work(man: mf.Manifest) -> bool:
    """Trials left to ask, or a trial left unfinished by a worker that is gone."""
    unfinished = any(t.state in ("RUNNING", "STALLED", "INTERRUPTED") for t in man.trials.values())
    return len(man.trials) < man.search["n_trials"] or unfinished  # type: ignore[index]


def check_study(man: mf.Manifest) -> None:
    """A search's study journal checked against the sweep's log before anything continues it (jobs/study.py)."""
    if man.search:
        from jobs.study import check_journal

        check_journal(man.dir / "search" / "study.journal", len(man.trials), man.dir)


def budget_shortfall(man: mf.Manifest) -> str:
    """Why a search ended short of its budget (its workers settled with trials left to ask), or ''."""
    if not man.search or len(man.trials) >= man.search["n_trials"]:
        return ""
    return f"the search stopped at {len(man.trials)} of its {man.search['n_trials']} trials"
