"""Sweep reports as a W&B Report (`ftl report DIR --wandb`): the sections of the HTML report (launcher/report.py) as
wandb-workspaces blocks, written as a spec, published later.

build_wandb_report writes DIR/wandb_report.json offline, serialised by the library's own model (a ReportViewspec).
Its entity and project are the ones given, else the trials' own (their tracking.entity / tracking.project: a
trial's config.yaml, the sweep's overrides, recipe.yaml), else WANDB_ENTITY / WANDB_PROJECT; with none it refuses
in one line rather than guess. Its panels show the runs of the sweep's W&B group ('<sweep name>-<uid>', what each
trial logged as tracking.group; core.tracking.sweep_group) once they are on W&B (tracking.wandb=true, offline runs
uploaded with `ftl sync`), ranked by the metric's best (the summary `<metric>.max` / `.min` that
WandbTracker.define_metric keeps). Summary, table, config and logs are text as of writing; the HTML plots are not in
it (the W&B panels replace them). `publish(path)` saves it to W&B (a network and an API key; W&B looks the project
ids up then) and returns its URL.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.errors import FtlError
from core.fileio import write_text_atomic
from core.tracking import has_credentials, metric_goal, sweep_group
from launcher.report import FAILED, SweepData, _axis, _counts, _fmt, failure_logs, load


def _wandb_blocks(wr: Any, sw: SweepData) -> list[Any]:
    """The report's sections as wandb-workspaces blocks; each panel grid shows the runs whose group is the sweep."""
    metric, done, keys = sw.metric, sw.done, sw.varying
    summary = wr.SummaryMetric(f"{metric}.{metric_goal(metric)}")  # the run's best (WandbTracker.define_metric)
    order = [wr.OrderBy(summary, ascending=metric_goal(metric) == "min")]
    group = sweep_group(sw.man.name, sw.man.uid)

    def grid(*panels: Any) -> Any:  # (the filter is parsed as Python: the group as a Python string literal)
        runset = wr.Runset(name=sw.man.name, filters=f"Metric('Group') = {group!r}", order=order)
        return wr.PanelGrid(runsets=[runset], panels=list(panels))

    table = [f"| trial | state | {metric} | best | {' | '.join(sw.params)} |", "|" + " --- |" * (4 + len(sw.params))]
    for t in sw.trials:
        cells = [t.rec.id, t.state.lower(), _fmt(t.final), _fmt(t.best), *(t.params.get(k, "-") for k in sw.params)]
        table.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    counts = ", ".join(f"{n} {s.lower()}" for s, n in _counts(sw))
    best = f"Best trial {done[0].rec.id}: {metric} {_fmt(done[0].final)}." if done else "No finished trial."
    config = sw.dir / done[0].rec.run_dir / "config.yaml" if done else Path("-")
    log = {k: bool(done) and _axis([t.params.get(k, "-") for t in done])[1] for k in keys}
    columns = [wr.ParallelCoordinatesPlotColumn(wr.Config(k), log=log[k] or None) for k in keys]
    blocks = [wr.H1(f"Sweep {sw.man.name}"),
              wr.P(f"Recipe {sw.man.recipe}; metric {metric} ({sw.mode}); created {sw.man.created}; "
                   f"{len(sw.trials)} trials: {counts}. {best}"),
              wr.H2("Trials"), wr.MarkdownBlock("\n".join(table)), grid(wr.RunComparer(diff_only="split")),
              wr.H2("Best trial"), wr.P(best + (f" Overrides: {' '.join(done[0].rec.overrides)}" if done else "")),
              *([wr.CodeBlock(config.read_text(), language="yaml")] if config.is_file() else []),
              wr.H2("Learning curves"), grid(wr.LinePlot(title=f"{metric} per epoch", x="epoch", y=[metric]),
                                             wr.LinePlot(title="train_loss per epoch", x="epoch", y=["train_loss"])),
              wr.H2(f"{metric} against each swept hyperparameter"),
              grid(*(wr.ScatterPlot(title=k, x=wr.Config(k), y=summary, log_x=log[k] or None) for k in keys)),
              wr.H2("Parallel coordinates"),
              grid(wr.ParallelCoordinatesPlot(columns=[*columns, wr.ParallelCoordinatesPlotColumn(summary)])),
              wr.H2("Failures")]  # fmt: skip
    for t in (t for t in sw.trials if t.state in FAILED):
        blocks += [wr.P(f"{t.rec.id} {t.state.lower()}: overrides {' '.join(t.rec.overrides)}"),
                   *(wr.CodeBlock(f"# {path}\n{text}", language=None) for path, text in failure_logs(sw, t.rec))]
    return blocks if not isinstance(blocks[-1], wr.H2) else [*blocks, wr.P("No failed, preempted or cancelled trial.")]


