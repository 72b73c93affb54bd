"""`ftl report`: the self-contained HTML report of a sweep (rendered with headless chromium) and the W&B Report spec.

Fast tests use sweep dirs written by hand (manifest + trial files); the slow ones run a real 3-trial local sweep.
"""

import base64
import io
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
from tests.conftest import run_ftl

pytestmark = pytest.mark.filterwarnings("ignore:Pydantic V1 style:DeprecationWarning")  # from wandb-workspaces
PLOTS = ("curves", "params", "parallel")
SECTIONS = ("summary", "table", "best", *PLOTS, "failures")


def trial_files(run_dir, val_top1: list[float], status="completed", lr=1e-3):
    run_dir.mkdir(parents=True)
    lines = []
    for epoch, top1 in enumerate(val_top1, 1):
        lines += [{"step": epoch * 5 - 2, "epoch": epoch - 1, "train_loss": 1.0 / epoch, "lr": lr},
                  {"step": epoch * 5, "epoch": epoch, "train_loss": 0.9 / epoch, "epoch_time_s": 1.0,
                   "val_loss": 1 - top1, "val_top1": top1, "val_top5": 1.0, "val_n": 100}]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run_dir / "progress.json").write_text(json.dumps({"epoch": len(val_top1), "epochs": 2, "best": max(val_top1)}))
    if status:
        result = {"status": status, "val_top1": val_top1[-1], "val_loss": 1 - val_top1[-1]}
        (run_dir / "result.json").write_text(json.dumps(result))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"optim": {"lr": lr}, "tracking": {"project": "proj-x"}}))


def fake_sweep(tmp_path, name="t", executor="local", ran=True):
    """A sweep dir by hand: 3 completed trials over lr x model, one failed trial, one never started."""
    specs = [("a1", 1e-4, "resnet", [0.5, 0.6]), ("b2", 1e-3, "resnet", [0.7, 0.9]), ("c3", 1e-2, "vit", [0.6, 0.8]),
             ("d4", 3e-2, "vit", [0.2])]  # fmt: skip
    trials = {}
    for tid, lr, model, top1 in specs:
        rec = mf.TrialRecord(tid, [f"optim.lr={lr}", f"model.name={model}"], f"trials/{tid}", attempt=1,
                             job_ids=[f"local-{tid}.1"])  # fmt: skip
        if ran:
            trial_files(tmp_path / rec.run_dir, top1, status=None if tid == "d4" else "completed", lr=lr)
            rec.state = "FAILED" if tid == "d4" else "RUNNING"  # stale: result.json says completed
        trials[tid] = rec
    trials["e5"] = mf.TrialRecord("e5", ["optim.lr=0.5", "model.name=<vit & co>"], "trials/e5", state="DEFERRED")
    man = mf.Manifest(name, "base", [], "val_top1", "max", {"executor": executor}, None, "2026-01-02T03:04:05", trials,
                      uid="0123abcd", dir=tmp_path)  # fmt: skip
    (tmp_path / "state").mkdir()
    (tmp_path / "sweep.json").write_text(json.dumps(mf.sweep_data(man)))
    mf.save_states(man, set(trials))
    if ran:
        with open(tmp_path / "trials/a1/metrics.jsonl", "a") as f:
            f.write('{"step": 12, "epo')  # a line cut short by a killed job
        log = "".join(f"line {i}\n" for i in range(50)) + "boom: <bad> & worse\n"
        (tmp_path / "trials/d4/train.log").write_text(log)
    return tmp_path


def sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="(\w+)">(.*?)</section>', page, re.S))


def pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)]


def test_report_of_a_hand_written_sweep(tmp_path):
    out = report.build_report(fake_sweep(tmp_path))
    assert out == tmp_path / "report.html"
    page = out.read_text()
    found = sections(page)
    assert list(found) == list(SECTIONS)
    for sid in PLOTS:
        assert len(pngs(found[sid])) == 1 and pngs(found[sid])[0].startswith(b"\x89PNG")
    assert "<dd>5: " in found["summary"] and "2026-01-02T03:04:05" in found["summary"]
    assert "3 completed" in found["summary"] and "1 failed" in found["summary"] and "1 deferred" in found["summary"]
    rows = re.findall(r"<tr[^>]*><td>(\w+)</td>", found["table"])
    assert rows == ["b2", "c3", "a1", "d4", "e5"]  # by val_top1, best first; no value last
    assert "<th>optim.lr</th><th>model.name</th>" in found["table"] and "&lt;vit &amp; co&gt;" in found["table"]
    assert "b2" in found["best"] and "<pre" in found["best"] and "lr: 0.001" in found["best"]
    assert "d4" in found["failures"] and "e5" not in found["failures"] and "trials/d4/train.log" in found["failures"]
    assert "boom: &lt;bad&gt; &amp; worse" in found["failures"] and "line 21\n" in found["failures"]
    assert "line 20\n" not in found["failures"]  # the last 30 lines only
    assert "<vit" not in page and "http" not in page.replace("http-equiv", "")  # escaped; nothing to fetch


