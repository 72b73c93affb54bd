"""`ftl report`: the self-contained interactive HTML report of a sweep (rendered and driven in headless chromium) and
the W&B Report spec.

Fast tests use sweep dirs written by hand (manifest + trial files); the slow ones run a real 3-trial local sweep. The
chromium tests load a copy of the page with a probe script injected first: it records script errors and every
resource the page fetched, clicks table headers, types into the filter and reports what the DOM then shows.
"""

import html
import json
import re
import shutil
import socket
import subprocess

import pytest
import yaml

from core.errors import FtlError
from launcher import manifest as mf
from launcher import report, wandb_report
from tests.conftest import ftl, run_ftl, write_sweep_dir

pytestmark = pytest.mark.filterwarnings("ignore:Pydantic V1 style:DeprecationWarning")  # from wandb-workspaces
PLOTS = ("curves", "params", "parallel")
SECTIONS = ("summary", "table", "best", *PLOTS, "failures")
CHROMIUM = pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/setup.sh)")
PLOTLY_JS = re.compile(r"<script[^>]*>/\*\*? ?\n?\* plotly\.js v.*?</script>", re.S)  # the inlined library


def trial_files(run_dir, val_top1: list[float], status="completed", lr=1e-3, t0=1000.0):
    run_dir.mkdir(parents=True)
    lines = []
    for epoch, top1 in enumerate(val_top1, 1):
        time = t0 + epoch * 60  # a step record 30 s into each epoch, the epoch's 30 s later
        lines += [{"step": epoch * 5 - 2, "epoch": epoch, "train_loss": 1.0 / epoch, "lr": lr, "time": time - 30},
                  {"step": epoch * 5, "epoch": epoch, "train_loss": 0.9 / epoch, "epoch_time_s": 1.0,
                   "val_loss": 1 - top1, "val_top1": top1, "val_top5": 1.0, "val_n": 100, "time": time}]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run_dir / "progress.json").write_text(json.dumps({"epoch": len(val_top1), "epochs": 2, "best": max(val_top1)}))
    if status:
        result = {"status": status, "val_top1": val_top1[-1], "val_loss": 1 - val_top1[-1]}
        (run_dir / "result.json").write_text(json.dumps(result))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"optim": {"lr": lr}, "tracking": {"project": "proj-x"}}))


def fake_sweep(tmp_path, name="t", executor="local", ran=True, specs=None, cluster=None):
    """A sweep dir by hand: 3 completed trials over lr x model, one failed trial, one never started."""
    specs = specs or [("a1", 1e-4, "resnet", [0.5, 0.6]), ("b2", 1e-3, "resnet", [0.7, 0.9]),
                      ("c3", 1e-2, "<b>vit</b>", [0.6, 0.8]), ("d4", 3e-2, "vit", [0.2])]  # fmt: skip
    trials = {}
    for tid, lr, model, top1 in specs:
        rec = mf.TrialRecord(tid, [f"optim.lr={lr}", f"model.name={model}"], f"trials/{tid}", attempt=1,
                             job_ids=[f"local-{tid}.1"])  # fmt: skip
        if ran:
            trial_files(tmp_path / rec.run_dir, top1, status=None if tid == "d4" else "completed", lr=lr)
            rec.state = "FAILED" if tid == "d4" else "RUNNING"  # stale: result.json says completed
        trials[tid] = rec
    trials["e5"] = mf.TrialRecord("e5", ["optim.lr=0.5", "model.name=<vit & co>"], "trials/e5", state="DEFERRED")
    man = mf.Manifest(name, "base", [], "val_top1", "max", {"executor": executor, **(cluster or {})}, None,
                      "2026-01-02T03:04:05", trials, uid="0123abcd", dir=tmp_path)  # fmt: skip
    write_sweep_dir(tmp_path, man)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"optim": {"lr": 0.01}, "tracking": {"project": "proj-x"}}))
    if ran and "a1" in trials:
        with open(tmp_path / "trials/a1/metrics.jsonl", "a") as f:
            f.write('{"step": 12, "epo')  # a line cut short by a killed job
    if ran and "d4" in trials:
        log = "".join(f"line {i}\n" for i in range(50)) + "boom: <bad> & worse\n"
        (tmp_path / "trials/d4/train.log").write_text(log)
        error = {"status": "failed", "error": "Traceback (most recent call last):\nValueError: bad <image>"}
        (tmp_path / "trials/d4/result.json").write_text(json.dumps(error))
    return tmp_path


def sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="(\w+)">(.*?)</section>', page, re.S))


def rows(table: str) -> list[str]:
    return re.findall(r"<tr[^>]*><td>(\w+)</td>", table)


def figure(page: str, div_id: str) -> tuple[list[dict], dict]:
    """(data, layout) of one plotly figure of the page, as plotly.py wrote them."""
    match = re.search(rf'Plotly\.newPlot\(\s*"{div_id}",\s*(\[.*?\]),\s*(\{{.*?\}}),\s*\{{"displaylogo"', page, re.S)
    assert match, f"no figure {div_id}"
    return json.loads(match[1]), json.loads(match[2])


def long_numbers(text: str) -> list[str]:
    """Decimals shown with more than 4 significant digits."""
    return [n for n in re.findall(r"\d*\.\d+(?:e[-+]?\d+)?", text)
            if len(n.split("e")[0].replace(".", "").lstrip("0")) > 4]  # fmt: skip


def test_report_of_a_hand_written_sweep(tmp_path):
    out = report.build_report(fake_sweep(tmp_path))
    assert out == tmp_path / "report.html"
    page = out.read_text()
    found = sections(page)
    assert list(found) == list(SECTIONS)
    head = page.split("</head>")[0]  # inlined once, in <head>: above every figure, whatever the sections' order
    assert len(PLOTLY_JS.findall(page)) == 1 and PLOTLY_JS.search(head)
    for sid in PLOTS:
        assert found[sid].count('class="plotly-graph-div"') == 1 and f'"plot-{sid}"' in found[sid]
    assert "<dd>5: " in found["summary"] and "2026-01-02T03:04:05" in found["summary"]
    assert "3 completed" in found["summary"] and "1 failed" in found["summary"] and "1 deferred" in found["summary"]
    assert "(local): CPU" in found["summary"] and "5m 00s over 4 trials" in found["summary"]
    assert rows(found["table"]) == ["b2", "c3", "a1", "d4", "e5"]  # by val_top1, best first; no value last
    heads = re.findall(r"<th>(.*?)</th>", found["table"])
    assert heads == ["trial", "state", "epochs", "val_top1", "best (epoch)", "duration", "GPU-h", "optim.lr",
                     "model.name", "job", "files"]  # fmt: skip
    b2 = re.search(r"<tr class=best>(.*?)</tr>", found["table"])[1]
    assert re.findall(r"<td[^>]*>(.*?)</td>", b2)[2:9] == ["2/2", "0.9", "0.9 <small>ep 2</small>", "1m 30s", "CPU",
                                                           "0.001", "resnet"]  # fmt: skip
    assert 'data-v="0.9"' in b2 and 'data-v="90"' in b2 and '<a href="trials/b2/">run dir</a>' in b2
    assert "&lt;vit &amp; co&gt;" in found["table"] and "&lt;b&gt;vit&lt;/b&gt;" in found["table"]
    assert "b2" in found["best"] and '<a href="trials/b2/config.yaml">config.yaml</a>' in found["best"]
    diff = re.findall(r"<tr><td><code>(.*?)</code></td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", found["best"])
    assert diff == [("optim.lr", "0.01", "0.001", "trial")] and "1 keys differ" in found["best"]
    assert "d4" in found["failures"] and "e5" not in found["failures"]
    assert "cause: ValueError: bad &lt;image&gt; - a resume would repeat it: fix the cause first" in found["failures"]
    assert '<a href="trials/d4/train.log">trials/d4/train.log</a>' in found["failures"]
    assert "boom: &lt;bad&gt; &amp; worse" in found["failures"] and "line 21\n" in found["failures"]
    assert "line 20\n" not in found["failures"]  # the last 30 lines only
    assert "<vit" not in page and "<b>vit" not in page  # escaped, in the page and in the figures' JSON
    assert "http" not in PLOTLY_JS.sub("", page)  # nothing to fetch (plotly.js itself names sites it never loads)
    curves, layout = figure(page, "plot-curves")
    assert [t["name"] for t in curves if t["showlegend"]] == [
        "b2 lr=0.001 name=resnet ★", "c3 lr=0.01 name=&lt;b&gt;vit&lt;/b&gt;", "a1 lr=0.0001 name=resnet",
        "d4 lr=0.03 name=vit"]  # fmt: skip
    assert len(curves) == 4 * 4 and [a["text"] for a in layout["annotations"]] == [
        "train_loss per step", "lr per step", "val_loss per epoch", "val_top1 per epoch"]
    assert layout["yaxis2"]["type"] == "log" and layout["yaxis"]["type"] == "linear"  # lr spans 2 decades
    assert curves[0]["x"] == [3, 8] and curves[0]["line"]["width"] > curves[4]["line"]["width"]  # best thicker
    assert [t["line"]["dash"] for t in curves[12:]] == ["dash"] * 4  # the failed trial
    params, layout = figure(page, "plot-params")
    assert layout["xaxis"]["type"] == "log" and layout["xaxis"]["ticktext"] == ["0.0001", "0.001", "0.01"]
    assert layout["xaxis2"]["type"] == "category" and params[1]["x"] == ["resnet", "&lt;b&gt;vit&lt;/b&gt;", "resnet"]
    (parallel,), _ = figure(page, "plot-parallel")
    assert [d["label"] for d in parallel["dimensions"]] == ["optim.lr (log)", "model.name", "val_top1"]
    assert parallel["dimensions"][0]["ticktext"] == ["0.0001", "0.001", "0.01"]
    assert parallel["dimensions"][1]["ticktext"] == ["resnet", "<b>vit</b>"]  # plotly shows these as text
    assert not long_numbers(re.sub(r"<script.*?</script>|<pre>.*?</pre>", "", page, flags=re.S))


