"""What a run writes to TensorBoard without user code: losses every N optimizer steps and per
epoch, metrics per epoch, aux values, learning rates and the grad scale — all against
``global_counters.steps.train`` (B4)."""

from __future__ import annotations

import numbers
import re
from typing import Any

from ignite.engine import Engine, Events

from ice_ignite.events import StepEvents

__all__ = ["NullWriter", "BoardLogger"]

_TAG_CHARS = re.compile(r"[^\w.\-/]")  # what TensorBoard keeps in a tag


class NullWriter:
    """A board that ignores every call (ranks other than 0, runs without a directory).

    Examples:
        >>> NullWriter().add_scalar("loss", 1.0, 0) is None
        True
    """

    def __getattr__(self, name: str) -> Any:
        return self._ignore

    @staticmethod
    def _ignore(*args: Any, **kwargs: Any) -> None:
        return None

    def __bool__(self) -> bool:
        return False


def _scalars(prefix: str, value: Any) -> dict[str, float]:
    """Numbers (and dicts of numbers) as ``{tag: float}``; other values are not scalars."""
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        return {prefix: float(value)}
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, sub in value.items():
            out.update(_scalars(f"{prefix}/{key}", sub))
        return out
    return {}


class BoardLogger:
    """Attached to each task engine of a run on global rank 0 (see ``HyperGraph.run``).

    * every ``log_every`` optimizer steps of a train task: each LossNode's value and aux values
      (``<task tags>/<loss>/step``), each optimizer's learning rate (``lr/<node>``, with the
      pattern after it when the node has several optimizers) and
      the grad scale (``grad_scale``); the only host reads it adds are these, every N steps;
    * at every epoch end: everything in ``engine.state.metrics`` (``<task tags>/<name>``).

    The last epoch values become the metrics of ``add_hparams`` at the end of the run.
    """

    def __init__(self, context: Any, log_every: int):
        self.context = context  # the graph's RunContext: counters, board, precision
        self.log_every = log_every
        self.final: dict[str, float] = {}

    def attach(self, task: Any) -> None:
        """Attach to a starting task's engine (inside its ``internal()`` block)."""
        engine = task.engine
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch, task)
        if task.train and self.log_every:
            engine.add_event_handler(StepEvents.OPTIM_STEP_COMPLETED, self._step, task)

    def _step(self, engine: Engine, task: Any) -> None:
        ctx = self.context
        step = ctx.counters.steps.train + 1  # this optimizer step, counted at ITERATION_COMPLETED
        if step % self.log_every:
            return
        board, prefix, graph = ctx.board, ",".join(task.tags), task.graph
        for node in graph.loss_nodes:
            board.add_scalar(f"{prefix}/{node.name}/step", graph.cache.value(node.name).item(), step)
            for key, value in node.aux.items():
                board.add_scalar(f"{prefix}/{node.name}/{key}/step", value.item(), step)
        for node in graph.module_nodes:
            rates = node.learning_rates()
            for key, lrs in rates.items():
                tag = f"lr/{node.name}" + (f"/{_TAG_CHARS.sub('_', key)}" if len(rates) > 1 else "")
                for i, lr in enumerate(lrs):
                    board.add_scalar(tag + (f"/{i}" if len(lrs) > 1 else ""), lr, step)
        scaler = ctx.precision.grad_scaler
        if scaler is not None:
            board.add_scalar("grad_scale", scaler.get_scale(), step)

    def _epoch(self, engine: Engine, task: Any) -> None:
        ctx = self.context
        step = ctx.counters.steps.train
        prefix = ",".join(task.tags)
        scalars: dict[str, float] = {}  # a dict metric is in state.metrics whole and as name/key: one tag each
        for name, value in engine.state.metrics.items():
            scalars.update(_scalars(f"{prefix}/{name}", value))
        for tag, number in scalars.items():
            ctx.board.add_scalar(tag, number, step)
        self.final.update(scalars)

    def write_hparams(self, hparams: dict) -> None:
        """Record ``hparams`` with the last epoch values of the run (TensorBoard's HParams tab)."""
        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        self.context.board.add_hparams(clean, dict(self.final))
