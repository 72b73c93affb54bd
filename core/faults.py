"""Named fault points: where the fault tests stop a process on purpose, instead of at a random instant.

    FTL_FAULT=after-intent            kill -9 this process the first time it reaches `after-intent`
    FTL_FAULT=checkpoint-files@3      ... the third time it reaches `checkpoint-files`
    FTL_FAULT=worker-claimed:stop     SIGSTOP it there (a paused node, a hung NFS mount); SIGCONT wakes it
    FTL_FAULT=after-intent@2:int      SIGINT (Ctrl-C) there; :term SIGTERM
    FTL_FAULT=a,b:stop                several points

The points sit between the steps whose order the crash-safety guarantees depend on (intent / sbatch / record,
checkpoint files / rename / prune, claim / train / tell). Unset, `fault_point` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ACTIONS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP, "term": signal.SIGTERM, "int": signal.SIGINT}


def _parse(text: str) -> dict[str, tuple[int, int]]:
    """'a,b@2:stop' -> {'a': (1, SIGKILL), 'b': (2, SIGSTOP)}."""
    points = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        where, _, action = item.partition(":")
        name, _, nth = where.partition("@")
        points[name] = (int(nth or 1), ACTIONS[action or "kill"])
    return points


_POINTS = _parse(os.environ.get("FTL_FAULT", ""))
_HITS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Stop this process here when FTL_FAULT names this point (see the module doc); otherwise nothing."""
    if name not in _POINTS:
        return
    _HITS[name] = _HITS.get(name, 0) + 1
    nth, sig = _POINTS[name]
    if _HITS[name] == nth:
        # to this thread (raise(3)), not the process: a process-directed signal may land on another thread (filelock's
        # heartbeat) and reach Python's handler a few bytecodes later, past the point it was meant for
        signal.raise_signal(sig)
