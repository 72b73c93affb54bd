"""Sweep reports (`ftl report DIR`): one self-contained interactive HTML file, or a W&B Report spec to publish later.

build_report writes DIR/report.html; sections by element id: summary, table (every trial: state, metric, best epoch,
duration, GPU-hours, swept values, links to its files; sortable by any column, filtered by a text box), best (the
best trial's config keys that differ from the sweep's recipe.yaml), curves (train_loss and lr per step, val_loss and
the metric per epoch), params (the metric against each swept hyperparameter), parallel (parallel coordinates) and
failures (last log lines of failed / lost / cancelled / preempted / held trials). The plots are plotly figures with
plotly.js inlined once, and the table's sorting is a few lines of inline JS: the file opens offline, from anywhere
(its links to run dirs and logs are relative to where it is written).

The sweep dir is only read: states are the manifest's, corrected by each trial's result.json; no scheduler is asked
(`ftl status DIR` refreshes a running sweep). A trial's metric is its result.json value, else its last epoch's; "best"
is its best epoch's. Only trials with a result are finished (best trial, params and parallel plots). A metric other
than the sweep's is minimised when its name holds loss/err/time, else maximised. Every number shown has 4 significant
digits. Duration is the wall time a trial's metrics.jsonl spans (summed over the runs between resumes; without time
stamps, its epochs' times); GPU-hours are that times the cluster's nodes x gpus_per_node.

The same sections as a W&B Report: launcher/wandb_report.py.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from core.errors import FtlError, did_you_mean
from core.fileio import write_text_atomic
from core.tracking import read_jsonl, shown, shown_overrides
from launcher import manifest as mf
from launcher import states as st

FAILED = ("FAILED", "PREEMPTED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "LOST",
          "REVOKED", "HELD", "REQUEUE_HOLD", "SPECIAL_EXIT")  # fmt: skip
NOT_METRICS = {"step", "epoch", "epochs", "time", "val_n", "image_size", "input_px", "global_step", "step_in_epoch",
               "best_epoch", "best_metric", "best"}  # fmt: skip
LOG_LINES = 30
CURVE_TRIALS = 100  # the curves show the best-ranked trials only: a line per trial stops being readable long before
TABLE_PAGE = 200  # table rows on the page at first (and per "show more"); sort and filter act on every row
CURVE_POINTS = 500  # points per line at most (every k-th step record, and the last): the page stays small
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
CSS = """body{font:14px/1.45 system-ui,sans-serif;color:#1f2328;margin:0;background:#f6f8fa}h1{font-size:26px;margin:0}
main{max-width:1280px;margin:0 auto;padding:24px}h3{font-size:15px;margin:18px 0 6px}a{color:#0969da}
h2{font-size:19px;margin:0 0 12px;border-bottom:1px solid #d0d7de;padding-bottom:6px}
nav a{margin-right:14px;text-decoration:none}
section{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:16px 20px;margin:16px 0;overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}th{background:#f6f8fa;white-space:nowrap}
tr.best td{background:#dafbe1}th,td{padding:5px 9px;border-bottom:1px solid #eaeef2;text-align:left;
word-break:break-word}#trials th{cursor:pointer;user-select:none}#trials th:hover{background:#eaeef2}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}td small{color:#57606a}td.files a{margin-right:6px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}dt{color:#57606a}dd{margin:0}
pre{max-height:480px;background:#161b22;color:#e6edf3;padding:10px 12px;border-radius:6px;overflow:auto;font-size:12px}
.note{color:#6e4b00;background:#fff8c5;border:1px solid #eed888;border-radius:6px;padding:8px 12px}
#more{margin-top:8px;font:inherit;padding:4px 12px}.tools{display:flex;gap:12px;align-items:center;margin-bottom:8px}.tools input{font:inherit;padding:4px 8px;width:320px}
.diff td:nth-child(2){color:#a40e26}.diff td:nth-child(3){color:#116329}code{font-size:12px}
.st{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#eaeef2;margin-right:6px}
.COMPLETED{background:#dafbe1;color:#116329}.RUNNING,.PENDING{background:#ddf4ff;color:#0550ae}
.FAILED,.TIMEOUT,.OUT_OF_MEMORY,.NODE_FAIL,.BOOT_FAIL,.LOST{background:#ffebe9;color:#a40e26}
.CANCELLED,.PREEMPTED,.PRUNED,.HELD,.REQUEUE_HOLD{background:#fff1e5;color:#953800}"""
# Sorting: a click on a header sorts by its column (again: the other way); cells with data-v sort as numbers, an
# empty data-v last. Filtering: rows holding every word of the box.
JS = """(() => {
  const table = document.getElementById("trials"), body = table.tBodies[0], heads = [...table.tHead.rows[0].cells];
  const key = (row, i) => { const c = row.cells[i], v = c.dataset.v;
    return v === undefined ? c.textContent.trim().toLowerCase() : v === "" ? null : parseFloat(v); };
  heads.forEach((th, i) => th.addEventListener("click", () => {
    const up = th.getAttribute("aria-sort") !== "ascending";
    heads.forEach(h => h.removeAttribute("aria-sort"));
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    body.append(...[...body.rows].sort((a, b) => { const x = key(a, i), y = key(b, i);
      return x === null || y === null ? (x === null) - (y === null) : (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1); }));
    show();
  }));
  const box = document.getElementById("filter"), shown = document.getElementById("shown");
  const more = document.getElementById("more"), page = +more.dataset.page;
  let limit = page;
  const show = () => {  // the rows that match the filter, the first `limit` of them on the page
    const words = box.value.toLowerCase().split(/\\s+/).filter(Boolean);
    let n = 0;
    for (const row of body.rows) {
      const match = words.every(w => row.textContent.toLowerCase().includes(w));
      n += match;
      row.hidden = !match || n > limit;
    }
    shown.textContent = n;
    more.hidden = n <= limit;
    more.textContent = `show ${Math.min(page, n - limit)} more (${n - limit} not shown)`;
  };
  box.addEventListener("input", () => { limit = page; show(); });
  more.addEventListener("click", () => { limit += page; show(); });
})();"""


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
    best_epoch: int | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)  # one metrics.jsonl step record (with "lr") per step
    seconds: float | None = None  # wall time (see _wall_time)


@dataclass
class SweepData:
    dir: Path
    man: mf.Manifest
    metric: str
    mode: str
    trials: list[Trial]  # finished ones first, best first; trials without a value last
    params: list[str]  # swept keys in override order
    _logs: dict[str, dict[str, list[str]]] = field(default_factory=dict, repr=False)  # logs/ folder -> job -> files

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

    @property
    def gpus(self) -> int:
        """GPUs one trial holds (0: a CPU cluster)."""
        cluster = self.man.cluster
        return int(cluster.get("gpus_per_node", 0) or 0) * int(cluster.get("nodes", 1) or 1)

    def gpu_hours(self, t: Trial) -> float | None:
        return None if t.seconds is None or not self.gpus else t.seconds / 3600 * self.gpus

    def job_logs(self, job: str) -> list[Path]:
        """A SLURM job's log files, logs/<array id>/<job id>_<task>_log.{out,err} (logs/<job id>/ from older ftl);
        each folder is listed once, however many trials it holds."""
        folders = list(dict.fromkeys((job.split("_")[0], job)))
        for folder in folders:
            if folder not in self._logs:
                try:
                    names = os.listdir(self.dir / "logs" / folder)
                except OSError:
                    names = []
                self._logs[folder] = {}
                for name in names:
                    self._logs[folder].setdefault(name.rsplit("_", 2)[0], []).append(name)
        return [self.dir / "logs" / f / name for f in folders for name in self._logs[f].get(job, [])]


def _num(value: Any) -> float | None:
    """A finite number from a logged value or an override string, else None."""
    try:
        out = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _r(value: float, digits: int = 4) -> float:
    """A number rounded to 4 significant digits (what a figure's data holds; its axis ranges: 6)."""
    return float(f"{value:.{digits}g}")


def _overrides(rec: mf.TrialRecord) -> str:
    return shown_overrides(rec.overrides) or "-"


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds < 60:
        return "-" if seconds is None else f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    s = round(seconds)
    return f"{s // 60}m {s % 60:02d}s" if s < 3600 else f"{s // 3600}h {s // 60 % 60:02d}m"


def _short(text: str, n: int = 18) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pe(value: Any) -> str:
    """Text for plotly, which reads a few HTML tags in labels: escaped, so `<b>` is shown, not applied."""
    return html.escape(str(value), quote=False)


def _wall_time(records: list[dict[str, Any]]) -> float | None:
    """Seconds a trial ran: the span of its records' time stamps, summed over the runs between resumes (a resumed
    run logs from its checkpoint's step again: a step below the previous record's starts a new span); without time
    stamps, the sum of its epochs' epoch_time_s."""
    total, start, last = 0.0, None, (math.inf, math.inf)
    for r in records:
        t, step = _num(r.get("time")), _num(r.get("step"))
        if t is None:
            continue
        if start is None or t < last[1] or (step is not None and step < last[0]):
            total += 0.0 if start is None else last[1] - start
            start = t
        last = (step if step is not None else last[0], t)
    total += 0.0 if start is None else last[1] - start
    if total > 0:
        return total
    times = [v for r in records if "epoch_time_s" in r and (v := _num(r["epoch_time_s"])) is not None]
    return sum(times) if times else None


def _trial(sweep_dir: Path, rec: mf.TrialRecord) -> Trial:
    progress, result = mf.read_trial_files(sweep_dir, rec)
    state = {"completed": "COMPLETED", "pruned": "PRUNED"}.get(result.get("status", ""), rec.state)
    records = read_jsonl(sweep_dir / rec.run_dir / "metrics.jsonl")
    by_epoch = {r["epoch"]: r for r in records
                if "epoch" in r and ("epoch_time_s" in r or any(k.startswith("val_") for k in r))}  # fmt: skip
    by_step = {r["step"]: r for r in records if "lr" in r and _num(r.get("step")) is not None}  # a resume logs again
    params = dict(o.partition("=")[::2] for o in rec.overrides)
    return Trial(rec, state, params, [by_epoch[e] for e in sorted(by_epoch)], progress, result,
                 steps=[by_step[s] for s in sorted(by_step)], seconds=_wall_time(records))  # fmt: skip


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
    sign = -1 if mode == "max" else 1
    for t in trials:
        values = [(v, r["epoch"]) for r in t.epochs if (v := _num(r.get(metric))) is not None]
        t.final = _num(t.result.get(metric)) if metric in t.result else (values[-1][0] if values else None)
        best = min(values, key=lambda p: (sign * p[0], p[1])) if values else None
        t.best, t.best_epoch = best if best else (t.final, None)
    _rank(trials, metric, mode)
    return SweepData(sweep_dir, man, metric, mode, trials, list(dict.fromkeys(k for t in trials for k in t.params)))


def _rank(trials: list[Trial], metric: str, mode: str) -> None:
    """Finished trials first, best first; then those with a value but no result; then the rest (by id)."""
    sign = -1 if mode == "max" else 1
    trials.sort(key=lambda t: (_num(t.result.get(metric)) is None, t.final is None, sign * (t.final or 0), t.rec.id))


def combine(sweep_dirs: list[str | Path], metric: str | None = None) -> SweepData:
    """Several sweeps as one (`ftl report A B ...`): every trial, its id and a `sweep` parameter naming where it
    ran, ranked together on one metric - to compare W&B-group-style across launches, recipes or clusters. The
    sweeps must share the metric (or --metric names one they all logged) and its direction."""
    sweeps = [load(d, metric) for d in sweep_dirs]
    labels = [Path(sw.dir).resolve().name for sw in sweeps]
    if len(set(labels)) < len(labels):
        labels = [str(Path(sw.dir)) for sw in sweeps]
    first = sweeps[0]
    for sw, label in zip(sweeps[1:], labels[1:]):
        if (sw.metric, sw.mode) != (first.metric, first.mode):
            raise FtlError(f"sweep {label} ranks by {sw.metric} ({sw.mode}) and {labels[0]} by {first.metric} "
                           f"({first.mode}): pass --metric NAME to compare them on one metric")  # fmt: skip
    trials = []
    for sw, label in zip(sweeps, labels):
        for t in sw.trials:
            t.rec = dataclasses.replace(t.rec, id=f"{label}/{t.rec.id}", run_dir=str((sw.dir / t.rec.run_dir).resolve()))
            t.params = {"sweep": label, **t.params}
            trials.append(t)
    _rank(trials, first.metric, first.mode)
    root = Path(os.path.commonpath([str(sw.dir.resolve()) for sw in sweeps]))
    man = dataclasses.replace(first.man, name=" vs ".join(labels), recipe=", ".join(dict.fromkeys(sw.man.recipe for sw in sweeps)),
                              overrides=[], search=None, trials={t.rec.id: t.rec for t in trials}, dir=root)  # fmt: skip
    params = list(dict.fromkeys(k for t in trials for k in t.params))
    return SweepData(root, man, first.metric, first.mode, trials, params)


# ---------------------------------------------------------------- figures (plotly, imported only here)


def _axis(values: list[str]) -> tuple[list[float], bool, list[str]]:
    """Positions for override values: numbers (log when they span more than a decade), else category indices."""
    nums = [_num(v) for v in values]
    if all(n is not None for n in nums):
        return nums, min(nums) > 0 and max(nums) > 10 * min(nums), []  # type: ignore[type-var, operator, return-value]
    cats = list(dict.fromkeys(values))
    return [float(cats.index(v)) for v in values], False, cats


def _range(values: list[float], log: bool = False) -> list[float]:
    """An axis range around the values (log: in decades, as plotly wants it), never empty: one value gets ±10% (a
    log axis half a decade, 0 gets ±1), so a single finished trial has a sane axis."""
    vs = [math.log10(v) for v in values] if log else values
    lo, hi = min(vs), max(vs)
    pad = (hi - lo) * 0.08 if hi > lo else 0.5 if log else abs(lo) * 0.1 or 1.0
    return [_r(lo - pad, 6), _r(hi + pad, 6)]


def _ticks(values: list[float], log: bool) -> dict[str, Any]:
    """Ticks exactly at a few distinct values (labelled with 4 significant digits), else plotly's, rounded."""
    distinct = sorted(set(values))
    if len(distinct) > 8:
        return {"tickformat": ".4~g"}
    return {"tickvals": [_r(math.log10(v) if log else v) for v in distinct], "ticktext": [_fmt(v) for v in distinct]}


def _int_step(span: float) -> int:
    """A tick step for an axis of steps or epochs: about 8 ticks, on whole numbers (1, 2, 5 x 10^k)."""
    raw = span / 8
    if raw <= 1:
        return 1
    decade = 10 ** math.floor(math.log10(raw))
    return next(m * decade for m in (1, 2, 5, 10) if m * decade >= raw)


def _label(t: Trial, sw: SweepData) -> str:
    label = f"{t.rec.id} " + " ".join(f"{k.rsplit('.', 1)[-1]}={_short(shown(t.params.get(k, '-')), 14)}"
                                      for k in sw.varying)  # fmt: skip
    return _pe(label if len(label) <= 60 else label[:59] + "…")


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= CURVE_POINTS:
        return points
    every = math.ceil(len(points) / CURVE_POINTS)
    return points[::every] + ([points[-1]] if (len(points) - 1) % every else [])


def _curves_figure(sw: SweepData) -> Any:
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    trials = [t for t in sw.trials if t.steps or t.epochs][:CURVE_TRIALS]
    panels = [("train_loss", "step"), ("lr", "step"), *((k, "epoch") for k in dict.fromkeys(("val_loss", sw.metric)))]
    series = {(t.rec.id, k, x): _thin([(r[x], _r(v)) for r in (t.steps if x == "step" else t.epochs)
                                       if (v := _num(r.get(k))) is not None and _num(r.get(x)) is not None])
              for t in trials for k, x in panels}  # fmt: skip
    panels = [(k, x) for k, x in panels if any(series[t.rec.id, k, x] for t in trials)]
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows, cols, subplot_titles=[_pe(f"{k} per {x}") for k, x in panels], vertical_spacing=0.16)
    colors, best = qualitative.D3 if len(trials) <= 10 else qualitative.Alphabet, (sw.done or [None])[0]
    for i, t in enumerate(trials):
        in_legend = False
        for n, (key, x) in enumerate(panels):
            if points := series[t.rec.id, key, x]:
                xs, ys = zip(*points)
                pruned = t.state == "PRUNED"  # its last epoch marked with an x: where early stopping ended it
                marker = {"size": 6, "symbol": ["circle"] * (len(xs) - 1) + ["x-thin-open" if pruned else "circle"],
                          "line": {"width": 2, "color": colors[i % len(colors)]}}  # fmt: skip
                fig.add_trace(go.Scatter(
                    x=xs, y=ys, mode="lines+markers" if x == "epoch" else "lines", marker=marker,
                    name=_label(t, sw) + " ★" * (t is best) + " (pruned)" * pruned, legendgroup=t.rec.id,
                    showlegend=not in_legend, line={"color": colors[i % len(colors)], "width": 3.5 if t is best else 1.6,
                                                     "dash": "dash" if t.state in FAILED else "dot" if pruned else "solid"},
                    hovertemplate=f"%{{fullData.name}}<br>{x} %{{x}}<br>{_pe(key)} %{{y:.4~g}}<extra></extra>"),
                    row=n // cols + 1, col=n % cols + 1)  # fmt: skip
                in_legend = True
    for n, (key, x) in enumerate(panels):
        ys = [y for t in trials for _, y in series[t.rec.id, key, x]]
        decades = math.log10(max(ys) / min(ys)) if key == "lr" and min(ys) > 0 else 0.0
        xs = [at for t in trials for at, _ in series[t.rec.id, key, x]]
        fig.update_xaxes(title_text=x, dtick=_int_step(max(xs) - min(xs)), row=n // cols + 1, col=n % cols + 1)
        log = {"type": "log", "exponentformat": "e", "dtick": "D2" if decades <= 3 else math.ceil(decades / 8)}
        axis = log if decades > 1 else {"type": "linear", "tickformat": ".4~g"}  # a one-cycle lr spans many decades
        fig.update_yaxes(axis, row=n // cols + 1, col=n % cols + 1)
    fig.update_layout(template="none", height=360 * rows + 80, margin={"t": 40, "b": 50, "l": 60, "r": 20},
                      hovermode="closest", legend={"font": {"size": 11}, "groupclick": "togglegroup"})  # fmt: skip
    return fig


def _params_figure(sw: SweepData) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    keys, done = sw.varying, sw.done
    if not keys or not done:
        return None
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows, cols, subplot_titles=[_pe(k) for k in keys], horizontal_spacing=0.08,
                        vertical_spacing=0.5 / rows)  # fmt: skip
    ys = [_r(t.final) for t in done]  # type: ignore[arg-type]
    for n, key in enumerate(keys):
        row, col = n // cols + 1, n % cols + 1
        values = [t.params.get(key, "-") for t in done]
        xs, log, cats = _axis(values)
        fig.add_trace(go.Scatter(
            x=[_pe(v) for v in values] if cats else [_r(x) for x in xs], y=ys, mode="markers", showlegend=False,
            marker={"size": [16] + [10] * (len(done) - 1), "symbol": ["star"] + ["circle"] * (len(done) - 1),
                    "color": ["#cf222e"] + ["#0969da"] * (len(done) - 1), "opacity": 0.85},
            customdata=[[_pe(t.rec.id), _pe(shown(v)), t.state.lower()] for t, v in zip(done, values)],
            hovertemplate=f"trial %{{customdata[0]}} (%{{customdata[2]}})<br>{_pe(key)} = %{{customdata[1]}}<br>"
                          f"{_pe(sw.metric)} %{{y:.4~g}}<extra></extra>"), row=row, col=col)  # fmt: skip
        if cats:
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=[_pe(c) for c in cats],
                             range=[-0.5, len(cats) - 0.5], row=row, col=col)  # fmt: skip
        else:
            numeric: list[float] = xs  # type: ignore[assignment]
            fig.update_xaxes(type="log" if log else "linear", range=_range(numeric, log), row=row, col=col,
                             **_ticks(numeric, False))  # fmt: skip
        fig.update_yaxes(range=_range(ys), tickformat=".4~g", title_text=_pe(sw.metric) if col == 1 else None,
                         row=row, col=col)  # fmt: skip
    fig.update_layout(template="none", height=320 * rows + 40, margin={"t": 40, "b": 50, "l": 70, "r": 20})
    return fig


def _parallel_figure(sw: SweepData) -> Any:
    import plotly.graph_objects as go

    keys, done = sw.varying, sw.done
    if not keys or not done:
        return None
    dims = []
    for key in keys:
        xs, log, cats = _axis([t.params.get(key, "-") for t in done])
        if cats:
            ticks = [_short(shown(c), 24) for c in cats]  # parcoords shows tick labels as plain text: not escaped
            dims.append({"label": _pe(key), "values": xs, "range": [-0.5, len(cats) - 0.5],
                         "tickvals": list(range(len(cats))), "ticktext": ticks})  # fmt: skip
        else:
            numeric: list[float] = xs  # type: ignore[assignment]
            values = [_r(math.log10(x) if log else x) for x in numeric]
            dims.append({"label": _pe(key + " (log)" * log), "values": values, "range": _range(numeric, log),
                         **_ticks(numeric, log)})  # fmt: skip
    ys = [_r(t.final) for t in done]  # type: ignore[arg-type]
    lo, hi = _range(ys)
    dims.append({"label": _pe(sw.metric), "values": ys, "range": [lo, hi], "tickformat": ".4~g"})
    line = {"color": ys, "colorscale": "Viridis", "reversescale": sw.mode == "min", "cmin": lo, "cmax": hi,
            "showscale": True, "colorbar": {"title": {"text": _pe(sw.metric)}, "tickformat": ".4~g"}}  # fmt: skip
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line, labelangle=0, labelside="top"))
    fig.update_layout(template="none", height=460, margin={"t": 70, "b": 30, "l": 80, "r": 40})
    return fig


class _Plots:
    """Figures as HTML. plotly.js goes once into the page's <head> (`script`), whatever order the sections are
    drawn and placed in - a figure above the one that carried the library was a blank section - and the page
    needs no network."""

    def __init__(self) -> None:
        self.drawn = False

    def __call__(self, fig: Any, div_id: str, note: str) -> str:
        if fig is None:
            return f'<p class="note">{_e(note)}</p>'
        self.drawn = True
        return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG,
                           default_height=f"{fig.layout.height}px")  # fmt: skip

    def script(self) -> str:
        """plotly.js inlined, when the page has a figure."""
        if not self.drawn:
            return ""
        from plotly.offline import get_plotlyjs

        return f'<script type="text/javascript">{get_plotlyjs()}</script>'


# ---------------------------------------------------------------- files and logs


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - 65536))
        return "\n".join(f.read().decode(errors="replace").splitlines()[-LOG_LINES:])


def _slurm_logs(sw: SweepData, rec: mf.TrialRecord) -> list[Path]:
    """The newest SLURM *_log.err and *_log.out of the trial's last job that has any."""
    for job in reversed(rec.job_ids):
        files = sw.job_logs(job)
        newest = [max((f for f in files if f.name.endswith(p)), key=lambda f: f.stat().st_mtime, default=None)
                  for p in ("_log.err", "_log.out")]  # fmt: skip
        if found := [p for p in newest if p is not None]:
            return found
    return []


def failure_logs(sw: SweepData, rec: mf.TrialRecord) -> list[tuple[str, str]]:
    """(path, last lines) of a trial's logs: its newest SLURM logs (see _slurm_logs), else its train.log."""
    found = _slurm_logs(sw, rec)
    if not found and (sw.dir / rec.run_dir / "train.log").is_file():
        found = [sw.dir / rec.run_dir / "train.log"]
    return [(str(p.relative_to(sw.dir)), _tail(p)) for p in found]


def _link(path: Path, here: Path, text: str) -> str:
    """A relative link from the page's folder `here` to a file or folder of the sweep (a file: URL once opened)."""
    rel = os.path.relpath(path.resolve(), here) + ("/" if path.is_dir() else "")
    return f'<a href="{_e(quote(rel))}">{_e(text)}</a>'


# ---------------------------------------------------------------- sections


def _dl(rows: list[tuple[str, Any]]) -> str:
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>"


def _state(state: str, count: str = "") -> str:
    return f'<span class="st {_e(state)}">{count}{_e(state.lower())}</span>'


def _counts(sw: SweepData) -> list[tuple[str, int]]:
    states = [t.state for t in sw.trials]
    return [(s, states.count(s)) for s in sorted(set(states))]


def _summary(sw: SweepData) -> str:
    man, best, c = sw.man, (sw.done or [None])[0], sw.man.cluster
    seconds = [t.seconds for t in sw.trials if t.seconds is not None]
    hours = sum(h for t in sw.trials if (h := sw.gpu_hours(t)) is not None)
    cluster = f"{c.get('name', '-')} ({c.get('executor', '-')}): " + (
        f"{c.get('nodes', 1)} node(s) x {c.get('gpus_per_node')} GPU(s) per trial" if sw.gpus else "CPU")
    compute = f"{_duration(sum(seconds))} over {len(seconds)} trials" + f", {_fmt(hours)} GPU-hours" * bool(sw.gpus)
    body = _dl([("sweep", man.name), ("recipe", man.recipe), ("metric", f"{sw.metric} ({sw.mode})"),
                ("created", man.created), ("sweep dir", sw.dir.resolve()), ("cluster", cluster),
                ("compute", compute if seconds else "-"),
                ("best trial", f"{best.rec.id}: {sw.metric} {_fmt(best.final)}" + (
                    f" (its best epoch: {_fmt(best.best)} at epoch {best.best_epoch})"
                    if best.best_epoch is not None else "") if best else "-")])  # fmt: skip
    states = "".join(_state(s, f"{n} ") for s, n in _counts(sw))
    body = body.replace("</dl>", f"<dt>trials</dt><dd>{len(sw.trials)}: {states}</dd></dl>")
    if not best:
        body += (f'<p class="note">No finished trial: none of the {len(sw.trials)} trials has a final '
                 f"{_e(sw.metric)} yet, so there is no best trial and the hyperparameter plots are skipped.</p>")
    return body


def _td(text: str, v: Any = None, cls: str = "") -> str:
    """A cell (text already escaped); v: its sort value (a number, or "" for none: sorted last)."""
    attrs = (f' class="{cls}"' if cls else "") + ("" if v is None else f' data-v="{_e(v)}"')
    return f"<td{attrs}>{text}</td>"


def _files(sw: SweepData, t: Trial, here: Path) -> str:
    run_dir = sw.dir / t.rec.run_dir
    links = [_link(run_dir, here, "run dir")] if run_dir.is_dir() else []
    links += [_link(run_dir / "train.log", here, "train.log")] * (run_dir / "train.log").is_file()
    links += [_link(p, here, p.name) for p in _slurm_logs(sw, t.rec)]
    return " ".join(links) or "-"


def _table(sw: SweepData, here: Path) -> str:
    best, rows = (sw.done or [None])[0], []
    numeric = {k for k in sw.params if all(_num(t.params[k]) is not None for t in sw.trials if k in t.params)}
    for t in sw.trials:
        p, hours = t.progress, sw.gpu_hours(t)
        epochs = f"{p['epoch']}/{p['epochs']}" if "epochs" in p and "epoch" in p else str(len(t.epochs) or "-")
        best_at = f" <small>ep {t.best_epoch}</small>" if t.best_epoch is not None else ""
        cells = [_td(_e(t.rec.id)), _td(_state(t.state)), _td(_e(epochs), p.get("epoch", len(t.epochs)), "num"),
                 _td(_fmt(t.final), _fmt(t.final) if t.final is not None else "", "num"),
                 _td(_fmt(t.best) + best_at, _fmt(t.best) if t.best is not None else "", "num"),
                 _td(_duration(t.seconds), round(t.seconds) if t.seconds is not None else "", "num"),
                 _td(_fmt(hours) if sw.gpus else "CPU", _fmt(hours) if hours is not None else "", "num"),
                 *(_td(_e(shown(v)), _fmt(_num(v)) if k in numeric and v != "-" else None, "num" * (k in numeric))
                   for k in sw.params for v in [t.params.get(k, "-")]),
                 _td(_e(t.rec.job_id or "-")), _td(_files(sw, t, here), cls="files")]  # fmt: skip
        hidden = " hidden" * (len(rows) >= TABLE_PAGE)  # a page at a time: 10,000 rows stay quick to open
        rows.append(f"<tr{' class=best' * (t is best)}{hidden}>{''.join(cells)}</tr>")
    heads = ["trial", "state", "epochs", sw.metric, "best (epoch)", "duration", "GPU-h", *sw.params, "job", "files"]
    tools = (f'<div class="tools"><input id="filter" type="search" placeholder="filter: words in a row (id, state, '
             f'value)" aria-label="filter trials"><span><span id="shown">{len(rows)}</span> of {len(rows)} trials '
             f"match (up to {TABLE_PAGE} shown, more below); click a header to sort</span></div>")  # fmt: skip
    head = "".join(f"<th>{_e(h)}</th>" for h in heads)
    rest = len(rows) - TABLE_PAGE
    more = (f'<button id="more" type="button" data-page="{TABLE_PAGE}"{" hidden" * (rest <= 0)}>show '
            f"{min(TABLE_PAGE, rest)} more ({rest} not shown)</button>")  # fmt: skip
    return f'{tools}<table id="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>{more}'


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix.rstrip("."): d} if prefix else {}
    return {k: v for key, sub in d.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}


def _value(v: Any) -> str:
    """A config value as YAML shows it, floats with 4 significant digits."""
    if isinstance(v, list):
        return "[" + ", ".join(map(_value, v)) + "]"
    if v is None or isinstance(v, bool):
        return "null" if v is None else "true" if v else "false"
    return _fmt(v) if isinstance(v, float) else "(unset)" if v == "???" else str(v)


def _config_diff(sw: SweepData, t: Trial) -> str:
    """The keys of the trial's config.yaml that differ from the sweep's recipe.yaml (with the schema's defaults)."""
    from core import config as config_lib

    recipe, config = sw.dir / "recipe.yaml", sw.dir / t.rec.run_dir / "config.yaml"
    try:
        ours = _flat(config_lib.read_yaml_mapping(config, "config"))
        raw = config_lib.read_yaml_mapping(recipe, "recipe")
    except FtlError as e:
        return f'<p class="note">No config diff: {_e(e)}</p>'
    try:
        base = _flat(config_lib.to_dict(config_lib.build([raw], str(recipe), check=False)))
    except FtlError:  # a recipe this ftl's schema no longer takes: compared as written
        base = _flat(raw)
    keys = {o.partition("=")[0].strip().lstrip("+"): "trial" for o in t.rec.overrides}
    keys = {**{o.partition("=")[0].strip().lstrip("+"): "sweep" for o in sw.man.overrides}, **keys}
    missing, written = object(), _flat(raw)
    rows = [(k, base.get(k, missing), v) for k, v in ours.items() if base.get(k, missing) != v]
    rows += [(k, v, missing) for k, v in written.items() if k not in ours]  # a recipe key the trial's config lacks
    cells = "".join(f"<tr><td><code>{_e(k)}</code></td><td>{_e('(absent)' if a is missing else _value(a))}</td>"
                    f"<td>{_e('(absent)' if b is missing else _value(b))}</td><td>{keys.get(k, 'ftl')}</td></tr>"
                    for k, a, b in rows)  # fmt: skip
    head = "<tr><th>key</th><th>recipe.yaml</th><th>this trial</th><th>set by</th></tr>"
    return (f"<h3>Config: {len(rows)} keys differ from recipe.yaml</h3><p>set by: trial (its overrides), sweep "
            f"(the sweep's overrides), ftl (the launch: W&amp;B group and name; or resolved when the trial ran)</p>"
            f'<table class="diff"><thead>{head}</thead><tbody>{cells}</tbody></table>')  # fmt: skip


def _best(sw: SweepData, here: Path) -> str:
    if not sw.done:
        return '<p class="note">No best trial yet: no trial has finished.</p>'
    t, run_dir = sw.done[0], sw.dir / sw.done[0].rec.run_dir
    epoch = f" (epoch {t.best_epoch})" if t.best_epoch is not None else ""
    hours = sw.gpu_hours(t)
    rows = [("trial", t.rec.id), ("state", t.state.lower()), (sw.metric, _fmt(t.final)),
            (f"best epoch's {sw.metric}", _fmt(t.best) + epoch),
            ("duration", _duration(t.seconds) + (f", {_fmt(hours)} GPU-hours" if hours is not None else "")),
            ("overrides", _overrides(t.rec))]  # fmt: skip
    config = run_dir / "config.yaml"
    files = _files(sw, t, here) + (f" {_link(config, here, 'config.yaml')}" if config.is_file() else "")
    return _dl(rows).replace("</dl>", f"<dt>files</dt><dd>{files}</dd></dl>") + _config_diff(sw, t)


def _failures(sw: SweepData, here: Path) -> str:
    parts = []
    for t in (t for t in sw.trials if t.state in FAILED):
        parts.append(f"<h3>{_e(t.rec.id)} {_state(t.state)}</h3><p>overrides: {_e(_overrides(t.rec))}; "
                     f"jobs: {_e(', '.join(t.rec.job_ids) or '-')}</p>")  # fmt: skip
        if t.rec.cause or t.result.get("error"):
            again = st.resume_helps(t.state, bool(t.result.get("error")))
            parts.append(f'<p class="cause">cause: {_e(t.rec.cause or str(t.result["error"]).splitlines()[-1])} - '
                         + ("a resume continues it" if again else "a resume would repeat it: fix the cause first")
                         + "</p>")  # fmt: skip
        logs = failure_logs(sw, t.rec)
        parts += [f"<p>last lines of {_link(sw.dir / path, here, path)}:</p><pre>{_e(text)}</pre>"
                  for path, text in logs] or ["<p>no log</p>"]  # fmt: skip
    return "".join(parts) or "<p>No failed, lost, preempted, cancelled or held trial.</p>"


def build_report(sweep_dir: str | Path | list, out: Path | None = None, metric: str | None = None) -> Path:
    """Write the sweep's self-contained HTML report (default DIR/report.html) atomically; returns its path.
    A list of sweep dirs: one report of all their trials (`combine`), by default compare.html beside them."""
    several = isinstance(sweep_dir, list)
    sw = combine(sweep_dir, metric) if several else load(sweep_dir, metric)  # type: ignore[arg-type]
    out = Path(out) if out else sw.dir / ("compare.html" if several else "report.html")
    here, plot = out.parent.resolve(), _Plots()
    none = f"No finished trial with a {sw.metric} yet: nothing to plot." if not sw.done else "No swept hyperparameter."
    curves = [t for t in sw.trials if t.steps or t.epochs]
    capped = (f'<p class="note">The {CURVE_TRIALS} best-ranked of {len(curves)} trials with curves.</p>'
              if len(curves) > CURVE_TRIALS else "")  # fmt: skip
    sections = [("summary", "Summary", "Summary", _summary(sw)), ("table", "Trials", "Trials", _table(sw, here)),
                ("best", "Best trial", "Best trial", _best(sw, here)),
                ("curves", "Curves", "Learning curves", capped + plot(
                    _curves_figure(sw), "plot-curves", f"No trial has logged {sw.metric} yet: nothing to plot.")),
                ("params", "Hyperparameters", f"{sw.metric} against each swept hyperparameter",
                 plot(_params_figure(sw), "plot-params", none)),
                ("parallel", "Parallel coordinates", "Parallel coordinates (drag along an axis to filter)",
                 plot(_parallel_figure(sw), "plot-parallel", none)),
                ("failures", "Failures", "Failures", _failures(sw, here))]  # fmt: skip
    if sw.man.search:
        from launcher.report_search import search_figures

        history, importance, note = search_figures(sw.man)
        s = sw.man.search
        intro = (f"<p>{_e(s['method'])} search: {len(sw.man.trials)} of {s['n_trials']} trials asked, "
                 f"{len(s['space'])} parameters, {s['max_parallel']} worker slots.</p>")  # fmt: skip
        body = intro + plot(history, "plot-search-history", note) + (plot(importance, "plot-importance", note)
                                                                     if importance is not None else "")  # fmt: skip
        sections.insert(3, ("search", "Search", "The search: best so far and parameter importances", body))
    nav = "".join(f'<a href="#{sid}">{_e(short)}</a>' for sid, short, _, _ in sections)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ftl sweep {_e(sw.man.name)}</title>'
            f"<style>{CSS}</style>{plot.script()}</head><body><main><h1>Sweep {_e(sw.man.name)}</h1><nav>{nav}</nav>"
            + "".join(f'<section id="{sid}"><h2>{_e(title)}</h2>{body}</section>' for sid, _, title, body in sections)
            + f"</main><script>{JS}</script></body></html>\n")  # fmt: skip
    write_text_atomic(out, page)
    return out