def test_random_sweep_values_are_rounded_and_gpu_hours_counted(tmp_path):
    lrs = [0.00031622776601683794, 0.0012589254117941675]
    fake_sweep(tmp_path, specs=[("r1", lrs[0], "m", [0.5, 0.6]), ("r2", lrs[1], "m", [0.6, 0.75])],
               cluster={"name": "gpu", "nodes": 2, "gpus_per_node": 4})  # fmt: skip
    page = report.build_report(tmp_path).read_text()
    found = sections(page)
    assert "2 node(s) x 4 GPU(s) per trial" in found["summary"] and "0.4 GPU-hours" in found["summary"]
    assert ">0.001259<" in found["table"] and ">0.0003162<" in found["table"]
    assert ">1m 30s<" in found["table"] and ">0.2<" in found["table"]  # 90 s x 8 GPUs = 0.2 GPU-hours
    assert "0.000316227" not in page and not long_numbers(re.sub(r"<script.*?</script>", "", page, flags=re.S))
    curves, _ = figure(page, "plot-curves")
    assert curves[0]["name"] == "r2 lr=0.001259 ★"


def test_another_metric_and_an_unknown_one(tmp_path):
    fake_sweep(tmp_path)
    page = report.build_report(tmp_path, out=tmp_path / "loss.html", metric="val_loss").read_text()
    assert rows(sections(page)["table"])[:3] == ["b2", "c3", "a1"]  # minimised
    assert "val_loss (min)" in sections(page)["summary"]
    _, layout = figure(page, "plot-curves")
    assert [a["text"] for a in layout["annotations"]] == ["train_loss per step", "lr per step", "val_loss per epoch"]
    (parallel,), _ = figure(page, "plot-parallel")
    assert parallel["line"]["reversescale"] is True and parallel["dimensions"][-1]["label"] == "val_loss"
    logged = "val_loss, val_top1, val_top5, epoch_time_s, train_loss"
    with pytest.raises(FtlError, match=rf"no trial logged the metric 'val_top2' .*; the trials logged: {logged}$"):
        report.build_report(tmp_path, metric="val_top2")
    assert not (tmp_path / "report.html").exists() and not list(tmp_path.glob(".report.html.*"))


