"""Benchmark: images/s of ftl's training step (Accelerate-prepared model, optimizer, schedule, accumulate context)
against a bare PyTorch loop with the same model, batch, optimizer and precision, in one process.

The two loops run in alternating rounds on the same in-memory batch, so machine noise hits both alike; the
headline is the median of per-round ratios. Last line: `step_ratio: X` (goal >= 0.97).

    python bench/step_overhead.py [--model mobilenetv2_100] [--batch 32] [--size 96] [--rounds 7] [--steps 8]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from datetime import date

import timm
import torch

from core.engine import create_accelerator, release_accelerator, train_step
from core.optim import create_optimizer, create_schedule


def bare_step(model, images, targets, criterion, optimizer, autocast_dtype):
    with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = criterion(model(images), targets)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenetv2_100")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args()

    accelerator = create_accelerator(args.precision, 1, seed=0)
    device = accelerator.device
    torch.manual_seed(0)
    base = timm.create_model(args.model, num_classes=10)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    targets = torch.randint(0, 10, (args.batch,), device=device)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    bare_model = copy.deepcopy(base).to(device).train()
    bare_opt = create_optimizer(bare_model, "adamw", 1e-4, 0.05)
    dtype = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    ftl_model = copy.deepcopy(base)
    ftl_opt = create_optimizer(ftl_model, "adamw", 1e-4, 0.05)
    ftl_model, ftl_opt = accelerator.prepare(ftl_model, ftl_opt)
    total = (args.rounds + 1) * args.steps
    schedule = create_schedule(ftl_opt, "onecycle", total, args.steps)
    ftl_model.train()

    run_bare = lambda: bare_step(bare_model, images, targets, criterion, bare_opt, dtype)  # noqa: E731
    run_ftl = lambda: train_step(accelerator, ftl_model, (images, targets), criterion, ftl_opt, schedule, None)  # noqa: E731
    timed(run_bare, 2)  # warm-up: allocator, kernels
    timed(run_ftl, 2)
    ratios, bare_ips, ftl_ips = [], [], []
    for r in range(args.rounds):
        order = [(run_bare, bare_ips), (run_ftl, ftl_ips)]
        for fn, sink in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
            sink.append(args.steps * args.batch / timed(fn, args.steps))
        ratios.append(ftl_ips[-1] / bare_ips[-1])
    release_accelerator()

    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}, torch {torch.__version__}, date {date.today()}")  # fmt: skip
    print(f"model {args.model}, batch {args.batch}, {args.size}px, precision {args.precision}, "
          f"{args.rounds} rounds x {args.steps} steps")  # fmt: skip
    print(f"bare PyTorch: {statistics.median(bare_ips):.1f} img/s (median)")
    print(f"ftl step:     {statistics.median(ftl_ips):.1f} img/s (median)")
    print(f"per-round ratios: {', '.join(f'{x:.3f}' for x in ratios)}")
    print(f"step_ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
