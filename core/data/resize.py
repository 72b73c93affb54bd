"""Progressive resizing: the training image size as a function of the epoch (no heavy imports: config uses it)."""

from __future__ import annotations

from typing import Any


def image_size_at(spec: Any, epoch: int, epochs: int = 1) -> int:
    """spec is an int, a list of sizes splitting the run into equal parts ([64, 96]: low resolution first), or a
    list of [start_epoch, size] pairs ([[0, 64], [3, 96]]). Raises ValueError for anything else."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        if spec <= 0:
            raise ValueError("must be > 0")
        return spec
    items = list(spec) if isinstance(spec, (list, tuple)) or hasattr(spec, "__iter__") else None
    if not items:
        raise ValueError("use an int, [size, size, ...] or [[start_epoch, size], ...]")
    if all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in items):
        part = min(len(items) - 1, epoch * len(items) // max(epochs, 1))
        return items[part]
    pairs = [list(x) for x in items if hasattr(x, "__iter__")]
    if len(pairs) != len(items) or any(len(p) != 2 or not all(isinstance(v, int) for v in p) for p in pairs):
        raise ValueError("use an int, [size, size, ...] or [[start_epoch, size], ...]")
    if pairs[0][0] != 0 or any(a[0] >= b[0] for a, b in zip(pairs, pairs[1:])) or any(p[1] <= 0 for p in pairs):
        raise ValueError("[[start_epoch, size], ...] must start at epoch 0 with increasing epochs and sizes > 0")
    return [size for start, size in pairs if start <= epoch][-1]