def test_not_a_sweep_dir(tmp_path):
    with pytest.raises(FtlError, match="is not a sweep dir"):
        report.build_report(tmp_path)
    with pytest.raises(FtlError, match="is not a sweep dir"):
        wandb_report.build_wandb_report(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_sweep_with_no_finished_trial(tmp_path):
    out = report.build_report(fake_sweep(tmp_path, ran=False), metric="val_top1")
    page = out.read_text()
    found = sections(page)
    assert list(found) == list(SECTIONS) and "No finished trial" in found["summary"]
    assert "Plotly" not in page and all("nothing to plot" in found[s] for s in PLOTS)  # no figure: no plotly.js
    assert out.stat().st_size < 50_000 and rows(found["table"]) == ["a1", "b2", "c3", "d4", "e5"]
    assert "No best trial yet" in found["best"] and "No failed" in found["failures"]
    spec = wandb_report.build_wandb_report(tmp_path, entity="team-y").read_text()
    assert json.loads(spec)["displayName"] == "ftl sweep t"


def test_one_finished_trial_has_sane_axes(tmp_path):
    fake_sweep(tmp_path, specs=[("a1", 1e-3, "resnet", [0.5, 0.7])])
    page = report.build_report(tmp_path).read_text()
    assert "a1: val_top1 0.7 (its best epoch: 0.7 at epoch 2)" in sections(page)["summary"]  # was "(best epoch 0.7)"
    (lr, model), layout = figure(page, "plot-params")  # optim.lr 0.001 and model.name resnet: one value each
    assert lr["x"] == [0.001] and lr["y"] == [0.7] and model["x"] == ["resnet"]
    lo, hi = layout["xaxis"]["range"]
    assert lo < 0.001 < hi and layout["xaxis"]["type"] == "linear" and layout["xaxis"]["ticktext"] == ["0.001"]
    assert layout["xaxis2"]["type"] == "category" and layout["xaxis2"]["range"] == [-0.5, 0.5]
    lo, hi = layout["yaxis"]["range"]
    assert lo < 0.7 < hi and hi - lo < 0.5
    (parallel,), _ = figure(page, "plot-parallel")
    for dim in parallel["dimensions"]:
        assert dim["range"][0] < dim["values"][0] < dim["range"][1], dim
    assert parallel["line"]["cmin"] < 0.7 < parallel["line"]["cmax"]
    curves, _ = figure(page, "plot-curves")
    assert len(curves) == 4 and curves[3]["x"] == [1, 2] and curves[3]["y"] == [0.5, 0.7]


def test_slurm_logs_come_from_the_newest_job(tmp_path):
    fake_sweep(tmp_path, executor="slurm", cluster={"gpus_per_node": 2})
    with mf.locked(tmp_path) as man:
        man.update(man.trials["d4"], job_ids=["100_3", "101_3"])
    (tmp_path / "trials/d4/train.log").unlink()
    for job in ("100_3", "101_3"):
        (tmp_path / "logs" / job[:3]).mkdir(parents=True)
        (tmp_path / "logs" / job[:3] / f"{job}_0_log.err").write_text(f"err of {job}\nTraceback: CUDA out of memory\n")
        (tmp_path / "logs" / job[:3] / f"{job}_0_log.out").write_text(f"out of {job}\n")
    found = sections(report.build_report(tmp_path, out=tmp_path / "out" / "r.html").read_text())
    failures = found["failures"]
    assert "logs/101/101_3_0_log.err" in failures and "logs/101/101_3_0_log.out" in failures
    assert "err of 101" in failures and "out of 101" in failures and "of 100" not in failures
    d4 = re.search(r"<tr><td>d4</td>(.*?)</tr>", found["table"])[1]  # links relative to the report's folder
    assert '<a href="../logs/101/101_3_0_log.err">101_3_0_log.err</a>' in d4 and '"../trials/d4/"' in d4
    assert ">0.01667<" in d4  # 30 s on 2 GPUs


def test_wandb_report_spec_offline(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "Api", lambda *a, **k: pytest.fail("the W&B API was called"))
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("a network connection was opened"))
    monkeypatch.setenv("WANDB_ENTITY", "team-y")
    out = wandb_report.build_wandb_report(fake_sweep(tmp_path, name="lr-grid"))
    assert out == tmp_path / "wandb_report.json"
    text = out.read_text()
    spec = json.loads(text)
    assert spec["displayName"] == "ftl sweep lr-grid" and spec["project"] == {"name": "proj-x", "entityName": "team-y"}
    for kind in ("Run History Line Plot", "Scatter Plot", "Parallel Coordinates Plot", "Run Comparer"):
        assert f'"viewType": "{kind}"' in text
    assert '"value": "lr-grid-0123abcd"' in text and '"name": "group"' in text  # runsets: the launch's W&B group
    assert "config:optim.value.lr" in text and "summary:val_top1" in text and "boom: <bad>" in text
    loaded = wandb_report.load_wandb_report(out)  # what `.save()` would publish, once online
    grids = [b for b in loaded.blocks if type(b).__name__ == "PanelGrid"]
    assert loaded.entity == "team-y" and len(grids) == 4
    assert {(r.entity, r.project) for g in grids for r in g.runsets} == {("team-y", "proj-x")}
    out = wandb_report.build_wandb_report(tmp_path, out=tmp_path / "w.json", project="p", entity="e")
    assert json.loads(out.read_text())["project"] == {"name": "p", "entityName": "e"}


