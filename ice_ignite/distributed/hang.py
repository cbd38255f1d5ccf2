"""No hang without a word (B9): every rank of a multi-process run records where it is (task, event,
iteration) at each engine event; when it has not moved for ``collective_timeout`` seconds it writes
where it is and the Python stack of every thread to ``logs/hang-rank<r>.txt`` and posts a summary
to the process group's store. A rank whose collective then times out names the rank furthest behind
in the run's event sequence (the stuck one) in its error."""

from __future__ import annotations

import datetime
import faulthandler
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ignite.engine import Engine, Events

from ice_ignite.engine.events import StepEvents
from ice_ignite.engine.roles import TaskView

if TYPE_CHECKING:
    import torch.distributed as dist

__all__ = ["CollectiveTimeout", "HangWatch", "DEFAULT_COLLECTIVE_TIMEOUT", "collective_timeout_of"]

#: seconds a collective of a gloo (CPU) run may wait before the run ends naming the stuck rank
DEFAULT_COLLECTIVE_TIMEOUT = 300.0

# where a rank is, event by event (GET_BATCH_STARTED to ITERATION_STARTED: it fetches the batches)
_EVENTS = (
    Events.STARTED,
    Events.EPOCH_STARTED,
    Events.GET_BATCH_STARTED,
    Events.ITERATION_STARTED,
    StepEvents.BACKWARD_STARTED,
    StepEvents.BACKWARD_COMPLETED,
    StepEvents.OPTIM_STEP_STARTED,
    StepEvents.OPTIM_STEP_COMPLETED,
    Events.ITERATION_COMPLETED,
    Events.EPOCH_COMPLETED,
    Events.COMPLETED,
)


class CollectiveTimeout(RuntimeError):
    """A collective of a multi-process run did not complete within ``LaunchOptions(collective_timeout=...)``;
    the message names the stuck rank and where it was, and ``logs/hang-rank<r>.txt`` holds every
    rank's stacks."""


def collective_timeout_of(value: Any, backend: str | None) -> datetime.timedelta | None:
    """``LaunchOptions(collective_timeout=...)`` as a timedelta: None gives 5 minutes on gloo and torch's
    default elsewhere (None); a number of seconds > 0 or a timedelta is taken as it is.

    Examples:
        >>> collective_timeout_of(None, "gloo").total_seconds(), collective_timeout_of(2, "nccl").total_seconds()
        (300.0, 2.0)
    """
    if value is None:
        return datetime.timedelta(seconds=DEFAULT_COLLECTIVE_TIMEOUT) if backend in (None, "gloo") else None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(
            f"collective_timeout must be None (5 minutes on CPU, torch's default on GPUs), a number of "
            f"seconds > 0 or a datetime.timedelta, got {value!r}"
        )
    return datetime.timedelta(seconds=seconds)