def build_wandb_report(sweep_dir: str | Path, out: Path | None = None, project: str | None = None,
                       entity: str | None = None) -> Path:  # fmt: skip
    """Write the sweep's W&B Report spec (default DIR/wandb_report.json) without network; returns its path.
    FtlError, before writing anything, when the entity or the project is nowhere to be found."""
    sw = load(sweep_dir)
    project = project or _tracking(sw, "project") or os.environ.get("WANDB_PROJECT")
    entity = entity or _tracking(sw, "entity") or os.environ.get("WANDB_ENTITY")
    missing = [f"no W&B {what} (pass --{what} {what.upper()} or set WANDB_{what.upper()}: the trials' tracking.{what} "
               "is unset)" for what, value in (("entity", entity), ("project", project)) if not value]  # fmt: skip
    if missing:
        raise FtlError(f"W&B report of {sw.dir}: {' and '.join(missing)}")
    os.environ.setdefault("WANDB_MODE", "offline")
    import wandb_workspaces.reports.v2 as wr

    report = wr.Report(project=project, entity=entity, title=f"ftl sweep {sw.man.name}"[:128],
                       description=f"{len(sw.trials)} trials of {sw.man.recipe}", blocks=_wandb_blocks(wr, sw))
    model = report._to_model()  # the runsets have no project yet: no project-id lookup, so no network
    for block in model.spec.blocks:
        for runset in getattr(getattr(block, "metadata", None), "run_sets", []):
            runset.project = type(model.project)(name=project, entity_name=entity)
    out = Path(out) if out else sw.dir / "wandb_report.json"
    write_text_atomic(out, model.model_dump_json(by_alias=True, exclude_none=True, indent=1) + "\n")
    return out


def _tracking(sw: SweepData, key: str) -> str | None:
    """The trials' tracking.<key>: as a trial ran it (its config.yaml), else as the sweep sets it (a trial's
    overrides, the sweep-wide ones), else the sweep's recipe.yaml; None when none of them sets it."""
    import yaml

    for t in sw.trials:
        path = sw.dir / t.rec.run_dir / "config.yaml"
        if path.is_file() and (value := ((yaml.safe_load(path.read_text()) or {}).get("tracking") or {}).get(key)):
            return str(value)
    for overrides in [*(t.rec.overrides for t in sw.trials), sw.man.overrides]:
        values = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+") == f"tracking.{key}"]
        if values and (value := yaml.safe_load(values[-1])):
            return str(value)
    recipe = sw.dir / "recipe.yaml"
    tracking = (yaml.safe_load(recipe.read_text()) or {}).get("tracking") if recipe.is_file() else None
    return str(value) if (value := (tracking or {}).get(key)) else None


def load_wandb_report(path: str | Path) -> Any:
    """The wandb_workspaces Report written by build_wandb_report; its `.save()` publishes it (network, API key)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces.reports.v2.internal import ReportViewspec

    return wr.Report._from_model(ReportViewspec.model_validate_json(Path(path).read_text()))


def publish(spec_path: str | Path) -> str:
    """Save the report spec to W&B; returns the report's URL. Needs an API key and a network: refuses in one line
    (FtlError) when there is no key, when the server cannot be reached, or when it says no - never a prompt."""
    base_url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    if not has_credentials(base_url):
        raise FtlError(f"publishing a W&B report needs an API key for {base_url}: run `wandb login` or set "
                       "WANDB_API_KEY (the spec stays offline in the meantime)")  # fmt: skip
    _check_reachable(base_url)
    from launcher.wandb_sync import RETRIES

    for key, value in RETRIES.items():  # bounded retries: a dead server fails in about a minute
        os.environ.setdefault(key, value)
    report = load_wandb_report(spec_path)
    try:
        return str(report.save().url)
    except Exception as e:  # noqa: BLE001 - the server's answer, not a bug in ftl: one line naming it
        text = " ".join(str(e).split())[:300]
        words = ("401", "403", "api key", "login", "logged in", "credentials", "unauthorized", "permission")
        if "Auth" in type(e).__name__ or any(w in text.lower() for w in words):
            raise FtlError(f"W&B at {base_url} refused the API key or access to {report.entity}/{report.project}: "
                           f"{text} (check `wandb login` / WANDB_API_KEY)") from None  # fmt: skip
        if "not found" in text:
            raise FtlError(f"W&B project {report.entity}/{report.project} not found at {base_url}: upload the runs "
                           f"first (`ftl sync`) or pass --entity / --project ({text})") from None  # fmt: skip
        raise FtlError(f"publishing the W&B report to {base_url} failed: {type(e).__name__}: {text}") from None


def _check_reachable(base_url: str, timeout_s: float = 5.0) -> None:
    """FtlError naming the network when no TCP connection to the W&B server opens within timeout_s."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout_s).close()
    except OSError as e:
        raise FtlError(f"network: cannot reach W&B at {base_url} ({e}); publish where it can be reached") from None
