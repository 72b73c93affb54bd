#!/usr/bin/env bash
# README command 2: set up this machine (idempotent) and run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# one thread per process: 3 workers and their subprocesses share 2 cores (whole suite: 511 s vs 535 s with 2)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} WANDB_MODE=offline HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
# 3 workers on 2 cores: much of the suite waits (on SLURM, on subprocesses); the SLURM tests share one worker
# (their cluster and its queue); `-n 0` runs in one process. Extra args go to pytest.
case " $* " in *" -m not slow "*|*" -m 'not slow' "*|*"-m=not slow"*) what="quick tests only";; *) what="slow integration tests included";; esac
echo "[test] running pytest ($what)"
exec .venv/bin/python -m pytest -q -n "${FTL_TEST_WORKERS:-3}" --dist loadgroup "$@"
