"""Opt-in per-node timing: forward (data loading is a DatasetNode's forward), backward and
update of every node, per task, written as a CSV table and a bar chart."""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ice_ignite.engine.roles import TaskView

__all__ = ["NodeTimer"]


class NodeTimer:
    """Accumulates seconds per ``(task, node, phase)``. Forward times exclude the forwards of the
    nodes pulled from inside (each node's own cost). On CUDA each measurement synchronises the
    device, which slows the run: use it to find where time goes, not to measure speed."""

    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.totals: dict[tuple[str, str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str, str], int] = defaultdict(int)
        self.task = ""
        self._nested: list[float] = []

    def now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def add(self, uid: str, phase: str, seconds: float) -> None:
        key = (self.task, uid, phase)
        self.totals[key] += seconds
        self.calls[key] += 1

    def forward(self, uid: str, compute: Callable[[], Any]) -> Any:
        """Time ``compute`` (a node's forward), excluding the forwards it pulls."""
        self._nested.append(0.0)
        start = self.now()
        try:
            return compute()
        finally:
            elapsed = self.now() - start
            inner = self._nested.pop()
            self.add(uid, "forward", elapsed - inner)
            if self._nested:
                self._nested[-1] += elapsed

    def attach(self, task: TaskView) -> None:
        """Time the summed loss's backward and the optimizer steps of a starting task run (inside
        its engine's ``internal()`` block); forwards and hooks are timed where they run."""
        from ice_ignite.engine.events import StepEvents

        self.task = task.label
        engine, start = task.engine, [0.0]

        def begin() -> None:
            start[0] = self.now()

        def end(what: str, phase: str) -> Callable[[], None]:
            return lambda: self.add(what, phase, self.now() - start[0])

        for first, last, what, phase in (
            (StepEvents.BACKWARD_STARTED, StepEvents.BACKWARD_COMPLETED, "(summed loss)", "backward"),
            (StepEvents.OPTIM_STEP_STARTED, StepEvents.OPTIM_STEP_COMPLETED, "(optimizers)", "update"),
        ):
            engine.add_event_handler(first, begin)
            engine.add_event_handler(last, end(what, phase))

    def write(self, out_dir: Path) -> list[Path]:
        """``timing.csv`` and, with matplotlib, ``timing.png`` in ``out_dir``."""
        grand = sum(self.totals.values()) or 1.0
        rows = sorted(self.totals.items(), key=lambda kv: -kv[1])
        csv_path = out_dir / "timing.csv"
        with open(csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["task", "node", "phase", "calls", "total_s", "mean_ms", "share"])
            for (task, uid, phase), total in rows:
                calls = self.calls[(task, uid, phase)]
                writer.writerow(
                    [task, uid, phase, calls, f"{total:.6f}", f"{1e3 * total / calls:.4f}", f"{total / grand:.4f}"]
                )
        written = [csv_path]
        try:
            from matplotlib.figure import Figure  # not pyplot: the user's backend stays as it is
        except ImportError:
            return written
        top = rows[:25][::-1]
        fig = Figure(figsize=(8, 0.3 * len(top) + 1.2))
        ax = fig.add_subplot()
        ax.barh([f"{t} {u} {p}" for (t, u, p), _ in top], [v for _, v in top], color="#4a86e8")
        ax.set_xlabel("seconds")
        ax.set_title("time per node and phase")
        fig.tight_layout()
        png = out_dir / "timing.png"
        fig.savefig(png, dpi=110)
        return written + [png]