# --- rendered in chromium ---------------------------------------------------------------------------------------

PROBE = """<script>
const probeErrors = [];
addEventListener("error", e => probeErrors.push(String(e.message)));
addEventListener("unhandledrejection", e => probeErrors.push(String(e.reason)));
addEventListener("load", () => setTimeout(() => {
  const ids = () => [...document.querySelectorAll("#trials tbody tr")].filter(r => !r.hidden)
    .map(r => r.cells[0].textContent);
  const head = name => [...document.querySelectorAll("#trials th")].find(th => th.textContent === name);
  const out = {errors: probeErrors, rows: ids(), sorted: [], plots: {}};
  for (const name of SORT) { head(name).click(); out.sorted.push([name, head(name).getAttribute("aria-sort"), ids()]); }
  const more = document.getElementById("more");  // a page of rows at a time: the first, then one more
  out.more = [ids().length];
  if (!more.hidden) { more.click(); out.more.push(ids().length); }
  const box = document.getElementById("filter");
  box.value = FILTER;
  box.dispatchEvent(new Event("input"));
  out.filtered = [ids(), document.getElementById("shown").textContent];
  for (const s of document.querySelectorAll("section")) {
    const div = s.querySelector(".js-plotly-plot");
    if (div) out.plots[s.id] = {svgs: div.querySelectorAll("svg.main-svg").length, traces: div.data.length,
      legend: [...div.querySelectorAll(".legendtext")].map(t => t.textContent),
      texts: [...div.querySelectorAll("svg text")].map(t => t.textContent),
      lines: div.querySelectorAll(".scatterlayer path.js-line").length,
      points: div.querySelectorAll(".scatterlayer path.point").length, canvases: div.querySelectorAll("canvas").length};
  }
  out.fetched = performance.getEntriesByType("resource").map(e => e.name);
  out.links = [...document.querySelectorAll("[src], [href]")].map(e => e.getAttribute("src") || e.getAttribute("href"));
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.append(pre);
}, 1000));
</script>"""


