#!/usr/bin/env bash
# README command 1: set up this machine (idempotent) and run the main job: fine-tune ImageNet MobileNetV2 on a
# Fashion-MNIST subset (100 images per class) on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} WANDB_MODE=offline HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
echo "[demo] preparing data/fashion-mnist-100 (skipped when present)"
.venv/bin/ftl data prepare fashion-mnist --out data/fashion-mnist-100 --per-class 100 --val-per-class 50
echo "[demo] fine-tuning: ftl train demo"
exec .venv/bin/ftl train demo
