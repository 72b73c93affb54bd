"""Where a run is, for the person watching and for `ftl status`: a tqdm bar on a terminal, one plain line every
`every_s` seconds when the output is a log file (SLURM, the local runner), and RUN_DIR/progress.json (epoch, step,
images per second, ETA, the last validation) rewritten at each log step - what `ftl status` / `ftl wait` show.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from core.fileio import write_json_atomic


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RunProgress:
    def __init__(self, run_dir: Path, epochs: int, steps_per_epoch: int, images_per_step: int, main: bool,
                 every_s: float = 15.0):  # fmt: skip
        self.path, self.epochs, self.steps = run_dir / "progress.json", epochs, steps_per_epoch
        self.images_per_step, self.main, self.every_s = images_per_step, main, every_s
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.info: dict[str, Any] = {"epochs": epochs, "steps_per_epoch": steps_per_epoch}
        self.started = self.printed = 0.0
        self.first_step = 0

    def start_epoch(self, epoch: int, step_in_epoch: int) -> None:
        from tqdm.auto import tqdm

        self.started, self.first_step = time.perf_counter(), step_in_epoch
        self.bar = tqdm(total=self.steps, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{self.epochs}",
                        disable=not (self.main and self.tty), leave=False, dynamic_ncols=True)  # fmt: skip

    def step(self, epoch: int, step_in_epoch: int, loss: float | None = None, lr: float | None = None) -> None:
        """After every update; with loss and lr (a log step) the file is rewritten and, in a log, a line printed."""
        self.bar.update(1)
        if loss is None or not self.main:
            return
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        elapsed = time.perf_counter() - self.started
        done = step_in_epoch - self.first_step
        per_step = elapsed / max(done, 1)
        left = (self.steps - step_in_epoch) + (self.epochs - epoch - 1) * self.steps
        self.info.update(epoch=epoch, step_in_epoch=step_in_epoch, train_loss=loss, lr=lr,
                         img_per_s=round(done * self.images_per_step / max(elapsed, 1e-9), 1),
                         eta_s=round(left * per_step), updated=time.time())  # fmt: skip
        write_json_atomic(self.path, self.info)
        now = time.perf_counter()
        if not self.tty and now - self.printed >= self.every_s:
            self.printed = now
            print(f"ftl: epoch {epoch + 1}/{self.epochs} step {step_in_epoch}/{self.steps} loss {loss:.4f} "
                  f"lr {lr:.2e} {self.info['img_per_s']:.0f} img/s eta {_clock(self.info['eta_s'])}", flush=True)

    def end_epoch(self, epoch: int, best: float, best_epoch: int, metrics: dict[str, float]) -> None:
        """After validation: epochs done, the best so far and the last metrics."""
        self.bar.close()
        if self.main:
            self.info.update(epoch=epoch, step_in_epoch=0, best=best, best_epoch=best_epoch, updated=time.time(),
                             **metrics)  # fmt: skip
            write_json_atomic(self.path, self.info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
