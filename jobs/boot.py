"""The first Python a SLURM task runs: `<python> -m jobs.boot -u -m submitit.core._submit FOLDER` (the python
command ftl gives submitit). It holds the stop signals from its first instruction (jobs/early_signals.py), then
runs the module submitit asked for, as `python -m` would."""

from __future__ import annotations

import runpy
import sys

from jobs import early_signals


def main(argv: list[str]) -> None:
    early_signals.hold()
    from core.faults import fault_point

    fault_point("boot")  # tests: a signal that lands here, before the job's own handlers
    args = list(argv)
    if "-u" in args:  # unbuffered, as `python -u` (the flag cannot be applied after start-up)
        args.remove("-u")
        sys.stdout.reconfigure(write_through=True)
        sys.stderr.reconfigure(write_through=True)
    at = args.index("-m")
    sys.argv = [args[at + 1], *args[at + 2 :]]
    runpy.run_module(args[at + 1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