def chromium(url: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium with no way out to the network (no host resolves); runs the page's JS for 10 s of virtual
    time before the screenshot or the DOM dump."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,4000"]  # fmt: skip
    proc = subprocess.run(["chromium", *flags, *args, url], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def probe(page, tmp_path, sort: list[str], filter: str) -> dict:
    """Load a copy of the page (beside it: same relative links) with PROBE first in <head>; what PROBE saw."""
    script = PROBE.replace("SORT", json.dumps(sort)).replace("FILTER", json.dumps(filter))
    copy = page.with_name("probe.html")
    copy.write_text(page.read_text().replace("<head>", "<head>" + script, 1))
    dom = chromium(copy.as_uri(), tmp_path, "--dump-dom").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-3000:]
    out = json.loads(html.unescape(found[1]))
    assert out["errors"] == [] and all(not u.startswith(("http:", "https:")) for u in out["fetched"] + out["links"])
    assert all(u.startswith("file:") for u in out["fetched"]), out["fetched"]
    for plot in out["plots"].values():  # each figure drawn, every label rounded
        assert plot["svgs"] >= 2 and plot["texts"] and not long_numbers(" ".join(plot["texts"]))
    return out


@CHROMIUM
def test_hand_written_sweeps_render_and_sort_in_chromium(tmp_path):
    out = probe(report.build_report(fake_sweep(tmp_path / "sw")), tmp_path, ["trial", "val_top1", "val_top1",
                                                                             "duration"], "vit")  # fmt: skip
    assert set(out["plots"]) == set(PLOTS) and out["rows"] == ["b2", "c3", "a1", "d4", "e5"]
    assert out["sorted"] == [["trial", "ascending", ["a1", "b2", "c3", "d4", "e5"]],
                             ["val_top1", "ascending", ["d4", "a1", "c3", "b2", "e5"]],  # no value: last
                             ["val_top1", "descending", ["b2", "c3", "a1", "d4", "e5"]],
                             ["duration", "ascending", ["d4", "b2", "c3", "a1", "e5"]]]  # 30 s < 1m 30s: numbers
    assert out["filtered"] == [["d4", "c3", "e5"], "3"]
    curves, params, parallel = (out["plots"][s] for s in PLOTS)
    assert curves["traces"] == 16 and curves["lines"] == 16 and len(curves["legend"]) == 4
    assert "c3 lr=0.01 name=<b>vit</b>" in curves["legend"]  # shown as written, not as bold text
    assert params["traces"] == 2 and params["points"] == 6
    assert {"0.0001", "0.001", "0.01", "resnet", "<b>vit</b>"} <= set(params["texts"])
    assert parallel["canvases"] >= 1  # its lines are WebGL
    assert {"optim.lr (log)", "model.name", "<b>vit</b>", "val_top1"} <= set(parallel["texts"])

    one = probe(report.build_report(fake_sweep(tmp_path / "one", specs=[("a1", 1e-3, "resnet", [0.5, 0.7])])),
                tmp_path, ["val_top1"], "deferred")  # fmt: skip
    assert set(one["plots"]) == set(PLOTS) and one["sorted"] == [["val_top1", "ascending", ["a1", "e5"]]]
    assert one["filtered"] == [["e5"], "1"] and one["plots"]["params"]["points"] == 2
    assert {"0.001", "0.7"} <= set(one["plots"]["params"]["texts"])


def big_sweep(path, n: int):
    """A finished sweep of n trials by hand (a result.json each, no curves): the report at 10,000 trials."""
    trials = {}
    for i in range(n):
        tid = f"t{i:05d}"
        trials[tid] = mf.TrialRecord(tid, [f"optim.lr={1e-4 * (1 + i % 97):.6g}", f"train.seed={i}"], f"trials/{tid}",
                                     state="COMPLETED", attempt=1, job_ids=[f"local-{tid}.1"])  # fmt: skip
        (path / "trials" / tid).mkdir(parents=True)
        result = {"status": "completed", "val_top1": (i * 7919 % 1000) / 1000}
        (path / "trials" / tid / "result.json").write_text(json.dumps(result))
    man = mf.Manifest("big", "base", [], "val_top1", "max", {"executor": "local"}, None, "2026-01-02T03:04:05",
                      trials, uid="0123abcd", dir=path)  # fmt: skip
    return write_sweep_dir(path, man)


