"""W&B end to end, offline: `ftl sync` uploads real offline runs (made here by WandbTracker) to a local fake W&B
server and names the real cause when it cannot (no key, key refused, server error, no network, a bad argument);
the W&B Report spec names its entity, project and the sweep's group, or refuses; publishing refuses without a key
or a network, at once.

The fake server (FakeWandb) answers the few calls `wandb sync` makes (UpsertBucket, CreateRunFiles, file_stream,
uploads) and records them, so a test sees what would reach W&B: the run's entity, project, group, name, tags,
history and summary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from core.errors import FtlError
from core.tracking import WandbTracker, run_name, sweep_group
from launcher import manifest as mf
from tests.conftest import write_sweep_dir
from launcher import wandb_report, wandb_sync

pytestmark = pytest.mark.filterwarnings("ignore:Pydantic V1 style:DeprecationWarning")  # from wandb-workspaces
KEY = "local-" + "0" * 40  # a well-formed API key that no server knows
TRIALS = {"a1": (["optim.lr=0.001"], "completed", [0.5, 0.7]), "b2": (["optim.lr=0.1"], "pruned", [0.3])}


class FakeWandb:
    """A W&B server on 127.0.0.1: `fail` = None answers like W&B, (status, message) answers every call so."""

    def __init__(self, fail: tuple[int, str] | None = None):
        self.fail, self.calls = fail, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.calls.append((self.path, body))
                status, reply = server.answer(self.path, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_PUT = do_POST

            def log_message(self, *args) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # wandb-core drops idle keep-alive connections: not the test's business

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, path: str, body: bytes) -> tuple[int, dict]:
        if self.fail:
            return self.fail[0], {"errors": [{"message": self.fail[1]}]}
        if path != "/graphql":
            return 200, {"exitcode": None, "limits": {}}  # file_stream, uploads
        query = json.loads(body)
        var = query.get("variables") or {}
        if "mutation UpsertBucket" in query["query"]:
            project = {"id": "p1", "name": var.get("project") or "uncategorized", "entity": {"id": "e1",
                       "name": var.get("entity") or "me"}}  # fmt: skip
            return 200, {"data": {"upsertBucket": {"inserted": True, "bucket": {"id": "b1", "name": var["name"],
                         "displayName": var.get("displayName"), "description": "", "config": "{}",
                         "sweepName": None, "historyLineCount": 0, "project": project}}}}  # fmt: skip
        if "mutation CreateRunFiles" in query["query"]:
            files = [{"name": f, "uploadUrl": f"{self.url}/upload/{f}"} for f in var["files"]]
            return 200, {"data": {"createRunFiles": {"runID": "b1", "uploadHeaders": [], "files": files}}}
        return 200, {"data": {}}

    def upserts(self) -> list[dict]:
        """The variables of every UpsertBucket (run creation / update) call."""
        queries = [json.loads(b) for p, b in self.calls if p == "/graphql"]
        return [q["variables"] for q in queries if "mutation UpsertBucket" in q["query"]]

    def uploaded(self) -> str:
        """Everything sent besides GraphQL (history and summary through file_stream, files), as text."""
        return "\n".join(b.decode(errors="replace") for p, b in self.calls if p != "/graphql")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_sweep(root: Path, name: str = "grid", uid: str = "0123abcd", wandb_runs: bool = True,
                tracking: dict | None = None) -> Path:  # fmt: skip
    """A sweep dir as a launch leaves it: manifest, trial files and (wandb_runs) each trial's offline W&B run."""
    trials = {}
    for tid, (overrides, status, top1) in TRIALS.items():
        rec = mf.TrialRecord(tid, overrides, f"trials/{tid}", state="COMPLETED", attempt=1, job_ids=[f"local-{tid}"])
        run_dir = root / rec.run_dir
        run_dir.mkdir(parents=True)
        epochs = [{"step": e * 5, "epoch": e, "train_loss": 1 - v, "val_loss": 1 - v, "val_top1": v} for e, v in
                  enumerate(top1, 1)]  # fmt: skip
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
        (run_dir / "result.json").write_text(json.dumps({"status": status, "val_top1": top1[-1]}))
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"optim": {"lr": 0.1}, "tracking": tracking or {}}))
        if wandb_runs:
            tracker = WandbTracker(run_dir, {"optim": {"lr": 0.1}}, "proj-x", None, sweep_group(name, uid),
                                   run_name(overrides), "fine-tune", ["ftl"], None)  # fmt: skip
            tracker.define_metric("val_top1")
            for rec_ in epochs:
                tracker.log(rec_, step=rec_["step"])
            tracker.finish(status)
        trials[tid] = rec
    man = mf.Manifest(name, "base", [], "val_top1", "max", {"executor": "local"}, None, "2026-01-02T03:04:05", trials,
                      uid=uid, dir=root)  # fmt: skip
    write_sweep_dir(root, man)
    return root


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """One sweep dir with real offline runs (made once: W&B takes a second a run); tests copy it."""
    saved = dict(os.environ)
    os.environ["WANDB_MODE"] = "offline"
    try:
        return write_sweep(tmp_path_factory.mktemp("made") / "sweep")
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def sweep(made, tmp_path, monkeypatch) -> Path:
    """A copy of the sweep; W&B aimed at nothing real: no key, no netrc, short retries."""
    for var in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    for var in ("WANDB__GRAPHQL_RETRY_MAX", "WANDB__FILE_STREAM_RETRY_MAX", "WANDB__FILE_TRANSFER_RETRY_MAX"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS", "1")
    return Path(shutil.copytree(made, tmp_path / "sweep", symlinks=True))


@pytest.fixture
def server(monkeypatch):
    servers = []

    def start(fail: tuple[int, str] | None = None) -> FakeWandb:
        servers.append(FakeWandb(fail))
        monkeypatch.setenv("WANDB_BASE_URL", servers[-1].url)
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- ftl sync


def test_sync_uploads_every_offline_run_once(sweep, server, monkeypatch):
    fake = server()
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    runs = wandb_sync.offline_runs(sweep)
    assert len(runs) == 2 and wandb_sync.sync(sweep, dry_run=True) == runs and not fake.calls
    assert wandb_sync.sync(sweep, entity="team-y", project="proj-y") == runs
    assert all(wandb_sync.synced(r) for r in runs)
    ups = [u for u in fake.upserts() if u.get("displayName")]  # (without: updates of config or summary alone)
    assert {u["name"] for u in ups} == {r.name.rsplit("-", 1)[1] for r in runs}  # the runs' own ids
    assert {(u["entity"], u["project"], u["groupName"]) for u in ups} == {("team-y", "proj-y", "grid-0123abcd")}
    last = {u["displayName"]: u["tags"] for u in ups}  # the runs' names, their tags as they ended
    assert last == {"lr=0.001": ["ftl"], "lr=0.1": ["ftl", "pruned"]}
    sent = fake.uploaded()
    assert "val_top1" in sent and '"ftl_status":"pruned"' in sent.replace(" ", "")
    calls = len(fake.calls)
    assert wandb_sync.sync(sweep) == [] and len(fake.calls) == calls  # uploaded runs are not uploaded again


def test_sync_without_an_api_key_says_log_in(sweep, server):
    fake = server()
    with pytest.raises(FtlError, match=r"no W&B API key: run `wandb login` or set WANDB_API_KEY") as err:
        wandb_sync.sync(sweep)
    assert "network" not in str(err.value) and "\n" not in str(err.value)
    assert not [p for p, _ in fake.calls if p == "/graphql"]  # refused before any upload


def test_sync_with_a_refused_key_says_so(sweep, server, monkeypatch):
    fake = server(fail=(401, "user is not logged in"))
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    with pytest.raises(FtlError, match=r"2 of 2 runs not uploaded: .* refused the API key .*HTTP 401") as err:
        wandb_sync.sync(sweep, entity="team-y")
    assert "network" not in str(err.value) and "user is not logged in" in str(err.value)
    assert [p for p, _ in fake.calls if p == "/graphql"]  # it got as far as the server
    assert not any(wandb_sync.synced(r) for r in wandb_sync.offline_runs(sweep))


def test_sync_with_a_failing_server_names_it(sweep, server, monkeypatch):
    server(fail=(500, "database on fire"))
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    with pytest.raises(FtlError, match=r"answered HTTP 500.*database on fire") as err:
        wandb_sync.sync(sweep)
    assert "network" not in str(err.value) and "API key" not in str(err.value)


def test_sync_without_a_network_says_network(sweep, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    started = time.monotonic()
    with pytest.raises(FtlError, match=r"network: cannot reach http://127\.0\.0\.1:\d+ .*connection refused"):
        wandb_sync.sync(sweep)
    assert time.monotonic() - started < 60  # bounded retries: it gives up, it does not hang


@pytest.mark.parametrize("flag", ["--no-such-option-in-any-wandb", "--include-offline"])
def test_an_argument_wandb_refuses_is_a_bug_not_the_network(sweep, server, monkeypatch, flag):
    """--include-offline: what `ftl sync` passed before, which wandb 0.30 removed (0.29 still takes it)."""
    import wandb
    from packaging.version import Version

    if flag == "--include-offline" and Version(wandb.__version__) < Version("0.30"):
        pytest.skip(f"wandb {wandb.__version__} still takes --include-offline")
    server()
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setattr(wandb_sync, "_options", lambda entity, project: [flag])
    with pytest.raises(RuntimeError, match=r"bug in ftl: wandb sync refused its arguments") as err:
        wandb_sync.sync(sweep)
    assert not isinstance(err.value, FtlError) and "network" not in str(err.value)


def test_a_stalled_sync_is_stopped(sweep, monkeypatch):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
        monkeypatch.setenv("WANDB_API_KEY", KEY)
        started = time.monotonic()
        with pytest.raises(FtlError, match=r"did not finish within 8 s \(0 of 2 runs uploaded"):
            wandb_sync.sync(sweep, timeout_s=8)
        assert time.monotonic() - started < 40


def test_the_run_of_a_running_trial_waits(sweep, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    runs = wandb_sync.offline_runs(sweep)
    with mf.locked(sweep) as man:
        man.update(man.trials["b2"], state="RUNNING")
    assert wandb_sync.still_running(sweep) == [runs[1]] and wandb_sync.sync(sweep, dry_run=True) == [runs[0]]
    older = runs[1].with_name(runs[1].name.replace("offline-run-2", "offline-run-1"))  # the trial's earlier start
    shutil.copytree(runs[1], older)
    assert wandb_sync.sync(sweep, dry_run=True) == [runs[0], older]
    with mf.locked(sweep) as man:
        man.update(man.trials["b2"], state="COMPLETED")
    assert wandb_sync.still_running(sweep) == [] and len(wandb_sync.sync(sweep, dry_run=True)) == 3


def test_no_offline_runs_nothing_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    sweep = write_sweep(tmp_path, wandb_runs=False)
    assert wandb_sync.offline_runs(sweep) == [] and wandb_sync.sync(sweep) == []
    assert not (sweep / wandb_sync.LOG_DIR).exists()


# ---------------------------------------------------------------- the W&B Report spec, publishing


def runsets(spec: dict) -> list[dict]:
    return [rs for b in spec["spec"]["blocks"] for rs in (b.get("metadata") or {}).get("runSets", [])]


def test_report_spec_names_entity_project_and_the_sweep_group(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setattr(wandb, "Api", lambda *a, **k: pytest.fail("the W&B API was called"))
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail("a network connection was opened"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    monkeypatch.setenv("WANDB_ENTITY", "team-env")
    sweep = write_sweep(tmp_path / "s", name="lr grid's", wandb_runs=False, tracking={"project": "proj-x"})
    spec = json.loads(wandb_report.build_wandb_report(sweep).read_text())
    assert spec["project"] == {"name": "proj-x", "entityName": "team-env"}  # the trials' project, WANDB_ENTITY
    sets = runsets(spec)
    assert len(sets) == 4 and all(rs["project"] == {"name": "proj-x", "entityName": "team-env"} for rs in sets)
    filters = [f for rs in sets for f in rs["filters"]["filters"]]
    assert {(f["key"]["name"], f["op"], f["value"]) for f in filters} == {("group", "=", "lr grid's-0123abcd")}
    assert "summary:val_top1.max" in json.dumps(spec)  # ranked by the best the runs kept (define_metric)
    out = wandb_report.build_wandb_report(sweep, out=tmp_path / "w.json", project="p", entity="e")
    assert json.loads(out.read_text())["project"] == {"name": "p", "entityName": "e"}


def test_report_spec_takes_the_trials_entity_and_a_sweep_without_uid(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_ENTITY", raising=False)
    sweep = write_sweep(tmp_path, uid="", wandb_runs=False, tracking={"project": "pr", "entity": "ent"})
    spec = json.loads(wandb_report.build_wandb_report(sweep).read_text())
    assert spec["project"] == {"name": "pr", "entityName": "ent"}
    assert {f["value"] for rs in runsets(spec) for f in rs["filters"]["filters"]} == {"grid"}


def test_report_spec_refuses_to_guess_entity_or_project(tmp_path, monkeypatch):
    for var in ("WANDB_ENTITY", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    sweep = write_sweep(tmp_path, wandb_runs=False, tracking={"project": "pr"})
    with pytest.raises(FtlError, match=r"no W&B entity \(pass --entity ENTITY or set WANDB_ENTITY") as err:
        wandb_report.build_wandb_report(sweep)
    assert "project" not in str(err.value) and "\n" not in str(err.value)
    for t in TRIALS:
        (sweep / "trials" / t / "config.yaml").unlink()
    with pytest.raises(FtlError, match=r"no W&B entity .* and no W&B project \(pass --project PROJECT"):
        wandb_report.build_wandb_report(sweep)
    assert not (sweep / "wandb_report.json").exists()


def test_publish_refuses_without_a_key_or_a_network(tmp_path, monkeypatch, server):
    for var in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    sweep = write_sweep(tmp_path / "s", wandb_runs=False, tracking={"project": "pr", "entity": "ent"})
    spec = wandb_report.build_wandb_report(sweep)
    with monkeypatch.context() as m:
        m.setattr(socket.socket, "connect", lambda *a: pytest.fail("a connection without a key"))
        with pytest.raises(FtlError, match=r"needs an API key .*run `wandb login` or set WANDB_API_KEY"):
            wandb_report.publish(spec)
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    with pytest.raises(FtlError, match=r"network: cannot reach W&B at http://127\.0\.0\.1:\d+"):
        wandb_report.publish(spec)
    fake = server(fail=(401, "user is not logged in"))
    with pytest.raises(FtlError, match=r"refused the API key or access to ent/pr: .*user is not logged in"):
        wandb_report.publish(spec)
    assert fake.calls and time.monotonic() - started < 60


def test_netrc_login_counts_as_a_key(tmp_path, monkeypatch):
    from core.tracking import has_credentials

    for var in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine 127.0.0.1:8080\n  login user\n  password {KEY}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert has_credentials("http://127.0.0.1:8080") and not has_credentials("https://api.wandb.ai")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:8080")
    assert has_credentials()


def test_run_names_are_the_distinguishing_overrides_cut_to_fit():
    from core.tracking import NAME_LIMIT, short_name

    assert run_name(["optim.lr=0.003", "finetune.strategy=full"]) == "lr=0.003 strategy=full"
    assert run_name(["model.name=a", "data.name=b"]) == "model.name=a data.name=b"  # same last part: whole keys
    # a TPE value at full precision was the whole name; ints, names and lists stay as written
    assert run_name(["optim.lr=0.0012520653814999472", "train.epochs=10", "model.name=resnet18", "x.y=[1, 2]"]) == \
        "lr=0.001252 epochs=10 name=resnet18 y=[1, 2]"
    long = [f"augment.k{i}=value-{i}" for i in range(40)]
    name = run_name(long)
    assert len(name) <= NAME_LIMIT and name.startswith("k0=value-0 k1=value-1") and re.search(r"~[0-9a-f]{8}$", name)
    assert run_name(long) != run_name([*long[:-1], "augment.k39=other"])  # same head, still two names
    assert short_name("x" * NAME_LIMIT) == "x" * NAME_LIMIT and len(short_name("y" * 500)) == NAME_LIMIT
