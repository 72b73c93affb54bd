"""Sweep reports (`ftl report DIR`): one self-contained HTML file, or a W&B Report spec to publish later.

build_report writes DIR/report.html; sections by element id: summary, table (trials by the metric, best first, one
column per swept hyperparameter), best (its resolved config.yaml), curves, params (the metric against each swept
hyperparameter), parallel (parallel coordinates), failures (last log lines of failed / preempted / cancelled trials).
Plots are matplotlib (Agg) PNGs in base64 data: URIs and the style is inline, so the file opens offline.

The sweep dir is only read: states are the manifest's, corrected by each trial's result.json; no scheduler is asked
(`ftl status DIR` refreshes a running sweep). A trial's metric is its result.json value, else its last epoch's; "best"
is its best epoch's. Only trials with a result are finished (best trial, params and parallel plots). A metric other
than the sweep's is minimised when its name holds loss/err/time, else maximised.

The same sections as a W&B Report: launcher/wandb_report.py.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import FtlError, did_you_mean
from core.fileio import write_text_atomic
from core.tracking import read_jsonl
from launcher import manifest as mf

FAILED = ("FAILED", "PREEMPTED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "LOST",
          "REVOKED", "HELD", "REQUEUE_HOLD", "SPECIAL_EXIT")  # fmt: skip
NOT_METRICS = {"step", "epoch", "epochs", "time", "val_n", "image_size", "input_px", "global_step", "step_in_epoch",
               "best_epoch", "best_metric", "best"}  # fmt: skip
LOG_LINES = 30
CSS = """body{font:14px/1.45 system-ui,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}h1{font-size:26px;margin:0}
main{max-width:1200px;margin:0 auto;padding:24px}h3{font-size:15px;margin:18px 0 6px}a{color:#0969da}
h2{font-size:19px;margin:0 0 12px;border-bottom:1px solid #d0d7de;padding-bottom:6px}
nav a{margin-right:14px;text-decoration:none}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;margin:16px 0}
table{border-collapse:collapse;width:100%;font-size:13px}th{background:#f6f8fa}tr.best td{background:#dafbe1}
th,td{padding:5px 9px;border-bottom:1px solid #eaeef2;text-align:left;word-break:break-word}dt{color:#57606a}
td.num{text-align:right;font-variant-numeric:tabular-nums}dl{display:grid;grid-template-columns:max-content 1fr;
gap:4px 16px;margin:0}dd{margin:0}img{max-width:100%;display:block;margin:8px auto}pre.config{max-height:420px}
pre{background:#161b22;color:#e6edf3;padding:10px 12px;border-radius:6px;overflow:auto;font-size:12px}
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
    final: float | None = None  # the metric: result.json's, else the last epoch's
    best: float | None = None  # the best epoch's


@dataclass
class SweepData:
    dir: Path
    man: mf.Manifest
    metric: str
    mode: str
    trials: list[Trial]  # finished ones first, best first; trials without a value last
    params: list[str]  # swept keys in override order

    @property
    def done(self) -> list[Trial]:
        """The finished trials (a metric in result.json), best first."""
        return [t for t in self.trials if _num(t.result.get(self.metric)) is not None]

    @property
    def varying(self) -> list[str]:
        """The swept keys to plot: those with more than one value among the finished trials, else among all trials."""
        for trials in (self.done, self.trials):
            if keys := [k for k in self.params if len({t.params.get(k) for t in trials}) > 1]:
                return keys
        return self.params


def _num(value: Any) -> float | None:
    """A finite number from a logged value or an override string, else None."""
    try:
        out = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _e(value: Any) -> str:
    return html.escape(str(value))


def _trial(sweep_dir: Path, rec: mf.TrialRecord) -> Trial:
    progress, result = mf.read_trial_files(sweep_dir, rec)
    state = {"completed": "COMPLETED", "pruned": "PRUNED"}.get(result.get("status", ""), rec.state)
    by_epoch = {r["epoch"]: r for r in read_jsonl(sweep_dir / rec.run_dir / "metrics.jsonl")
                if "epoch" in r and ("epoch_time_s" in r or any(k.startswith("val_") for k in r))}  # fmt: skip
    params = dict(o.partition("=")[::2] for o in rec.overrides)
    return Trial(rec, state, params, [by_epoch[e] for e in sorted(by_epoch)], progress, result)


def load(sweep_dir: str | Path, metric: str | None = None) -> SweepData:
    """Read a sweep dir; FtlError when it is not one, or when trials logged metrics but not `metric`."""
    sweep_dir = Path(sweep_dir)
    man = mf.read(sweep_dir)
    metric = metric or man.metric
    mode = man.mode if metric == man.metric else "min" if any(w in metric for w in ("loss", "err", "time")) else "max"
    trials = [_trial(sweep_dir, rec) for rec in man.trials.values()]
    records = [r for t in trials for r in [*t.epochs, t.result]]
    logged = sorted({k for r in records for k, v in r.items() if k not in NOT_METRICS and _num(v) is not None},
                    key=lambda k: (not k.startswith("val_"), k))  # fmt: skip
    if logged and metric not in logged:
        raise FtlError(f"no trial logged the metric {metric!r}{did_you_mean(metric, logged)}; "
                       f"the trials logged: {', '.join(logged)}")  # fmt: skip
    for t in trials:
        values = [v for r in t.epochs if (v := _num(r.get(metric))) is not None]
        t.final = _num(t.result.get(metric)) if metric in t.result else (values[-1] if values else None)
        t.best = (max if mode == "max" else min)(values) if values else t.final
    sign = -1 if mode == "max" else 1
    trials.sort(key=lambda t: (_num(t.result.get(metric)) is None, t.final is None, sign * (t.final or 0), t.rec.id))
    return SweepData(sweep_dir, man, metric, mode, trials, list(dict.fromkeys(k for t in trials for k in t.params)))


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _curves_png(sw: SweepData) -> str | None:
    import matplotlib
    from matplotlib.ticker import MaxNLocator

    fig, best = _figure(12, 4.2), (sw.done or [None])[0]
    axes, keys = fig.subplots(1, 2), (sw.metric, "train_loss")
    cmap = matplotlib.colormaps["tab10" if len(sw.trials) <= 10 else "tab20"]
    for i, t in enumerate(sw.trials):
        label = f"{t.rec.id} " + " ".join(f"{k.rsplit('.', 1)[-1]}={_short(v, 14)}" for k, v in t.params.items())
        label = label if len(label) <= 60 else label[:59] + "…"
        for ax, key in zip(axes, keys):
            points = [(r["epoch"], v) for r in t.epochs if (v := _num(r.get(key))) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", ms=4, color=cmap(i % cmap.N), lw=2.8 if t is best else 1.3,
                        ls="--" if t.state in FAILED else "-", label=label + " (best)" * (t is best))  # fmt: skip
    if not any(ax.lines for ax in axes):
        return None
    for ax, key in zip(axes, keys):
        ax.set(xlabel="epoch", ylabel=key, title=f"{key} per epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if len(sw.trials) <= 20:
        handles = max((ax.get_legend_handles_labels() for ax in axes), key=lambda h: len(h[0]))
        fig.legend(*handles, loc="outside right", fontsize=8, frameon=False)
    return _png(fig)


def _axis(values: list[str]) -> tuple[list[float], bool, list[str]]:
    """Positions for override values: numbers (log when they span more than a decade), else category indices."""
    nums = [_num(v) for v in values]
    if all(n is not None for n in nums):
        return nums, min(nums) > 0 and max(nums) > 10 * min(nums), []  # type: ignore[type-var, operator, return-value]
    cats = list(dict.fromkeys(values))
    return [float(cats.index(v)) for v in values], False, cats


def _params_png(sw: SweepData) -> str | None:
    keys, done = sw.varying, sw.done
    if not keys or not done:
        return None
    cols, rows = min(3, len(keys)), math.ceil(len(keys) / 3)
    fig = _figure(4.2 * cols, 3.4 * rows)
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for ax, key in zip(axes, keys):
        xs, log, cats = _axis([t.params.get(key, "-") for t in done])
        ax.scatter(xs, [t.final for t in done], s=36, color="#0969da", alpha=0.8)
        ax.scatter(xs[:1], [done[0].final], marker="*", s=220, color="#cf222e", zorder=3, label="best")
        ax.set_xscale("log" if log else "linear")
        ticks = sorted(set(xs))
        if cats or len(ticks) <= 8:  # categories, or few numbers: tick exactly those
            labels = [_short(c) for c in cats] or [_fmt(x) for x in ticks]
            ax.set_xticks(ticks, labels, rotation=20 if len(ticks) > 3 else 0)
            ax.minorticks_off()
        ax.margins(x=0.15)
        ax.set(xlabel=key, ylabel=sw.metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return _png(fig)


def _scaled(values: list[float], raw: list[float]) -> tuple[list[float], list[tuple[float, str]]]:
    """values mapped onto [0, 1], and ticks at both ends labelled with the raw values."""
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0.5] * len(values), [(0.5, _fmt(raw[0]))]
    return [(v - lo) / (hi - lo) for v in values], [(0, _fmt(raw[values.index(lo)])), (1, _fmt(raw[values.index(hi)]))]


def _parallel_png(sw: SweepData) -> str | None:
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    keys, done = sw.varying, sw.done
    if not keys or not done:
        return None
    columns = []  # (label, positions in [0, 1], ticks)
    for key in keys:
        xs, log, cats = _axis([t.params.get(key, "-") for t in done])
        span = max(len(cats) - 1, 1)
        if cats:
            columns.append((key, [x / span for x in xs], [(i / span, _short(c)) for i, c in enumerate(cats)]))
        else:
            columns.append((key + " (log)" * log, *_scaled([math.log10(x) for x in xs] if log else xs, xs)))
    finals = [t.final for t in done]
    columns.append((sw.metric, *_scaled(finals, finals)))  # type: ignore[arg-type]
    fig = _figure(max(7.0, 2.2 * len(columns)), 4.6)
    ax, cmap = fig.subplots(), matplotlib.colormaps["viridis"]
    norm = Normalize(min(finals), max(finals) + (max(finals) == min(finals)) * 1e-9)  # type: ignore[type-var, operator]
    for j, t in reversed(list(enumerate(done))):  # the best drawn last, on top
        ax.plot(range(len(columns)), [c[1][j] for c in columns], color=cmap(norm(t.final)), lw=2.8 if j == 0 else 1.4)
    for i, (_, _, ticks) in enumerate(columns):
        ax.axvline(i, color="#57606a", lw=1, zorder=0)
        for pos, text in ticks:
            ax.text(i + 0.03, pos, text, fontsize=8, va="center", bbox={"fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xticks(range(len(columns)), [c[0] for c in columns], fontsize=9)
    ax.set(yticks=[], ylim=(-0.06, 1.06), xlim=(-0.15, len(columns) - 0.6))
    ax.spines[:].set_visible(False)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=sw.metric)
    return _png(fig)


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 65536))
        return "\n".join(f.read().decode(errors="replace").splitlines()[-LOG_LINES:])


def failure_logs(sw: SweepData, rec: mf.TrialRecord) -> list[tuple[str, str]]:
    """(path, last lines) of a trial's logs: the newest SLURM *_log.err/out of its last job (logs/<array id>/, or
    logs/<job id>/ from older ftl), else its train.log."""
    found: list[Path] = []
    for job in reversed(rec.job_ids):
        folders = {sw.dir / "logs" / job.split("_")[0], sw.dir / "logs" / job}
        newest = [max((f for d in folders for f in d.glob(f"{job}_*{p}")), key=lambda f: f.stat().st_mtime, default=None)
                  for p in ("_log.err", "_log.out")]  # fmt: skip
        if found := [p for p in newest if p is not None]:
            break
    if not found and (sw.dir / rec.run_dir / "train.log").is_file():
        found = [sw.dir / rec.run_dir / "train.log"]
    return [(str(p.relative_to(sw.dir)), _tail(p)) for p in found]


def _dl(rows: list[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>"


def _state(state: str, count: str = "") -> str:
    return f'<span class="st {_e(state)}">{count}{_e(state.lower())}</span>'


def _counts(sw: SweepData) -> list[tuple[str, int]]:
    states = [t.state for t in sw.trials]
    return [(s, states.count(s)) for s in sorted(set(states))]


def _summary(sw: SweepData) -> str:
    man, best = sw.man, (sw.done or [None])[0]
    body = _dl([("sweep", man.name), ("recipe", man.recipe), ("metric", f"{sw.metric} ({sw.mode})"),
                ("created", man.created), ("sweep dir", sw.dir.resolve()),
                ("best trial", f"{best.rec.id}: {sw.metric} {_fmt(best.final)}" if best else "-")])  # fmt: skip
    states = "".join(_state(s, f"{n} ") for s, n in _counts(sw))
    body = body.replace("</dl>", f"<dt>trials</dt><dd>{len(sw.trials)}: {states}</dd></dl>")
    if not best:
        body += (f'<p class="note">No finished trial: none of the {len(sw.trials)} trials has a final '
                 f"{_e(sw.metric)} yet, so there is no best trial and the hyperparameter plots are skipped.</p>")
    return body


def _table(sw: SweepData) -> str:
    best, rows = (sw.done or [None])[0], []
    for t in sw.trials:
        p = t.progress
        epochs = f"{p['epoch']}/{p['epochs']}" if "epochs" in p and "epoch" in p else str(len(t.epochs) or "-")
        cells = [f"<td>{_e(t.rec.id)}</td><td>{_state(t.state)}</td>",
                 *(f'<td class="num">{v}</td>' for v in (_e(epochs), _fmt(t.final), _fmt(t.best))),
                 *(f"<td>{_e(t.params.get(k, '-'))}</td>" for k in sw.params)]  # fmt: skip
        rows.append(f"<tr{' class=best' * (t is best)}>{''.join(cells)}</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in ["trial", "state", "epochs", sw.metric, "best", *sw.params])
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _best(sw: SweepData) -> str:
    if not sw.done:
        return '<p class="note">No best trial yet: no trial has finished.</p>'
    t = sw.done[0]
    config = sw.dir / t.rec.run_dir / "config.yaml"
    text = config.read_text(errors="replace") if config.is_file() else f"({config} is missing)"
    rows = [("trial", t.rec.id), (sw.metric, _fmt(t.final)), (f"best epoch's {sw.metric}", _fmt(t.best)),
            ("overrides", " ".join(t.rec.overrides) or "-"), ("run dir", t.rec.run_dir)]  # fmt: skip
    return _dl(rows) + f'<h3>Resolved config ({_e(t.rec.run_dir)}/config.yaml)</h3><pre class="config">{_e(text)}</pre>'


def _failures(sw: SweepData) -> str:
    parts = []
    for t in (t for t in sw.trials if t.state in FAILED):
        parts.append(f"<h3>{_e(t.rec.id)} {_state(t.state)}</h3><p>overrides: {_e(' '.join(t.rec.overrides))}; "
                     f"jobs: {_e(', '.join(t.rec.job_ids) or '-')}</p>")  # fmt: skip
        logs = failure_logs(sw, t.rec)
        parts += [f"<p>last lines of {_e(path)}:</p><pre>{_e(text)}</pre>" for path, text in logs] or ["<p>no log</p>"]
    return "".join(parts) or "<p>No failed, preempted or cancelled trial.</p>"


def _img(uri: str | None, alt: str, note: str) -> str:
    return f'<img alt="{_e(alt)}" src="{uri}">' if uri else f'<p class="note">{_e(note)}</p>'


def build_report(sweep_dir: str | Path, out: Path | None = None, metric: str | None = None) -> Path:
    """Write the sweep's self-contained HTML report (default DIR/report.html) atomically; returns its path."""
    sw = load(sweep_dir, metric)
    none = f"No finished trial with a {sw.metric} yet: nothing to plot." if not sw.done else "No swept hyperparameter."
    sections = [("summary", "Summary", "Summary", _summary(sw)), ("table", "Trials", "Trials", _table(sw)),
                ("best", "Best trial", "Best trial", _best(sw)),
                ("curves", "Curves", "Learning curves",
                 _img(_curves_png(sw), "learning curves", f"No trial has logged {sw.metric} yet: nothing to plot.")),
                ("params", "Hyperparameters", f"{sw.metric} against each swept hyperparameter",
                 _img(_params_png(sw), "metric against hyperparameters", none)),
                ("parallel", "Parallel coordinates", "Parallel coordinates",
                 _img(_parallel_png(sw), "parallel coordinates", none)),
                ("failures", "Failures", "Failures", _failures(sw))]  # fmt: skip
    nav = "".join(f'<a href="#{sid}">{_e(short)}</a>' for sid, short, _, _ in sections)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ftl sweep {_e(sw.man.name)}</title>'
            f"<style>{CSS}</style></head><body><main><h1>Sweep {_e(sw.man.name)}</h1><nav>{nav}</nav>"
            + "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>' for sid, _, title, body in sections)
            + "</main></body></html>\n")  # fmt: skip
    out = Path(out) if out else sw.dir / "report.html"
    write_text_atomic(out, page)
    return out
