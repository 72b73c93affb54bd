"""`ftl sync SWEEP_DIR`: upload a sweep's offline W&B runs with the installed wandb's own `wandb sync`.

Checked with wandb 0.29, 0.30 and 0.31 (the range pyproject pins): `python -m wandb sync [-e E] [-p P] RUN_DIR...`
uploads the offline runs named by path (wandb 0.30 rewrote `wandb sync` and removed `--include-offline`, which
runs named by path never needed). Runs already uploaded (a `run-<id>.wandb.synced` marker beside the run file) are
not named again, so a second `ftl sync` uploads only what the first did not; nor is the newest run of a trial the
sweep's state says is running (it is still being written: a later `ftl sync` uploads it whole).

`wandb sync` exits 0 even when an upload failed, so success is read from what it leaves: the `.synced` marker of
each run. A run without one failed, and the cause comes from wandb's output and its debug log (JSON lines, kept in
SWEEP_DIR/logs/wandb_sync/): one line, the real one - no API key (`wandb login` / WANDB_API_KEY), the key refused
(HTTP 401/403), the server unreachable (network), a server error (HTTP 5xx), or wandb refusing ftl's arguments,
which is a bug in ftl (RuntimeError, with its traceback), not the network.

It never waits for a person or for a dead network: stdin is closed (without a terminal wandb refuses instead of
prompting for a key), W&B's retries are bounded (RETRIES: about a minute before it gives up on a server that does
not answer; set these variables to change them) and the whole command has a time limit.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from core.errors import FtlError
from launcher import manifest as mf
from launcher import states as st

RETRIES = {  # wandb-core's settings (WANDB__X = setting x_x): how long to insist before an upload fails
    "WANDB__GRAPHQL_RETRY_MAX": "6", "WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS": "10",
    "WANDB__FILE_STREAM_RETRY_MAX": "6", "WANDB__FILE_STREAM_RETRY_WAIT_MAX_SECONDS": "10",
    "WANDB__FILE_TRANSFER_RETRY_MAX": "6", "WANDB__FILE_TRANSFER_RETRY_WAIT_MAX_SECONDS": "10",
}  # fmt: skip
DROPPED_ENV = ("WANDB_MODE", "WANDB_SILENT", "WANDB_QUIET")  # an upload is online, and its errors must be printed
LOG_DIR = "logs/wandb_sync"  # in the sweep dir: wandb's debug logs of each sync
NETWORK = re.compile(r"connection refused|no such host|network is unreachable|no route to host|i/o timeout|timeout|"
                     r"timed out|connection reset|dial tcp|tls:|certificate|proxyconnect|EOF", re.I)
AUTH = re.compile(r"api key|not logged in|unauthori[sz]ed|permission denied|\b40[13]\b", re.I)
USAGE = re.compile(r"no such option|usage: |invalid value for|options have been removed|got unexpected", re.I)


def offline_runs(sweep_dir: str | Path) -> list[Path]:
    """The offline W&B run dirs of a sweep's trials (one per trial, one more per resume), uploaded or not."""
    sweep_dir = Path(sweep_dir)
    man = mf.read(sweep_dir)
    return sorted(p for t in man.trials.values() for p in (sweep_dir / t.run_dir / "wandb").glob("offline-run-*")
                  if p.is_dir())  # fmt: skip


def still_running(sweep_dir: str | Path) -> list[Path]:
    """The newest offline run of each trial the sweep's state says is running: wandb is still writing it."""
    sweep_dir = Path(sweep_dir)
    man = mf.read(sweep_dir)
    newest = [max((sweep_dir / t.run_dir / "wandb").glob("offline-run-*"), key=lambda p: p.name, default=None)
              for t in man.trials.values() if st.phase(t.state) == "live"]  # fmt: skip
    return sorted(p for p in newest if p is not None)


def synced(run: Path) -> bool:
    """Whether `wandb sync` uploaded the run: every run file has its `.synced` marker."""
    files = list(run.glob("*.wandb"))
    return bool(files) and all(Path(f"{f}.synced").exists() for f in files)


