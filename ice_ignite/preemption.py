"""Preemption: SIGTERM / SIGINT make a run checkpoint at the next iteration boundary and exit."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any, Callable

__all__ = ["Preempted", "PreemptionGuard"]


class Preempted(SystemExit):
    """Raised by ``HyperGraph.run`` after a SIGTERM or SIGINT: a checkpoint was saved at the
    next iteration boundary. Uncaught, it ends the process with code ``128 + signal number``
    (143 for SIGTERM, 130 for SIGINT), as a shell reports a process killed by that signal.
    Resume with ``run(..., resume_from="auto")``.
    """

    def __init__(self, signum: int, checkpoint: Path | None, launcher: bool = False):
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint
        #: raised by the launching process, which does not know whether its workers checkpointed
        self.launcher = launcher

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.launcher:
            where = ("the workers were asked to checkpoint at their next iteration boundary, and stopped (a worker "
                     "that never reached one, e.g. stuck in a hang, wrote nothing: the newest checkpoint in the run's "
                     "ckpts/ is where a resume continues)")
        elif self.checkpoint:
            where = f"checkpoint saved to {self.checkpoint}"
        else:
            where = "the checkpoint is written by global rank 0"
        return f"preempted by {name}: {where}; resume with run(..., resume_from='auto')"


class PreemptionGuard:
    """While active (``with``), SIGTERM and SIGINT only set ``requested``; a second SIGINT
    interrupts at once. Handlers are installed from the main thread only, and restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}
        #: whether this rank is reported stuck (``HangWatch``): a signal then ends it at once, as it
        #: cannot reach an iteration boundary to checkpoint
        self.hung: Callable[[], bool] = lambda: False

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.hung():
            from ice_ignite.hang import CollectiveTimeout

            raise CollectiveTimeout(f"{signal.Signals(signum).name} while this rank was stuck (see logs/hang-rank*.txt): "
                                    "stopped without a checkpoint, which it could not reach")
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
