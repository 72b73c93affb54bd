"""The local runner's job processes, forked from a server that imported the training stack once.

A trial's process used to pay ~5 s importing torch, timm and accelerate before its first step - most of a small
trial's wall time on a laptop or a 2-core VM. The runner starts jobs through a multiprocessing forkserver instead:
one process imports the training stack once (never running a tensor op or touching CUDA, so forking it is safe: see
`preload`) and forks a
child per job in ~0.1 s. Each child is what `python -m jobs.run_trial SPEC` (or `launcher.search_worker`) would be:
its own session (a Ctrl-C of the runner does not reach it), its output in the job's train.log, its own environment
(FTL_JOB_ID), the stop signals held from its first instruction, and the same exit codes. It survives the runner
(the runner's successor adopts it by pid and start time) and initialises CUDA itself if it uses a GPU.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from pathlib import Path

TRAINING = ["jobs.run_trial", "jobs.finetune", "core.engine", "launcher.search_worker"]  # torch, timm, accelerate
_context = None


def preload(program: str | None) -> list[str]:
    """What the server imports: the training stack, or - for a search whose trials are a `program` (a function of
    their parameters) - only the worker and that program's module (no torch to wait for)."""
    return ["launcher.search_worker", program.partition(":")[0]] if program else TRAINING


def _ctx(modules: list[str] | None = None):
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(modules or TRAINING)
    return _context


def _enter(module: str, spec_path: str, log_path: str, env: dict[str, str]) -> None:
    """In the forked child: become the job process, run it, exit with its code."""
    from jobs import early_signals

    early_signals.hold()
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.update(env)
    if module == "launcher.search_worker":
        from launcher.search_worker import main
    else:
        from jobs.run_trial import main
    try:
        code = main(spec_path)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # a crash: its traceback in the log, exit 1 as an interpreter would
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _ready() -> None:
    """Nothing: a first job process, so that the server has imported PRELOAD before anyone waits on it."""


def warm(modules: list[str]) -> None:
    """Start the server now and wait for its imports (~5 s once per runner for training), outside any lock."""
    process = _ctx(modules).Process(target=_ready)
    process.start()
    process.join()


def start(module: str, spec_path: Path, log_path: Path, env: dict[str, str]):
    """A running job process: `.pid`, `.exitcode` (None while it runs; -N when a signal N ended it)."""
    process = _ctx().Process(target=_enter, args=(module, str(spec_path), str(log_path), env), daemon=False)
    process.start()
    return process
