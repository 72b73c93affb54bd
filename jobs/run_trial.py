"""Run one trial from its spec file: `python -m jobs.run_trial trial.json` (the local executor's subprocess).

Exit codes: 0 completed or pruned, 3 interrupted (a checkpoint was saved; it continues when resumed or requeued),
4 fenced (a newer attempt owns the run dir: this one wrote nothing more), 2 a user error, 1 a crash.
"""

from __future__ import annotations

import json
import sys

from jobs import early_signals


def main(spec_path: str) -> int:
    early_signals.hold()  # first: a cancel or time limit during the imports below is a stop request, not a death
    from core.errors import FtlError
    from core.lease import LeaseLost
    from jobs.finetune import FineTuneJob

    spec = json.loads(open(spec_path).read())
    try:
        # the spec's env was given to this process by the runner (set before torch is imported)
        result = FineTuneJob(spec["recipe"], spec["overrides"], spec["run_dir"], spec.get("early_stop"))()
    except LeaseLost as e:
        print(f"ftl: {e}", file=sys.stderr)
        return 4
    except FtlError as e:
        print(f"ftl: error: {e}", file=sys.stderr)
        return 2
    return 3 if result["status"] == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