@CHROMIUM
def test_a_10000_trial_report_is_small_and_shows_a_page_of_rows_at_a_time(tmp_path):
    """10,000 trials: the page stays under 15 MB, 200 rows are on it at first and 200 more per click, and sorting
    and filtering act on all 10,000 (the filter finds the last trial; the sort puts a 0.0 first)."""
    page = report.build_report(big_sweep(tmp_path / "big", 10_000))
    assert page.stat().st_size <= 15e6, page.stat().st_size
    out = probe(page, tmp_path, ["val_top1"], "t09999")
    assert out["more"] == [200, 400] and set(out["plots"]) == {"params", "parallel"}
    ((_, _, ids),) = out["sorted"]
    assert len(ids) == 200 and ids[0] in {f"t{i:05d}" for i in range(0, 10_000, 1000)}  # the value 0.0
    assert out["filtered"] == [["t09999"], "1"]
    assert out["plots"]["params"]["points"] >= 1000


# --- a real sweep on the local executor -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_dir(lfw, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    common = [f"data.train_dir={lfw}/train", f"data.val_dir={lfw}/val", "data.image_size=32", "data.batch_size=16",
              "data.num_workers=0", "train.epochs=2", "train.log_every_steps=1"]  # fmt: skip
    from tests.launcher.test_local_sweep import broken_images

    zipped = {"data.train_dir": [f"{lfw}/train", f"{lfw}/train", str(broken_images(tmp))],
              "optim.lr": [1e-4, 3e-3, 1e-3]}
    spec = {"recipe": "base", "name": "rep", "overrides": common, "zip": zipped}
    (tmp / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (tmp / "cluster.yaml").write_text(yaml.safe_dump({"name": "here", "executor": "local", "max_parallel": 1,
                                                      "env": {"OMP_NUM_THREADS": "1"}}))  # fmt: skip
    proc = run_ftl("sweep", tmp / "sweep.yaml", "--cluster", tmp / "cluster.yaml", "--out", tmp / "sw")
    assert proc.returncode == 0, proc.stderr
    done = run_ftl("wait", tmp / "sw", "--poll", "1")
    assert done.returncode == 1 and "1 of 3 trials did not complete" in done.stdout, done.stdout + done.stderr
    return tmp / "sw"


@pytest.mark.slow
def test_report_of_a_real_sweep(sweep_dir):
    page = report.build_report(sweep_dir).read_text()
    found = sections(page)
    assert list(found) == list(SECTIONS) and len(PLOTLY_JS.findall(page)) == 1
    failed = report.load(sweep_dir).trials[-1]  # FAILED, or LOST when the runner's refresh saw it first
    assert failed.state in report.FAILED and f"1 {failed.state.lower()}</span>" in found["summary"]
    assert "2 completed" in found["summary"] and "(local): CPU" in found["summary"]
    assert "<th>data.train_dir</th><th>optim.lr</th>" in found["table"] and len(rows(found["table"])) == 3
    assert "broken" in found["failures"] and "give both the same class folders" in found["failures"]
    assert "train.log" in found["failures"]
    diff = dict((k, (a, b, by)) for k, a, b, by in re.findall(
        r"<tr><td><code>(.*?)</code></td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", found["best"]))
    best = report.load(sweep_dir).done[0]
    assert diff["optim.lr"] == ("0.001", best.params["optim.lr"], "trial")
    assert diff["train.epochs"][1:] == ("2", "sweep") and diff["data.val_dir"][2] == "sweep"
    from core.tracking import run_name

    assert diff["tracking.name"] == ("null", run_name(best.rec.overrides), "ftl") and "data.train_dir" in diff
    assert "model.name" not in diff and "augment.hflip" not in diff  # as in the recipe: not shown
    curves, layout = figure(page, "plot-curves")
    assert len(curves) == 2 * 4 and all(len(t["x"]) == 4 for t in curves[0:8:4])  # train_loss at each of 4 steps
    assert layout["yaxis2"]["type"] == "log"  # lr: 1e-4 and 3e-3 peaks, one-cycle down to far below
    _, layout = figure(page, "plot-params")
    assert layout["xaxis"]["type"] == "log" and layout["annotations"][0]["text"] == "optim.lr"
    spec = wandb_report.build_wandb_report(sweep_dir, entity="team-y").read_text()
    assert "Parallel Coordinates Plot" in spec and '"name": "group"' in spec


@pytest.mark.slow
@CHROMIUM
def test_report_of_a_real_sweep_in_chromium(sweep_dir, tmp_path):
    from PIL import Image

    page = report.build_report(sweep_dir, out=tmp_path / "r.html")
    shot = tmp_path / "r.png"
    chromium(page.as_uri(), tmp_path, f"--screenshot={shot}")
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 4000) and len(image.getcolors(1 << 20) or range(1 << 20)) > 200  # not blank
    sw = report.load(sweep_dir)
    out = probe(page, tmp_path, [sw.metric], sw.trials[-1].state.lower())
    assert set(out["plots"]) == set(PLOTS) and out["rows"] == [t.rec.id for t in sw.trials]
    assert out["sorted"] == [[sw.metric, "ascending", [t.rec.id for t in [*sw.done[::-1], sw.trials[-1]]]]]
    assert out["filtered"] == [[sw.trials[-1].rec.id], "1"] and sw.trials[-1].state in report.FAILED
    assert out["plots"]["curves"]["traces"] == 8 and len(out["plots"]["curves"]["legend"]) == 2


