"""Sweep reports (`ftl report DIR`): one self-contained HTML file, or a W&B Report spec to publish later.

build_report(DIR) writes DIR/report.html with these sections (element ids): summary, table (trials sorted by the
metric, best first, one column per swept hyperparameter), best (the best trial's resolved config.yaml), curves,
params (the metric against each swept hyperparameter), parallel (parallel coordinates) and failures (the last
lines of each failed / preempted / cancelled trial's log). Plots are matplotlib (Agg) PNGs embedded as base64
data: URIs and the style is inline, so the file opens offline and can be mailed as is.

The report only reads the sweep dir: states are the manifest's, corrected by each trial's result.json; no scheduler
is queried (run `ftl status DIR` first for fresh states of a running sweep). Swept hyperparameters are the keys of
the trials' own overrides. "metric" is the trial's last value (result.json, else its last epoch), "best" the best
over its epochs. Another metric than the sweep's is minimised when its name holds loss/err/time, else maximised.

build_wandb_report(DIR) writes DIR/wandb_report.json: the same sections as a W&B Report built with wandb-workspaces
(`wandb_workspaces.reports.v2`), serialised with the library's own model (a ReportViewspec). Limits:
  - it is built offline and never saved: nothing is sent to W&B. Publish it where there is a network and an API key
    with `load_wandb_report(path).save()` (the runsets' project ids are looked up then; they are not in the file).
  - its panels show only what the trials logged to W&B (tracking.wandb=true; offline runs synced with `ftl sync`),
    in the project given (default: the trials' tracking.project), selecting runs whose W&B group is the sweep name,
    i.e. runs logged with tracking.group set to the sweep name.
  - summary, table, best config and failure logs are static text as of writing; the HTML plots are not included
    (the W&B panels replace them; the params plots use a log x-axis exactly where the HTML ones do).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import FtlError, did_you_mean
from core.fileio import write_text_atomic
from core.tracking import read_jsonl
from launcher import manifest as mf

FAILED = ("FAILED", "PREEMPTED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")
NOT_METRICS = {"step", "epoch", "epochs", "time", "val_n", "image_size", "input_px", "global_step", "step_in_epoch",
               "best_epoch", "best_metric", "best"}  # fmt: skip
LOG_LINES = 30
CSS = """body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#1f2328;
margin:0;background:#f6f8fa}main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:0 0 12px;border-bottom:1px solid #d0d7de;padding-bottom:6px}
h3{font-size:15px;margin:16px 0 6px}nav a{margin-right:14px;color:#0969da;text-decoration:none}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;margin:16px 0}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:5px 9px;border-bottom:1px solid #eaeef2;
text-align:left;word-break:break-word}th{background:#f6f8fa}tr.best td{background:#dafbe1;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}dl{display:grid;grid-template-columns:max-content 1fr;
gap:4px 16px;margin:0}dt{color:#57606a}dd{margin:0}img{max-width:100%;display:block;margin:8px auto}
pre{background:#161b22;color:#e6edf3;padding:10px 12px;border-radius:6px;overflow:auto;max-height:420px;font-size:12px}
.note{color:#6e4b00;background:#fff8c5;border:1px solid #eed888;border-radius:6px;padding:8px 12px}
.st{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#eaeef2;margin-right:6px}
.COMPLETED{background:#dafbe1;color:#116329}.RUNNING,.PENDING{background:#ddf4ff;color:#0550ae}
.FAILED,.TIMEOUT,.OUT_OF_MEMORY,.NODE_FAIL,.BOOT_FAIL{background:#ffebe9;color:#a40e26}
.CANCELLED,.PREEMPTED,.PRUNED{background:#fff1e5;color:#953800}"""


@dataclass
class Trial:
    rec: mf.TrialRecord
    state: str
    params: dict[str, str]  # swept key -> value, as in the trial's overrides
    epochs: list[dict[str, Any]]  # one metrics.jsonl record per finished epoch
    progress: dict[str, Any]
    result: dict[str, Any]
    final: float | None = None  # the metric at the end: result.json, else the last epoch
    best: float | None = None  # the best value of the metric over its epochs


@dataclass
class SweepData:
    dir: Path
    man: mf.Manifest
    metric: str
    mode: str
    trials: list[Trial]  # best first; trials without a value last
    params: list[str]  # swept keys in override order

    @property
    def done(self) -> list[Trial]:
        return [t for t in self.trials if t.final is not None]

    @property
    def varying(self) -> list[str]:
        """The swept keys that take more than one value (all of them when none does)."""
        return [k for k in self.params if len({t.params.get(k) for t in self.trials}) > 1] or self.params


def _num(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _parse(text: str) -> float | None:
    try:
        return _num(float(text))
    except ValueError:
        return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _trial(sweep_dir: Path, rec: mf.TrialRecord) -> Trial:
    progress, result = mf.read_trial_files(sweep_dir, rec)
    state = {"completed": "COMPLETED", "pruned": "PRUNED"}.get(result.get("status", ""), rec.state)
    by_epoch = {r["epoch"]: r for r in read_jsonl(sweep_dir / rec.run_dir / "metrics.jsonl")
                if "epoch_time_s" in r or any(k.startswith("val_") for k in r)}  # fmt: skip
    params = dict(o.partition("=")[::2] for o in rec.overrides)
    return Trial(rec, state, params, [by_epoch[e] for e in sorted(by_epoch)], progress, result)


def _logged(trials: list[Trial]) -> list[str]:
    records = [r for t in trials for r in [*t.epochs, t.result]]
    names = {k for r in records for k, v in r.items() if k not in NOT_METRICS and _num(v) is not None}
    return sorted(names, key=lambda k: (not k.startswith("val_"), k))


def load(sweep_dir: str | Path, metric: str | None = None) -> SweepData:
    """Read a sweep dir; FtlError when it is not one or when no trial logged `metric`."""
    sweep_dir = Path(sweep_dir)
    man = mf.read(sweep_dir)
    metric = metric or man.metric
    mode = man.mode if metric == man.metric else "min" if any(w in metric for w in ("loss", "err", "time")) else "max"
    trials = [_trial(sweep_dir, rec) for rec in man.trials.values()]
    logged = _logged(trials)
    if logged and metric not in logged:
        raise FtlError(f"no trial logged the metric {metric!r}{did_you_mean(metric, logged)}; "
                       f"the trials logged: {', '.join(logged)}")  # fmt: skip
    pick = max if mode == "max" else min
    for t in trials:
        values = [v for r in t.epochs if (v := _num(r.get(metric))) is not None]
        t.final = _num(t.result.get(metric))
        t.final = values[-1] if t.final is None and values else t.final
        t.best = pick(values) if values else t.final
    sign = -1 if mode == "max" else 1
    trials.sort(key=lambda t: (t.final is None, sign * (t.final or 0), t.rec.id))
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    return SweepData(sweep_dir, man, metric, mode, trials, params)


def _label(t: Trial) -> str:
    return _short(f"{t.rec.id} " + " ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in t.params.items()), 48)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _curves_png(sw: SweepData) -> str | None:
    import matplotlib

    fig = _figure(12, 4.2)
    axes = fig.subplots(1, 2)
    cmap = matplotlib.colormaps["tab10" if len(sw.trials) <= 10 else "tab20"]
    best = sw.done[0] if sw.done else None
    for i, t in enumerate(sw.trials):
        for ax, key in zip(axes, (sw.metric, "train_loss")):
            points = [(r["epoch"], v) for r in t.epochs if (v := _num(r.get(key))) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", ms=4, color=cmap(i % cmap.N), lw=2.8 if t is best else 1.3,
                        ls="--" if t.state in FAILED else "-", label=_label(t) + (" (best)" if t is best else ""))  # fmt: skip
    if not any(ax.lines for ax in axes):
        return None
    for ax, key in zip(axes, (sw.metric, "train_loss")):
        ax.set(xlabel="epoch", ylabel=key, title=f"{key} per epoch")
        ax.grid(alpha=0.3)
    if len(sw.trials) <= 20:
        fig.legend(*max((ax.get_legend_handles_labels() for ax in axes), key=lambda h: len(h[0])), loc="outside right",
                   fontsize=8, frameon=False)  # fmt: skip
    return _png(fig)


def _axis(values: list[str]) -> tuple[list[float], bool, list[str]]:
    """x positions for override values: numbers (log when they span more than a decade), else category indices."""
    nums = [_parse(v) for v in values]
    if all(n is not None for n in nums):
        log = min(nums) > 0 and max(nums) > 10 * min(nums)  # type: ignore[type-var, operator]
        return nums, log, []  # type: ignore[return-value]
    cats = list(dict.fromkeys(values))
    return [float(cats.index(v)) for v in values], False, cats


def _params_png(sw: SweepData) -> str | None:
    keys, done = sw.varying, sw.done
    if not keys or not done:
        return None
    cols = min(3, len(keys))
    fig = _figure(4.2 * cols, 3.4 * math.ceil(len(keys) / cols))
    axes = list(fig.subplots(math.ceil(len(keys) / cols), cols, squeeze=False).flat)
    for ax, key in zip(axes, keys):
        xs, log, cats = _axis([t.params.get(key, "-") for t in done])
        ax.scatter(xs, [t.final for t in done], s=36, color="#0969da", alpha=0.8)
        ax.scatter(xs[:1], [done[0].final], marker="*", s=220, color="#cf222e", zorder=3, label="best")
        if log:
            ax.set_xscale("log")
        if cats:
            ax.set_xticks(range(len(cats)), [_short(c) for c in cats], rotation=20 if len(cats) > 3 else 0)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        ax.set(xlabel=key, ylabel=sw.metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return _png(fig)


def _scaled(values: list[float], raw: list[float]) -> tuple[list[float], list[tuple[float, str]]]:
    """values mapped onto [0, 1], and the axis ticks (min and max) labelled with the raw values."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0.5] * len(values), [(0.5, _fmt(raw[0]))]
    ticks = [(0.0, _fmt(raw[values.index(lo)])), (1.0, _fmt(raw[values.index(hi)]))]
    return [(v - lo) / (hi - lo) for v in values], ticks


def _parallel_png(sw: SweepData) -> str | None:
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    keys, done = sw.varying, sw.done
    if not keys or not done:
        return None
    axes_data = []  # (label, positions in [0, 1], ticks)
    for key in keys:
        xs, log, cats = _axis([t.params.get(key, "-") for t in done])
        if cats:
            span = max(len(cats) - 1, 1)
            axes_data.append((key, [x / span if len(cats) > 1 else 0.5 for x in xs],
                              [(i / span if len(cats) > 1 else 0.5, _short(c)) for i, c in enumerate(cats)]))  # fmt: skip
        else:
            axes_data.append((key + (" (log)" if log else ""), *_scaled([math.log10(x) for x in xs] if log else xs, xs)))
    finals = [t.final for t in done]
    axes_data.append((sw.metric, *_scaled(finals, finals)))  # type: ignore[arg-type]
    fig = _figure(max(7.0, 2.2 * len(axes_data)), 4.6)
    ax = fig.subplots()
    norm, cmap = Normalize(min(finals), max(finals) + (1e-12 if min(finals) == max(finals) else 0)), matplotlib.colormaps["viridis"]  # type: ignore[type-var]
    for j, t in enumerate(done):
        ax.plot(range(len(axes_data)), [a[1][j] for a in axes_data], color=cmap(norm(t.final)), lw=2.6 if j == 0 else 1.4,
                alpha=0.9, zorder=3 if j == 0 else 2)  # fmt: skip
    for i, (_, _, ticks) in enumerate(axes_data):
        ax.axvline(i, color="#57606a", lw=1, zorder=1)
        for p, text in ticks:
            ax.text(i + 0.03, p, text, fontsize=8, va="center", bbox={"fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xticks(range(len(axes_data)), [a[0] for a in axes_data], fontsize=9)
    ax.set(yticks=[], ylim=(-0.06, 1.06), xlim=(-0.15, len(axes_data) - 0.6))
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=sw.metric)
    return _png(fig)


def _tail(path: Path, n: int = LOG_LINES) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 65536))
        return "\n".join(f.read().decode(errors="replace").splitlines()[-n:])


def failure_logs(sw: SweepData, rec: mf.TrialRecord) -> list[tuple[str, str]]:
    """(path, last lines) of a trial's logs: the newest SLURM *_log.err/out of its last job, else its train.log."""
    found: list[Path] = []
    for job in reversed(rec.job_ids):
        job_dir = sw.dir / "logs" / job
        newest = [max(job_dir.glob(p), key=lambda f: f.stat().st_mtime, default=None) for p in ("*_log.err", "*_log.out")]
        found = [p for p in newest if p is not None]
        if found:
            break
    if not found and (sw.dir / rec.run_dir / "train.log").is_file():
        found = [sw.dir / rec.run_dir / "train.log"]
    return [(str(p.relative_to(sw.dir)), _tail(p)) for p in found]


def _e(value: Any) -> str:
    return html.escape(str(value))


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>'


def _img(uri: str | None, alt: str, note: str) -> str:
    return f'<img alt="{_e(alt)}" src="{uri}">' if uri else f'<p class="note">{_e(note)}</p>'


def _summary(sw: SweepData) -> str:
    man, counts = sw.man, {}
    for t in sw.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    states = "".join(f'<span class="st {_e(s)}">{n} {_e(s.lower())}</span>' for s, n in sorted(counts.items()))
    best = sw.done[0] if sw.done else None
    rows = [("sweep", man.name), ("recipe", man.recipe), ("metric", f"{sw.metric} ({sw.mode})"), ("created", man.created),
            ("sweep dir", sw.dir.resolve()), ("best trial", f"{best.rec.id}: {sw.metric} {_fmt(best.final)}" if best else "-")]  # fmt: skip
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    body = f"<dl>{body}<dt>trials</dt><dd>{len(sw.trials)}: {states}</dd></dl>"
    if not best:
        body += (f'<p class="note">No finished trial: none of the {len(sw.trials)} trials has logged {_e(sw.metric)} yet, '
                 "so there is no best trial and the plots are skipped.</p>")  # fmt: skip
    return body


def _table(sw: SweepData) -> str:
    head = ["trial", "state", "epochs", sw.metric, "best", *sw.params]
    best = sw.done[0] if sw.done else None
    rows = []
    for t in sw.trials:
        p = t.progress
        epochs = f"{p['epoch']}/{p['epochs']}" if "epochs" in p and "epoch" in p else str(len(t.epochs) or "-")
        cells = [f"<td>{_e(t.rec.id)}</td>", f'<td><span class="st {_e(t.state)}">{_e(t.state.lower())}</span></td>',
                 f'<td class="num">{_e(epochs)}</td>', f'<td class="num">{_fmt(t.final)}</td>',
                 f'<td class="num">{_fmt(t.best)}</td>', *(f"<td>{_e(t.params.get(k, '-'))}</td>" for k in sw.params)]  # fmt: skip
        rows.append(f"<tr{' class=best' if t is best else ''}>{''.join(cells)}</tr>")
    return f"<table><tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>{''.join(rows)}</table>"


def _best(sw: SweepData) -> str:
    if not sw.done:
        return '<p class="note">No best trial yet: no trial has logged the metric.</p>'
    t = sw.done[0]
    config = sw.dir / t.rec.run_dir / "config.yaml"
    text = config.read_text(errors="replace") if config.is_file() else f"({config} is missing)"
    rows = [("trial", t.rec.id), (sw.metric, _fmt(t.final)), (f"best {sw.metric}", _fmt(t.best)),
            ("overrides", " ".join(t.rec.overrides) or "-"), ("run dir", t.rec.run_dir)]  # fmt: skip
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    return f"<dl>{body}</dl><h3>Resolved config ({_e(t.rec.run_dir)}/config.yaml)</h3><pre>{_e(text)}</pre>"


def _failures(sw: SweepData) -> str:
    failed = [t for t in sw.trials if t.state in FAILED]
    if not failed:
        return "<p>No failed, preempted or cancelled trial.</p>"
    parts = []
    for t in failed:
        parts.append(f'<h3>{_e(t.rec.id)} <span class="st {_e(t.state)}">{_e(t.state.lower())}</span></h3>'
                     f"<p>overrides: {_e(' '.join(t.rec.overrides))}; jobs: {_e(', '.join(t.rec.job_ids) or '-')}</p>")  # fmt: skip
        logs = failure_logs(sw, t.rec)
        parts += [f"<p>last lines of {_e(path)}:</p><pre>{_e(text)}</pre>" for path, text in logs] or ["<p>(no log)</p>"]
    return "".join(parts)


def build_report(sweep_dir: str | Path, out: Path | None = None, metric: str | None = None) -> Path:
    """Write the sweep's self-contained HTML report (default DIR/report.html) atomically; returns its path."""
    sw = load(sweep_dir, metric)
    empty = f"No trial has logged {sw.metric} yet: nothing to plot."
    sections = [("summary", "Summary", _summary(sw)), ("table", "Trials", _table(sw)), ("best", "Best trial", _best(sw)),
                ("curves", "Learning curves", _img(_curves_png(sw), "learning curves", empty)),
                ("params", f"{sw.metric} against each swept hyperparameter",
                 _img(_params_png(sw), "metric vs hyperparameters", empty if not sw.done else "No swept hyperparameter.")),
                ("parallel", "Parallel coordinates",
                 _img(_parallel_png(sw), "parallel coordinates", empty if not sw.done else "No swept hyperparameter.")),
                ("failures", "Failures", _failures(sw))]  # fmt: skip
    nav = "".join(f'<a href="#{sid}">{_e(title.split(" against")[0])}</a>' for sid, title, _ in sections)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ftl sweep {_e(sw.man.name)}</title>'
            f"<style>{CSS}</style></head><body><main><h1>Sweep {_e(sw.man.name)}</h1><nav>{nav}</nav>"
            + "".join(_section(*s) for s in sections) + "</main></body></html>\n")  # fmt: skip
    out = Path(out) if out else sw.dir / "report.html"
    write_text_atomic(out, page)
    return out


def _tracking(sw: SweepData) -> dict[str, Any]:
    """The trials' tracking block (W&B project / entity): from a trial's config.yaml, else the sweep's recipe."""
    import yaml

    for path in [*(sw.dir / t.rec.run_dir / "config.yaml" for t in sw.trials), sw.dir / "recipe.yaml"]:
        if path.is_file():
            return (yaml.safe_load(path.read_text()) or {}).get("tracking") or {}
    return {}


def _wandb_blocks(wr: Any, sw: SweepData) -> list[Any]:
    """The report's sections as wandb-workspaces blocks; every panel grid shows the runs of W&B group = sweep name."""
    def grid(*panels: Any) -> Any:
        return wr.PanelGrid(runsets=[wr.Runset(name=sw.man.name, filters=f"Metric('Group') = '{sw.man.name}'")],
                            panels=list(panels))  # fmt: skip

    done, keys, summary = sw.done, sw.varying, wr.SummaryMetric(sw.metric)
    counts = ", ".join(f"{sum(t.state == s for t in sw.trials)} {s.lower()}" for s in sorted({t.state for t in sw.trials}))
    head = f"| trial | state | {sw.metric} | best | " + " | ".join(sw.params) + " |\n|" + " --- |" * (4 + len(sw.params))
    rows = [f"| {t.rec.id} | {t.state.lower()} | {_fmt(t.final)} | {_fmt(t.best)} | "
            + " | ".join(t.params.get(k, "-").replace("|", "\\|") for k in sw.params) + " |" for t in sw.trials]  # fmt: skip
    blocks = [wr.H1(f"Sweep {sw.man.name}"),
              wr.P(f"Recipe {sw.man.recipe}; metric {sw.metric} ({sw.mode}); created {sw.man.created}; "
                   f"{len(sw.trials)} trials: {counts}. " + (f"Best trial {done[0].rec.id}: {sw.metric} "
                   f"{_fmt(done[0].final)}." if done else f"No finished trial: none has logged {sw.metric} yet.")),
              wr.H2("Trials"), wr.MarkdownBlock("\n".join([head, *rows])), grid(wr.RunComparer(diff_only="split")),
              wr.H2("Best trial")]  # fmt: skip
    if done:
        config = sw.dir / done[0].rec.run_dir / "config.yaml"
        blocks += [wr.P(f"{done[0].rec.id}: {sw.metric} {_fmt(done[0].final)}, overrides {' '.join(done[0].rec.overrides)}"),
                   wr.CodeBlock(config.read_text() if config.is_file() else "(no config.yaml)", language="yaml")]  # fmt: skip
    log = {k: (_axis([t.params.get(k, "-") for t in done])[1] if done else False) for k in keys}
    blocks += [wr.H2("Learning curves"), grid(wr.LinePlot(title=f"{sw.metric} per epoch", x="epoch", y=[sw.metric]),
                                              wr.LinePlot(title="train_loss per epoch", x="epoch", y=["train_loss"])),
               wr.H2(f"{sw.metric} against each swept hyperparameter"),
               grid(*(wr.ScatterPlot(title=k, x=wr.Config(k), y=summary, log_x=log[k] or None) for k in keys)),
               wr.H2("Parallel coordinates"),
               grid(wr.ParallelCoordinatesPlot(columns=[*(wr.ParallelCoordinatesPlotColumn(wr.Config(k), log=log[k] or None)
                                                          for k in keys), wr.ParallelCoordinatesPlotColumn(summary)])),
               wr.H2("Failures")]  # fmt: skip
    failed = [t for t in sw.trials if t.state in FAILED]
    for t in failed:
        logs = failure_logs(sw, t.rec)
        blocks += [wr.P(f"{t.rec.id} {t.state.lower()}: overrides {' '.join(t.rec.overrides)}"),
                   *(wr.CodeBlock(f"# {path}\n{text}", language=None) for path, text in logs)]  # fmt: skip
    return blocks if failed else [*blocks, wr.P("No failed, preempted or cancelled trial.")]


def build_wandb_report(sweep_dir: str | Path, out: Path | None = None, project: str | None = None,
                       entity: str | None = None) -> Path:  # fmt: skip
    """Write the sweep's W&B Report spec (default DIR/wandb_report.json), offline; returns its path."""
    os.environ.setdefault("WANDB_MODE", "offline")
    import wandb_workspaces.reports.v2 as wr

    sw = load(sweep_dir)
    tracking = _tracking(sw)
    project = project or tracking.get("project") or "ftl"
    entity = entity or tracking.get("entity") or os.environ.get("WANDB_ENTITY") or "ftl"
    report = wr.Report(project=project, entity=entity, title=f"ftl sweep {sw.man.name}"[:128],
                       description=f"{len(sw.trials)} trials of recipe {sw.man.recipe}", blocks=_wandb_blocks(wr, sw))  # fmt: skip
    model = report._to_model()  # runsets without a project: no project-id lookup, so no network
    for block in model.spec.blocks:
        for runset in getattr(getattr(block, "metadata", None), "run_sets", []):
            runset.project = type(model.project)(name=project, entity_name=entity)
    out = Path(out) if out else sw.dir / "wandb_report.json"
    write_text_atomic(out, model.model_dump_json(by_alias=True, exclude_none=True, indent=1) + "\n")
    return out


def load_wandb_report(path: str | Path) -> Any:
    """The wandb_workspaces Report saved by build_wandb_report; `.save()` publishes it (needs network + API key)."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces.reports.v2.internal import ReportViewspec

    return wr.Report._from_model(ReportViewspec.model_validate_json(Path(path).read_text()))
