"""Run one trial (or an adaptive search's worker slot) from its spec file: `python -m jobs.run_trial trial.json`.

Used by the local executor (one subprocess per trial). Exit codes: 0 completed or pruned, 3 interrupted (a
checkpoint was saved; `ftl resume` continues it), 2 a user error, 1 a crash.
"""

from __future__ import annotations

import json
import sys


def main(spec_path: str) -> int:
    from core.errors import FtlError
    from jobs.finetune import FineTuneJob

    spec = json.loads(open(spec_path).read())
    try:
        # the spec's env was given to this process by the runner (set before torch is imported)
        if spec.get("search_slot") is not None:
            from jobs.search_worker import SearchWorker

            result = SearchWorker(spec["sweep_dir"], spec["search_slot"])()
        else:
            result = FineTuneJob(spec["recipe"], spec["overrides"], spec["run_dir"], spec.get("early_stop"))()
    except FtlError as e:
        print(f"ftl: error: {e}", file=sys.stderr)
        return 2
    return 3 if result["status"] == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