class HangWatch:
    """One rank's watch (a daemon thread) while its run lasts."""

    def __init__(
        self,
        logs: Path,
        rank: int,
        world_size: int,
        timeout: float,
        store: dist.Store,
        node: Callable[[], str | None] = lambda: None,
    ):
        self.logs, self.rank, self.world_size, self.timeout = logs, rank, world_size, timeout
        self.store: dist.Store | None = store  # None once closed
        #: ``node()``: the uid of the node the rank is computing now (None between forwards)
        self.node = node
        self.beats = 0
        self.task: str | None = None
        self.event: str | None = None
        self.iteration: int | None = None
        self._last = time.monotonic()
        self._reported_at: int | None = None  # the beat count of the last report
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="ice_ignite-hang-watch", daemon=True)
        self._thread.start()

    # -- where this rank is ---------------------------------------------------------------------
    def attach(self, task: TaskView) -> None:
        engine = task.engine
        for event in _EVENTS:
            engine.add_event_handler(event, self._beat, task, event.name)

    def _beat(self, engine: Engine, task: TaskView, event: str) -> None:
        self.beats += 1
        self.task, self.event, self.iteration = repr(task), event, engine.state.iteration
        self._last = time.monotonic()

    @property
    def hung(self) -> bool:
        """Whether this rank reported a hang and has not moved since."""
        return self._reported_at is not None and self._reported_at == self.beats

    def where(self) -> str:
        return (
            f"in task {self.task} after {self.event} of iteration {self.iteration}"
            if self.task
            else "before its first task event"
        )

    # -- reports --------------------------------------------------------------------------------
    def _watch(self) -> None:
        step = min(0.5, self.timeout / 4)
        while not self._stop.wait(step):
            if time.monotonic() - self._last >= self.timeout and self._reported_at != self.beats:
                try:
                    self.report()
                except Exception:  # a report must never take the rank down
                    pass

    def report(self, error: BaseException | None = None) -> Path:
        """Write ``logs/hang-rank<r>.txt`` (where, every thread's stack) and post the summary."""
        with self._lock:
            beats = self.beats
            path = self.logs / f"hang-rank{self.rank}.txt"
            node = self.node()
            stalled = time.monotonic() - self._last
            summary = {
                "rank": self.rank,
                "beats": beats,
                "node": node,
                "where": self.where(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "file": str(path),
                "stalled": round(stalled, 1),
            }
            head = (
                f"rank {self.rank} of {self.world_size} (host {summary['host']}, pid {os.getpid()}): no progress "
                f"for {stalled:.1f} s (collective_timeout {self.timeout:g} s), "
                f"{'in node ' + repr(node) + ' ' if node else ''}{self.where()}; event #{beats}\n"
            )
            if error is not None:
                head += f"its collective failed: {type(error).__name__}: {error}\n"
            self.logs.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                f.write(head + "\nPython stack of every thread (most recent call first):\n")
                f.flush()
                faulthandler.dump_traceback(f, all_threads=True)
            self._reported_at = beats
            try:
                if self.store is not None:
                    self.store.set(f"hang/rank{self.rank}", json.dumps(summary))
            except Exception:
                pass
            return path

    def _summaries(self, wait: float) -> dict[int, dict]:
        found: dict[int, dict] = {}
        deadline = time.monotonic() + wait
        while True:
            for r in range(self.world_size):
                if r not in found:
                    try:
                        store = self.store
                        if store is not None and store.check([f"hang/rank{r}"]):
                            found[r] = json.loads(store.get(f"hang/rank{r}"))
                    except Exception:
                        pass
            if len(found) == self.world_size or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def explain(self, error: BaseException) -> CollectiveTimeout | None:
        """A ``CollectiveTimeout`` naming the stuck rank when ``error`` is a failed collective."""
        if not _is_collective_failure(error):
            return None
        if self._reported_at != self.beats:
            self.report(error)
        found = self._summaries(wait=min(10.0, max(2.0, self.timeout)))
        logs = self.logs / "hang-rank<r>.txt"
        if found:
            least = min(s["beats"] for s in found.values())
            behind = [s for s in found.values() if s["beats"] == least]
            missing = [r for r in range(self.world_size) if r not in found]
            if len(behind) == len(found) and not missing:
                stuck = "every rank stopped at the same event (a collective that only some ranks call?)"
            else:
                stuck = "; ".join(
                    f"rank {s['rank']} is stuck (host {s['host']}, pid {s['pid']}) "
                    f"{'in node ' + repr(s['node']) + ' ' if s['node'] else ''}{s['where']}, "
                    f"no progress for {s['stalled']} s"
                    for s in behind
                )
            if missing:
                stuck += (
                    f"; rank(s) {', '.join(map(str, missing))} sent no report (dead, or stuck in native code "
                    "that holds the interpreter)"
                )
        else:
            stuck = "no rank could report where it is (the store is unreachable)"
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return CollectiveTimeout(
            f"rank {self.rank}: a collective did not complete within collective_timeout={self.timeout:g} s "
            f"({type(error).__name__}: {first[:300]}). {stuck}. Every rank's stacks are in {logs}. Fix what blocks "
            "that rank (its stack says where), or raise LaunchOptions(collective_timeout=...) if it is only slow"
        )

    def close(self) -> None:
        """Stop watching, and let go of the store: a store kept past the process group (whoever
        destroys it) is torn down at interpreter exit, where torch aborts on its threads."""
        self._stop.set()
        self._thread.join(timeout=2)
        self.store = None


def _is_collective_failure(error: BaseException) -> bool:
    import torch.distributed as dist

    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).lower()
        if isinstance(e, dist.DistError) or (
            isinstance(e, RuntimeError)
            and (
                "timed out" in text
                or "timeout" in text
                or "connection reset" in text
                or "connection closed" in text
                or "gloo" in text
            )
        ):
            return True
        e = e.__cause__ or e.__context__
    return False
