"""Shared fixtures and helpers: real bundled datasets prepared once per session, the `ftl` CLI in this process
(`ftl`) or as a real process (`run_ftl`), hand-written sweep dirs, and named fault points (core/faults.py)."""

import contextlib
import io
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# A suite started in the background (`pytest ... &` from a script) inherits SIGINT ignored, and so would every `ftl`
# it starts: the Ctrl-C tests would then test nothing (the signal ignored) and fail. Ctrl-C as a terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")
REPO = Path(__file__).resolve().parent.parent
# The smallest model that still runs every code path (timm's test_efficientnet: 0.1M parameters, stages for the
# fine-tune phases), from scratch: for engine and launcher mechanics. Pretrained backbones only where weights
# loading or transfer quality is what a test is about.
TINY = ("model.name=test_efficientnet", "model.pretrained=null")


@pytest.fixture(scope="session")
def lfw(tmp_path_factory) -> Path:
    """scikit-image's lfw_subset: 20 faces + 20 non-faces to train on, 100 to validate."""
    from core.data import bundled

    return bundled.prepare("lfw-subset", tmp_path_factory.mktemp("data") / "lfw", per_class=20)


@pytest.fixture(scope="session")
def fmnist(tmp_path_factory) -> Path:
    """Fashion-MNIST, first 30 train / 10 val images of each class (Debian's dataset-fashion-mnist)."""
    from core.data import bundled

    return bundled.prepare("fashion-mnist", tmp_path_factory.mktemp("data") / "fmnist", per_class=30, val_per_class=10)


MOBILENET = {"model.name": "mobilenetv2_100", "model.pretrained": "mobilenetv2_100.tv_in1k"}  # ImageNet weights


SLURM_GROUP = pytest.mark.xdist_group("slurm")  # with pytest-xdist: every SLURM test on one worker (--dist loadgroup)


def lfw_overrides(lfw: Path, **extra) -> list[str]:
    """A small run on lfw with the tiny model (TINY); MOBILENET in `extra` where pretrained weights matter."""
    base = {"data.train_dir": lfw / "train", "data.val_dir": lfw / "val", "data.image_size": 64,
            "data.batch_size": 16, "data.num_workers": 0, "train.epochs": 2, "train.log_every_steps": 1,
            **dict(o.split("=", 1) for o in TINY)}  # fmt: skip
    return [f"{k}={v}" for k, v in {**base, **extra}.items()]


def stop_after(n: int):
    """A should_stop() for engine.fit that asks to stop at its n-th call (after n updates on one process)."""
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= n

    return should_stop


@dataclass
class Ran:
    """What a command did: its exit code and its output (as subprocess.CompletedProcess has them)."""

    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def environment(env: dict | None):
    """os.environ with `env` set (a value None: unset) for the block."""
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in (env or {}).items() if v is not None})
    for k in [k for k, v in (env or {}).items() if v is None]:
        os.environ.pop(k, None)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def ftl(*args, env: dict | None = None) -> Ran:
    """The `ftl` command line in this process (launcher.cli.main), output captured: the imports are paid once per
    session instead of 4-5 s per command. Exit codes, signals and the quick exit are tested with `run_ftl`."""
    from launcher.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.chdir(REPO)
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help, a usage error
            code = e.code if isinstance(e.code, int) else 2
        finally:
            os.chdir(cwd)
    return Ran(code, out.getvalue(), err.getvalue())


def write_sweep_dir(path: Path, man) -> Path:
    """A sweep dir written by hand in today's layout (sweep.json, a log with each record's state): for tests of
    readers (status, report, sync) that need no scheduler."""
    from launcher import event_log
    from launcher import manifest as mf

    path.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "logs"):
        (path / sub).mkdir(exist_ok=True)
    (path / mf.SWEEP).write_text(__import__("json").dumps(mf.sweep_data(man)))
    event_log.create(path)
    event_log.append(path, [mf.state_event(r) for r in man.jobs.values() if r.state != "NEW" or r.attempt])
    man.dir = path
    return path


def fault(*points: str) -> dict[str, str]:
    """The environment that stops a process at named points (core/faults.py): fault("after-sbatch")."""
    return {"FTL_FAULT": ",".join(points)}


def run_ftl(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `ftl` console script."""
    ftl = Path(sys.executable).parent / "ftl"
    return subprocess.run([str(ftl), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)  # fmt: skip


@pytest.fixture(scope="session")
def slurm():
    """Start (or reuse) the local SLURM cluster (scripts/slurm/cluster.sh); skip only where it cannot run at all."""
    import shutil

    if os.geteuid() != 0 and not shutil.which("slurmctld"):
        pytest.skip("starting the local SLURM cluster needs root (or slurm-wlm installed)")
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "cluster.sh"), "start"], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    conf = next(line.split("=", 1)[1] for line in proc.stdout.splitlines() if line.startswith("export SLURM_CONF="))
    os.environ["SLURM_CONF"] = conf
    before = set(_queue())
    yield conf
    import time

    deadline = time.monotonic() + 30  # a finished trial's job may still be exiting
    while (left := {j: n for j, n in _queue().items() if j not in before}) and time.monotonic() < deadline:
        time.sleep(1)
    if left:  # tests leave the queue as they found it: what one left is cancelled here, and named
        subprocess.run(["scancel", *sorted({j.split("_[")[0] for j in left})])  # a pending array: 328_[0-19%20]
        pytest.fail(f"{len(left)} jobs were left in the queue by the tests: {sorted(set(left.values()))[:5]}")


def _queue() -> dict[str, str]:
    """{job id: name} of every job in the controller that is not ending."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%j|%T"], capture_output=True, text=True).stdout
    return {j: n for j, n, state in (line.split("|") for line in out.splitlines()) if state not in ("COMPLETING",)}


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    """Poll predicate() until it returns something true; AssertionError naming `what` after timeout seconds."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

