"""Sweep reports as a W&B Report (`ftl report DIR --wandb`): the sections of the HTML report (launcher/report.py) as
wandb-workspaces blocks, written as a spec to publish later.

build_wandb_report writes DIR/wandb_report.json, serialised by the library's own model (a ReportViewspec). Limits:
it is built offline and never saved; publish it where there are a network and an API key with
`load_wandb_report(path).save()` (W&B project ids are looked up then). Its panels only show runs logged to W&B
(tracking.wandb=true, offline runs synced) in the project (default: the trials' tracking.project) whose W&B group is
the sweep name (tracking.group); summary, table, config and logs are text as of writing; the HTML plots are not in
it (the W&B panels replace them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.fileio import write_text_atomic
from launcher.report import FAILED, SweepData, _axis, _counts, _fmt, failure_logs, load


def _wandb_blocks(wr: Any, sw: SweepData) -> list[Any]:
    """The report's sections as wandb-workspaces blocks; each panel grid shows the runs whose group is the sweep."""
    metric, done, keys, summary = sw.metric, sw.done, sw.varying, wr.SummaryMetric(sw.metric)
    order = [wr.OrderBy(summary, ascending=sw.mode == "min")]

    def grid(*panels: Any) -> Any:
        runset = wr.Runset(name=sw.man.name, filters=f"Metric('Group') = '{sw.man.name}'", order=order)
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
    """Write the sweep's W&B Report spec (default DIR/wandb_report.json) without network; returns its path."""
    import yaml

    sw = load(sweep_dir)
    os.environ.setdefault("WANDB_MODE", "offline")
    import wandb_workspaces.reports.v2 as wr

    configs = [sw.dir / t.rec.run_dir / "config.yaml" for t in sw.trials] + [sw.dir / "recipe.yaml"]
    config = next((p for p in configs if p.is_file()), None)
    tracking = ((yaml.safe_load(config.read_text()) or {}).get("tracking") if config else None) or {}
    project = project or tracking.get("project") or "ftl"
    entity = entity or tracking.get("entity") or os.environ.get("WANDB_ENTITY") or "ftl"
    report = wr.Report(project=project, entity=entity, title=f"ftl sweep {sw.man.name}"[:128],
                       description=f"{len(sw.trials)} trials of {sw.man.recipe}", blocks=_wandb_blocks(wr, sw))
    model = report._to_model()  # the runsets have no project yet: no project-id lookup, so no network
    for block in model.spec.blocks:
        for runset in getattr(getattr(block, "metadata", None), "run_sets", []):
            runset.project = type(model.project)(name=project, entity_name=entity)
    out = Path(out) if out else sw.dir / "wandb_report.json"
    write_text_atomic(out, model.model_dump_json(by_alias=True, exclude_none=True, indent=1) + "\n")
    return out


def load_wandb_report(path: str | Path) -> Any:
    """The wandb_workspaces Report written by build_wandb_report; its `.save()` publishes it (network, API key)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces.reports.v2.internal import ReportViewspec

    return wr.Report._from_model(ReportViewspec.model_validate_json(Path(path).read_text()))