def test_another_metric_and_an_unknown_one(tmp_path):
    fake_sweep(tmp_path)
    page = report.build_report(tmp_path, out=tmp_path / "loss.html", metric="val_loss").read_text()
    assert re.findall(r"<tr[^>]*><td>(\w+)</td>", sections(page)["table"])[:3] == ["b2", "c3", "a1"]  # minimised
    assert "val_loss (min)" in sections(page)["summary"]
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
    page = report.build_report(fake_sweep(tmp_path, ran=False), metric="val_top1").read_text()
    found = sections(page)
    assert list(found) == list(SECTIONS) and "No finished trial" in found["summary"]
    assert "data:image" not in page and all("nothing to plot" in found[s] for s in PLOTS)
    assert "No best trial yet" in found["best"] and "No failed" in found["failures"]
    assert json.loads(wandb_report.build_wandb_report(tmp_path).read_text())["displayName"] == "ftl sweep t"


def test_slurm_failure_logs_come_from_the_newest_job(tmp_path):
    fake_sweep(tmp_path, executor="slurm")
    with mf.locked(tmp_path) as man:
        man.update(man.trials["d4"], job_ids=["100", "101"])
    (tmp_path / "trials/d4/train.log").unlink()
    for job in ("100", "101"):
        (tmp_path / "logs" / job).mkdir(parents=True)
        (tmp_path / "logs" / job / f"{job}_0_log.err").write_text(f"err of {job}\nTraceback: CUDA out of memory\n")
        (tmp_path / "logs" / job / f"{job}_0_log.out").write_text(f"out of {job}\n")
    failures = sections(report.build_report(tmp_path).read_text())["failures"]
    assert "logs/101/101_0_log.err" in failures and "logs/101/101_0_log.out" in failures
    assert "err of 101" in failures and "out of 101" in failures and "of 100" not in failures


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
    assert '"value": "lr-grid"' in text and '"name": "group"' in text  # runsets: W&B group = the sweep name
    assert "config:optim.value.lr" in text and "summary:val_top1" in text and "boom: <bad>" in text
    loaded = wandb_report.load_wandb_report(out)  # what `.save()` would publish, once online
    grids = [b for b in loaded.blocks if type(b).__name__ == "PanelGrid"]
    assert loaded.entity == "team-y" and len(grids) == 4
    assert {(r.entity, r.project) for g in grids for r in g.runsets} == {("team-y", "proj-x")}
    out = wandb_report.build_wandb_report(tmp_path, out=tmp_path / "w.json", project="p", entity="e")
    assert json.loads(out.read_text())["project"] == {"name": "p", "entityName": "e"}


# --- a real sweep on the local executor -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_dir(lfw, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    common = [f"data.train_dir={lfw}/train", f"data.val_dir={lfw}/val", "data.image_size=32", "data.batch_size=16",
              "data.num_workers=0", "train.epochs=2"]  # fmt: skip
    from tests.launcher.test_local_sweep import broken_images

    zipped = {"data.train_dir": [f"{lfw}/train", f"{lfw}/train", str(broken_images(tmp))], "optim.lr": [1e-4, 3e-3, 1e-3]}
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
    assert list(found) == list(SECTIONS)
    assert all(len(pngs(found[s])) == 1 for s in PLOTS)
    assert "2 completed" in found["summary"] and "1 failed" in found["summary"]
    assert "<th>data.train_dir</th><th>optim.lr</th>" in found["table"]
    assert "broken" in found["failures"] and "give both the same class folders" in found["failures"]
    assert "model:" in found["best"] and "train.log" in found["failures"]
    spec = wandb_report.build_wandb_report(sweep_dir).read_text()
    assert '"value": "rep"' in spec and "Parallel Coordinates Plot" in spec


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (scripts/setup.sh installs it)")
def test_report_renders_offline_in_chromium(sweep_dir, tmp_path):
    from PIL import Image

    page = report.build_report(sweep_dir, out=tmp_path / "r.html")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,4000"]  # fmt: skip
    shot = tmp_path / "r.png"
    proc = subprocess.run(["chromium", *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 4000) and len(image.getcolors(1 << 20) or range(1 << 20)) > 50  # not blank
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert all(f'<section id="{sid}">' in dom.stdout for sid in SECTIONS)
    assert dom.stdout.count('src="data:image/png;base64,') == 3
    decoded = [Image.open(io.BytesIO(p)) for p in pngs(dom.stdout)]
    assert all(im.width > 300 for im in decoded)
