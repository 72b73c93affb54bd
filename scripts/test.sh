#!/usr/bin/env bash
# README command 2: set up this machine (idempotent) and run the whole test suite. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} WANDB_MODE=offline HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
echo "[test] running pytest (slow integration tests included)"
exec .venv/bin/python -m pytest -q "$@"
