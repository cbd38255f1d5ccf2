"""The processes of a run and signals (B9): DataLoader workers that leave SIGTERM / SIGINT to the
process that trains, and processes that do not outlive the one that started them.

Why ``prctl(PR_SET_PDEATHSIG)`` rather than a thread polling the parent's pid: the kernel sends
the signal as the parent exits, however it exits (SIGKILL included), with no polling delay during
which an orphan could go on training and writing checkpoints beside a new run, and without a
thread in every worker. It is Linux only; elsewhere a daemon thread polls ``os.getppid()``
(every 0.5 s) and kills the process when it changes.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["die_with_parent", "children_spawned", "WorkerInit", "LAUNCHER_PID_ENV"]

#: the pid of the process that started this worker (set by the launching process for its workers)
LAUNCHER_PID_ENV = "ICE_IGNITE_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """End this process with ``sig`` when ``parent`` (its parent process) exits. If ``parent``
    is gone already (this process was orphaned before getting here), end it now."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before prctl: nobody will send the signal
                    os.kill(os.getpid(), sig)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, name="ice_ignite-parent-watch", daemon=True).start()


#: the worker processes started in ``children_spawned`` blocks (they ignore SIGTERM): killed at exit
_WORKERS: weakref.WeakSet[multiprocessing.process.BaseProcess] = weakref.WeakSet()


def _kill_workers_left() -> None:
    """At interpreter exit, before multiprocessing's own exit handler (registered earlier, so run
    later) sends SIGTERM to daemonic children and joins them: workers that ignore SIGTERM, of an
    iterator nobody shut down, would keep that join waiting for ever."""
    for process in list(_WORKERS):
        if process.is_alive():
            process.kill()


@contextlib.contextmanager
def children_spawned() -> Iterator[None]:
    """Hold SIGTERM and SIGINT back (blocked, not lost) while this block starts child processes:
    a child starts with them blocked and ``WorkerInit`` ignores them before it unblocks them, so a
    signal to the process group cannot kill a child before it could ignore it. This process gets
    them at the end of the block. The children started are killed at exit if still alive."""
    before = {id(p) for p in multiprocessing.active_children()}
    masked = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS) if masked else None
    try:
        yield
    finally:
        if previous is not None:  # masked above
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        started = [p for p in multiprocessing.active_children() if id(p) not in before]
        if started and not _WORKERS:
            atexit.register(_kill_workers_left)
        _WORKERS.update(started)


class WorkerInit:
    """A DataLoader ``worker_init_fn`` (wrapping the user's, if any) for the workers of a run:
    SIGTERM and SIGINT are ignored, so that a signal sent to the whole process group (SLURM,
    ``timeout``, Ctrl-C) reaches the training process, which checkpoints at its next iteration
    boundary and then ends its workers; and the worker dies with the process that trains (if that
    one is killed, no worker is left behind). Any other death of a worker is still reported by
    torch's DataLoader."""

    def __init__(self, user_fn: Callable[[int], Any] | None = None):
        self.user_fn = user_fn
        self.parent = os.getpid()

    def __call__(self, worker_id: int) -> None:
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_IGN)  # torch's worker handler would end the worker at SIGTERM
        if hasattr(signal, "pthread_sigmask"):  # blocked by children_spawned; pending ones are dropped now
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        die_with_parent(self.parent)
        if self.user_fn is not None:
            self.user_fn(worker_id)
