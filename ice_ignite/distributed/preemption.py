"""Preemption: SIGTERM / SIGINT make a run checkpoint at the next iteration boundary and exit."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

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
            where = (
                "the workers were asked to checkpoint at their next iteration boundary, and stopped (a worker "
                "that never reached one, e.g. stuck in a hang, wrote nothing: the newest checkpoint in the run's "
                "ckpts/ is where a resume continues)"
            )
        elif self.checkpoint:
            where = f"checkpoint saved to {self.checkpoint}"
        else:
            where = "the checkpoint is written by global rank 0"
        return f"preempted by {name}: {where}; resume with run(..., resume_from='auto')"


#: the guard of the run in this process, and how deep this thread is in checkpoint writes
_ACTIVE: list[PreemptionGuard] = []
_SAVING = [0]


@contextlib.contextmanager
def saving() -> Iterator[None]:
    """A checkpoint write: a second SIGINT during it is held until the write is complete (an
    interrupt inside torch's zip writer leaves its own error instead of a clear one), then
    raises ``KeyboardInterrupt``. Published checkpoints are never touched either way."""
    _SAVING[0] += 1
    try:
        yield
    finally:
        _SAVING[0] -= 1
        guard = _ACTIVE[-1] if _ACTIVE else None
        if _SAVING[0] == 0 and guard is not None and guard.deferred:
            guard.deferred = False
            raise KeyboardInterrupt(
                "a second SIGINT: stopped once the checkpoint being written was complete (every published "
                "checkpoint is intact); resume with run(..., resume_from='auto')"
            )


class PreemptionGuard:
    """While active (``with``), SIGTERM and SIGINT only set ``requested``; a second SIGINT
    interrupts at once (``KeyboardInterrupt``), or once the checkpoint being written is complete. Handlers are installed from the main thread only, and restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}
        #: a second SIGINT came during a checkpoint write: raised when the write is complete
        self.deferred = False
        #: whether this rank is reported stuck (``HangWatch``): a signal then ends it at once, as it
        #: cannot reach an iteration boundary to checkpoint
        self.hung: Callable[[], bool] = lambda: False

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        _ACTIVE.append(self)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.hung():
            from ice_ignite.distributed.hang import CollectiveTimeout

            raise CollectiveTimeout(
                f"{signal.Signals(signum).name} while this rank was stuck (see logs/hang-rank*.txt): "
                "stopped without a checkpoint, which it could not reach"
            )
        if self.requested is not None and signum == signal.SIGINT:
            if _SAVING[0] and threading.current_thread() is threading.main_thread():
                if not self.deferred:
                    self.deferred = True
                    print(
                        "ice_ignite: a second SIGINT: stopping as soon as the checkpoint being written is complete",
                        file=sys.stderr,
                        flush=True,
                    )
                return
            raise KeyboardInterrupt(
                "a second SIGINT: stopped at once, between checkpoint writes (every published "
                "checkpoint is intact); resume with run(..., resume_from='auto')"
            )
        self.requested = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