def sync(sweep_dir: str | Path, dry_run: bool = False, entity: str | None = None, project: str | None = None,
         timeout_s: float | None = None) -> list[Path]:  # fmt: skip
    """Upload the sweep's offline runs not uploaded yet and not still being written (to `entity` / `project` when
    given, else where each run says); returns them (dry_run: those it would upload). Reads the trials' states as the
    sweep dir holds them (refresh them first). FtlError in one line naming the cause when one fails; timeout_s
    (default 5 minutes + 1 a run) bounds the whole upload."""
    sweep_dir = Path(sweep_dir)
    busy = set(still_running(sweep_dir))
    runs = [r for r in offline_runs(sweep_dir) if not synced(r) and r not in busy]
    if dry_run or not runs:
        return runs
    log_dir = sweep_dir / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    before = set(log_dir.rglob("debug-sync*.log"))
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env = {**RETRIES, **env, "WANDB_DIR": str(log_dir.resolve())}
    timeout_s = timeout_s or 300 + 60 * len(runs)
    options = _options(entity, project)
    proc = subprocess.Popen([sys.executable, "-m", "wandb", "sync", *options, *map(str, runs)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            encoding="utf-8", errors="replace", start_new_session=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        output = _stop(proc)
        done = sum(synced(r) for r in runs)
        raise FtlError(f"wandb sync did not finish within {timeout_s:.0f} s ({done} of {len(runs)} runs uploaded; "
                       f"last output: {_last_line(output)}); `ftl sync` again uploads the rest") from None  # fmt: skip
    failed = [r for r in runs if not synced(r)]
    if not failed:  # (wandb's exit code says nothing: 0 after failed uploads, 1 after a crash on exit)
        return runs
    logs = sorted(set(log_dir.rglob("debug-sync*.log")) - before)
    cause = _cause(output, logs, env.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    if cause is None:
        raise RuntimeError(f"bug in ftl: wandb sync refused its arguments ({' '.join(options) or 'none'} and "
                           f"{len(runs)} run dirs): {_last_line(output)}")  # fmt: skip
    where = f" (wandb's log: {logs[-1]})" if logs else ""
    raise FtlError(f"wandb sync: {len(failed)} of {len(runs)} runs not uploaded: {cause}{where}")


def _options(entity: str | None, project: str | None) -> list[str]:
    """`wandb sync`'s options before the run dirs (the module docstring says which wandb versions take them)."""
    return [*(["--entity", entity] if entity else []), *(["--project", project] if project else [])]


def _cause(output: str, logs: list[Path], base_url: str) -> str | None:
    """One line saying why uploads failed, from wandb's output and debug logs; None when wandb refused its
    command line (a bug in ftl, not something the user can fix)."""
    if USAGE.search(output):
        return None
    errors = [line.removeprefix("wandb: ").removeprefix("ERROR ").removeprefix("Error: ").strip()
              for line in output.splitlines() if "ERROR" in line or line.startswith("Error")]  # fmt: skip
    errors = [e for e in errors if not e.startswith("Find detailed error logs")]
    events = [e for p in logs for e in _json_lines(p)]
    http = next((e for e in events if isinstance(e.get("status"), int) and e["status"] >= 400), {})  # (retried too)
    text = " ".join(errors) or next((e.get("error") or e["msg"] for e in events if e.get("level") == "ERROR"
                                     and e.get("msg")), _last_line(output))  # fmt: skip
    status = http.get("status") or next((int(m) for m in re.findall(r"(?:HTTP|error) (\d{3})\b", text)), None)
    # the shortest true account: the server's own message, else the failed connection, else wandb's first error
    said = re.search(r'"message":\s*"([^"]*)"', text)
    dial = re.search(r"dial tcp[^\n]*?(?:" + NETWORK.pattern + ")", text, re.I)
    detail = http.get("body") or (said and said[1]) or (dial and dial[0]) or (errors or [text])[0]
    detail = " ".join(str(detail).split())[:200]
    if "No API key configured" in output or "Not authenticated" in output:
        return "no W&B API key: run `wandb login` or set WANDB_API_KEY"
    if status in (401, 403):
        return (f"{base_url} refused the API key or its access to the entity/project (HTTP {status}: {detail}): "
                "check `wandb login` / WANDB_API_KEY and --entity / --project")  # fmt: skip
    if status is None and AUTH.search(detail):
        return f"W&B login: {detail}; check `wandb login` / WANDB_API_KEY"
    if status is not None:
        return f"{base_url} answered HTTP {status}: {detail}"
    if NETWORK.search(detail):
        return f"network: cannot reach {base_url} ({detail}); run `ftl sync` again where it can be reached"
    return detail or "wandb sync gave no reason"


def _json_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [e for e in out if isinstance(e, dict)]


def _last_line(output: str) -> str:
    return next((line for line in reversed(output.strip().splitlines()) if line.strip()), "no output")[:300]


def _stop(proc: subprocess.Popen) -> str:
    """End the sync and the wandb-core service it started (its own process group); what it printed."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.communicate(timeout=10)[0] or ""
        except subprocess.TimeoutExpired:
            continue
    return ""
