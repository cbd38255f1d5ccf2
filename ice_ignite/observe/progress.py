"""Progress of running tasks on local rank 0: ignite's tqdm ``ProgressBar`` on a terminal, a
periodic one-line summary otherwise."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TextIO

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from ice_ignite.engine.roles import TaskView, running_graph

__all__ = ["Progress"]

logger = logging.getLogger("ice_ignite")


def _losses(task: TaskView) -> Callable[[Any], dict]:
    """The ProgressBar's view of ``engine.state.output``: the task's losses."""
    names = [node.name for node in running_graph(task).loss_nodes]
    return lambda output: {name: output[name] for name in names} if output is not None else {}


class Progress:
    """Shows the progress of every task of a run: epoch, iteration / epoch size and the latest
    losses. Bars refresh at most ``refresh`` times a second (each refresh reads the losses from the
    device); without a terminal, a summary line is logged every ``every_seconds`` and at every
    epoch end."""

    #: seconds between summary lines without a terminal
    line_every = 30.0

    def __init__(self, stream: TextIO, refresh: float = 5.0, every_seconds: float | None = None):
        self.stream = stream
        self.terminal = hasattr(stream, "isatty") and stream.isatty()
        self.interval = 1.0 / refresh
        self.every_seconds = self.line_every if every_seconds is None else every_seconds

    def attach(self, task: TaskView) -> None:
        """Attach to a starting task's engine for one run (inside its ``internal()`` block, which
        removes the handlers at the end of the run)."""
        engine = task.engine
        if self.terminal:
            self._attach_bar(task, engine)
            return
        state = {"last": time.monotonic(), "start": time.monotonic(), "start_iter": 0}
        engine.add_event_handler(Events.STARTED, self._line_start, state)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._line, task, state)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._line_epoch, task)

    def _attach_bar(self, task: TaskView, engine: Engine) -> None:
        bar = ProgressBar(persist=False, desc=task.label, file=self.stream)
        last = [0.0]

        def due(engine: Engine, iteration: int) -> bool:
            now = time.monotonic()
            length = engine.state.epoch_length  # set while the engine runs
            if now - last[0] >= self.interval or (length is not None and iteration % length == 0):
                last[0] = now
                return True
            return False

        bar.attach(engine, output_transform=_losses(task), event_name=Events.ITERATION_COMPLETED(event_filter=due))
        # ignite's ProgressBar closes its bar at epoch end only; a run ended early leaves it open
        engine.add_event_handler(Events.COMPLETED, lambda e: bar._close(e))

    @staticmethod
    def _line_start(engine: Engine, state: dict) -> None:
        state["start"] = state["last"] = time.monotonic()
        state["start_iter"] = engine.state.iteration

    def _line(self, engine: Engine, task: TaskView, state: dict) -> None:
        now = time.monotonic()
        if now - state["last"] < self.every_seconds:
            return
        state["last"] = now
        s = engine.state
        rate = (s.iteration - state["start_iter"]) / max(now - state["start"], 1e-9)
        losses = " ".join(f"{k} {v.item():.4g}" for k, v in _losses(task)(s.output).items())
        logger.info(
            "%s epoch %d/%d iteration %d/%d %s %.1f it/s",
            task.label,
            s.epoch,
            s.max_epochs,
            (s.iteration - 1) % (s.epoch_length or 1) + 1,
            s.epoch_length,
            losses,
            rate,
        )

    @staticmethod
    def _line_epoch(engine: Engine, task: TaskView) -> None:
        s = engine.state
        metrics = " ".join(f"{k} {v:.4g}" for k, v in s.metrics.items() if isinstance(v, (int, float)))
        logger.info("%s epoch %d/%d done: %s", task.label, s.epoch, s.max_epochs, metrics or "-")
