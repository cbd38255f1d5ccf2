"""Progress of running tasks on local rank 0: ignite's tqdm ``ProgressBar`` on a terminal, a
periodic one-line summary otherwise."""

from __future__ import annotations

import logging
import time
import weakref
from typing import TYPE_CHECKING, Any, TextIO

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

if TYPE_CHECKING:
    from ice_ignite.task import Task

__all__ = ["Progress"]

logger = logging.getLogger("ice_ignite")


def _losses(output: Any) -> dict:
    return dict(output) if isinstance(output, dict) else {}


class Progress:
    """Shows the progress of every task of a run: epoch, iteration / epoch size and the latest
    losses. Bars refresh at most ``refresh`` times a second (each refresh reads the losses from the
    device); without a terminal, a summary line is logged every ``every_seconds`` and at every
    epoch end."""

    def __init__(self, stream: TextIO, refresh: float = 5.0, every_seconds: float = 30.0):
        self.stream = stream
        self.terminal = hasattr(stream, "isatty") and stream.isatty()
        self.interval = 1.0 / refresh
        self.every_seconds = every_seconds
        self._bars: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def attach(self, task: "Task") -> list:
        """Attach to ``task.engine`` for one run; returns handles to remove afterwards."""
        engine = task.engine
        if self.terminal:
            return self._attach_bar(task, engine)
        state = {"last": time.monotonic(), "start": time.monotonic(), "start_iter": 0}
        return [
            engine.add_event_handler(Events.STARTED, self._line_start, state),
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._line, task, state),
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._line_epoch, task),
        ]

    def _attach_bar(self, task: "Task", engine: Engine) -> list:
        # ignite's ProgressBar.attach returns no handle to detach it with, so one bar stays
        # attached to each engine and is switched on for the runs that show progress.
        entry = self._bars.get(engine)
        if entry is None:
            bar = ProgressBar(persist=False, desc=task.label, file=self.stream)
            entry = self._bars[engine] = {"on": False, "last": 0.0, "bar": bar}

            def due(engine: Engine, iteration: int) -> bool:
                now = time.monotonic()
                if entry["on"] and (now - entry["last"] >= self.interval or iteration % engine.state.epoch_length == 0):
                    entry["last"] = now
                    return True
                return False

            bar.attach(engine, output_transform=_losses, event_name=Events.ITERATION_COMPLETED(event_filter=due))
        entry["on"] = True

        class _SwitchOff:
            def remove(self) -> None:
                entry["on"] = False
                entry["bar"]._close(engine)

        return [_SwitchOff()]

    @staticmethod
    def _line_start(engine: Engine, state: dict) -> None:
        state["start"] = state["last"] = time.monotonic()
        state["start_iter"] = engine.state.iteration

    def _line(self, engine: Engine, task: "Task", state: dict) -> None:
        now = time.monotonic()
        if now - state["last"] < self.every_seconds:
            return
        state["last"] = now
        s = engine.state
        rate = (s.iteration - state["start_iter"]) / max(now - state["start"], 1e-9)
        losses = " ".join(f"{k} {v.item():.4g}" for k, v in _losses(s.output).items())
        logger.info("%s epoch %d/%d iteration %d/%d %s %.1f it/s", task.label, s.epoch, s.max_epochs,
                    (s.iteration - 1) % s.epoch_length + 1, s.epoch_length, losses, rate)

    @staticmethod
    def _line_epoch(engine: Engine, task: "Task") -> None:
        s = engine.state
        metrics = " ".join(f"{k} {v:.4g}" for k, v in s.metrics.items() if isinstance(v, (int, float)))
        logger.info("%s epoch %d/%d done: %s", task.label, s.epoch, s.max_epochs, metrics or "-")
