"""Run by tests/core/test_ffcv.py under torchrun (2 CPU processes): each rank writes the labels (= sample indices)
its FfcvLoaders yield, for training epochs 0 and 1 and for validation, plus evaluate()'s sample count."""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from core.config import AugmentConfig
from core.data.beton import open_beton
from core.data.ffcv_loader import FfcvLoader
from core.engine import evaluate

beton, out = open_beton(sys.argv[1]), Path(sys.argv[2])
acc = Accelerator(cpu=True)
common = {"image_size": 32, "crop_pct": 0.875, "augment": AugmentConfig(hflip=0.5), "mean": [0.5] * 3, "std": [0.5] * 3,
          "seed": 0, "device": acc.device, "num_workers": 1, "rank": acc.process_index, "world": acc.num_processes}
idx = np.arange(beton.num_samples)
train = FfcvLoader(beton, idx, 8, train=True, **common)
val = FfcvLoader(beton, idx, 8, train=False, **common)
seen = {}
for epoch in (0, 1):
    train.set_epoch(epoch)
    seen[f"train{epoch}"] = [int(y) for _, labels in train for y in labels]
seen["val"] = [int(y) for _, labels in val for y in labels]
model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 37))
seen["val_n"] = evaluate(acc, acc.prepare(model), val)["val_n"]
(out / f"rank{acc.process_index}.json").write_text(json.dumps(seen))
