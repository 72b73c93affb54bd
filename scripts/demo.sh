#!/usr/bin/env bash
# README command 1: set up this machine (idempotent) and run the main job: a real transfer-learning sweep on the
# local executor - ImageNet MobileNetV2 fine-tuned on a Fashion-MNIST subset (100 images per class), a 2 x 2 grid
# of fine-tune strategy x learning rate - ending with the best trial and its metric.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} WANDB_MODE=offline HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
echo "[demo] preparing data/fashion-mnist-100 (skipped when present)"
.venv/bin/ftl data prepare fashion-mnist --out data/fashion-mnist-100 --per-class 100 --val-per-class 50
sweep_dir="sweeps/demo-$(date +%Y%m%d-%H%M%S)"
echo "[demo] queueing the demo sweep (jobs/sweeps/demo.yaml) on the local executor"
.venv/bin/ftl sweep demo --out "$sweep_dir"
echo "[demo] waiting for the trials"
.venv/bin/ftl wait "$sweep_dir" --poll 2
.venv/bin/ftl status "$sweep_dir"
