#!/usr/bin/env bash
# Domain adaptation chain (docs/domain_adaptation.md): train a MobileNetV2 from scratch on Fashion-MNIST classes 0-4
# (tops, trousers, pullovers, dresses, coats), export it, and fine-tune that export on classes 5-9 (sandals, shirts,
# sneakers, bags, ankle boots) with only 50 images per class - against the same fine-tune from a scratch start.
# Runs from any directory, writing data/ and runs/ under the working directory (OUT and DATA move them); uses the
# `ftl` on PATH (an activated venv, or `pip install`), else the clone's .venv.
set -euo pipefail
FTL=$(command -v ftl || echo "$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/ftl")
OUT=${OUT:-runs/domain-adaptation}
DATA=${DATA:-data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"$FTL" data prepare fashion-mnist --out "$DATA/fmnist-0-4" --classes 0-4 --per-class 600 --val-per-class 100
"$FTL" data prepare fashion-mnist --out "$DATA/fmnist-5-9" --classes 5-9 --per-class 50 --val-per-class 200
common=(data.image_size=32 data.batch_size=64 data.num_workers=2 model.pretrained=null augment.scale=[0.6,1.0])
"$FTL" train base "${common[@]}" data.train_dir="$DATA/fmnist-0-4/train" data.val_dir="$DATA/fmnist-0-4/val" \
  train.epochs=5 optim.lr=3e-3 --run-dir "$OUT/source-0-4"
target=(data.train_dir="$DATA/fmnist-5-9/train" data.val_dir="$DATA/fmnist-5-9/val" train.epochs=8 data.batch_size=32)
"$FTL" train fine_tune "${common[@]}" "${target[@]}" model.pretrained="$OUT/source-0-4" --run-dir "$OUT/transfer-5-9"
"$FTL" train base "${common[@]}" "${target[@]}" optim.lr=3e-3 --run-dir "$OUT/scratch-5-9"
for run in source-0-4 transfer-5-9 scratch-5-9; do
  printf '%-14s top-1 %s\n' "$run" "$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['val_top1'], 4))" "$OUT/$run/result.json")"
done