def test_several_sweeps_in_one_report(tmp_path):
    """`ftl report A B`: every trial of both, ids and a `sweep` column saying where each ran, ranked together."""
    a = fake_sweep(tmp_path / "a")
    b = fake_sweep(tmp_path / "b", name="u", specs=[("a1", 1e-3, "resnet", [0.5, 0.95]), ("b2", 1e-2, "vit", [0.1])])
    page = report.build_report([a, b]).read_text()  # beside them: tmp_path/compare.html
    found = sections(page)
    ids = re.findall(r"<tr[^>]*><td>([\w/]+)</td>", found["table"])
    assert ids[:3] == ["b/a1", "a/b2", "a/c3"] and len(ids) == 5 + 3  # 0.95 first, across the two sweeps
    assert "<th>sweep</th>" in found["table"]
    assert '<a href="a/trials/d4/train.log">a/trials/d4/train.log</a>' in found["failures"]  # relative, as before
    assert "Sweep a vs b" in page and figure(page, "plot-params")
    ran = ftl("report", a, b, "--out", tmp_path / "c.html")
    assert ran.returncode == 0 and "report of 2 sweeps written to" in ran.stdout and (tmp_path / "c.html").is_file()
    refused = ftl("report", a, b, "--wandb")
    assert refused.returncode == 2 and "take one sweep dir" in refused.stderr


def test_a_pruned_trial_is_marked_in_the_curves(tmp_path):
    """A trial stopped by early stopping was a single unmarked dot: dotted, an x at its last epoch, (pruned)."""
    sw = report.load(fake_sweep(tmp_path))
    (pruned,) = [t for t in sw.trials if t.rec.id == "a1"]
    pruned.state = "PRUNED"
    fig = report._curves_figure(sw)
    traces = [tr for tr in fig.data if tr.legendgroup == "a1" and tr.mode == "lines+markers"]
    assert traces and all(tr.line.dash == "dot" and tr.marker.symbol[-1] == "x-thin-open" for tr in traces)
    assert any(tr.name.endswith("(pruned)") for tr in fig.data if tr.legendgroup == "a1")
    others = [tr for tr in fig.data if tr.legendgroup == "b2" and tr.mode == "lines+markers"]
    assert all(tr.line.dash == "solid" and "x-thin-open" not in tr.marker.symbol for tr in others)
