"""The run: where ``HyperGraph.run`` starts or joins processes, prepares the run directory, and
what a run attaches around its schedule (logging, board, progress, timing, preemption)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ignite.engine import Events

from ice_ignite import parallel
from ice_ignite.board import BoardLogger
from ice_ignite.checkpointer import Checkpointer
from ice_ignite.context import RunContext
from ice_ignite.launcher import Launcher, launch, script_command
from ice_ignite.logs import run_logging
from ice_ignite.preemption import Preempted, PreemptionGuard
from ice_ignite.progress import Progress
from ice_ignite.rundir import DEFAULT_OUT_DIR, RunDir, prepare_run_dir
from ice_ignite.seeding import seed_everything
from ice_ignite.tags import DEFAULT_TAG
from ice_ignite.timing import NodeTimer

__all__ = ["LaunchOptions", "RunOptions", "RunSession", "spawn_workers", "open_run_dir", "record_worker_error"]

logger = logging.getLogger("ice_ignite")

# the run directory's name, passed from the launching process to its workers
RUN_ID_ENV = "ICE_IGNITE_RUN_ID"


@dataclass(frozen=True)
class LaunchOptions:
    """How ``run`` starts the processes of a multi-process run (torchrun's options)."""

    nnodes: str = "1:1"
    node_rank: int = 0
    dist_backend: str = "auto"
    master_addr: str = "127.0.0.1"
    master_port: int | None = None
    rdzv_endpoint: str = ""
    rdzv_backend: str = "static"
    max_restarts: int = 0
    start_method: str = "spawn"

    def __post_init__(self) -> None:
        if self.start_method not in ("spawn", "fork"):
            raise ValueError(f"start_method must be 'spawn' (re-run the script) or 'fork', got {self.start_method!r}")

    @property
    def several_nodes(self) -> bool:
        """Whether the run spans more than one machine."""
        return str(self.nnodes) not in ("1", "1:1")


@dataclass(frozen=True)
class RunOptions:
    """What one run does besides its schedule (see ``HyperGraph.run`` for each)."""

    run_id: str | None = None
    out_dir: "str | os.PathLike | None" = None
    resume_from: "str | os.PathLike | None" = None
    seed: int = 0
    strict_resume: bool = True
    n_saved: int | None = None
    log_every: int = 50
    progress: bool = True
    hparams: dict | None = field(default=None)
    timing: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if self.resume_from is not None and not isinstance(self.resume_from, (str, os.PathLike)):
            raise TypeError(f"resume_from must be None, 'auto' or a checkpoint path, got {self.resume_from!r}")
        n = self.n_saved
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n_saved must be None (keep all) or an int >= 1, got {n!r}")
        e = self.log_every
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ValueError(f"log_every must be an int >= 0, got {e!r}")
        if self.hparams is not None and not isinstance(self.hparams, dict):
            raise TypeError(f"hparams must be a dict of hyper-parameters, got {type(self.hparams).__name__}")


def record_worker_error(e: BaseException) -> None:
    """Write the traceback where the elastic agent reports a failed worker's error from."""
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(e)


def spawn_workers(worker: Callable[[str], Any], nproc: int, launch_options: LaunchOptions, options: RunOptions
                  ) -> Path:
    """Start the workers of a multi-process run from this (launching) process. In ``spawn`` mode
    they re-run the entry script and this process exits when they are done (as under
    ``torchrun``); forked workers call ``worker(run_id)`` and the run directory is returned."""
    rundir = prepare_run_dir(options.out_dir, options.run_id, options.resume_from)
    command = script_command() if launch_options.start_method == "spawn" else None
    fork = command is None  # no entry script to re-run (a notebook, python -c): fork
    o = launch_options
    os.environ[RUN_ID_ENV] = rundir.run_id
    try:
        launch((lambda: worker(rundir.run_id)) if fork else command, nproc, o.nnodes, o.node_rank, o.master_addr,
               o.master_port, o.rdzv_endpoint, o.rdzv_backend, o.max_restarts, "fork" if fork else "spawn",
               run_id=options.run_id or "ice_ignite")
    except Preempted as e:
        print(f"ice_ignite: {e}", file=sys.stderr, flush=True)
        raise
    finally:
        os.environ.pop(RUN_ID_ENV, None)
    if fork:
        return rundir.root
    raise SystemExit(0)  # as under torchrun, the workers ran the whole script


def open_run_dir(options: RunOptions, launcher: Launcher) -> RunDir:
    """The run directory, prepared by global rank 0 and agreed by every rank."""
    if launcher.world_size == 1:
        return prepare_run_dir(options.out_dir, options.run_id, options.resume_from)
    run_id = options.run_id or os.environ.get(RUN_ID_ENV)
    prepared, failure, answer = None, None, (None, None)
    if launcher.rank == 0:
        try:
            prepared = prepare_run_dir(options.out_dir, run_id, options.resume_from)
            answer = (prepared.run_id, None)
        except Exception as e:
            failure, answer = e, (None, f"{type(e).__name__}: {e}")
    agreed_id, error = parallel.broadcast_object(answer)
    if failure is not None:
        raise failure
    if error is not None:
        raise RuntimeError(f"global rank 0 could not prepare the run directory: {error}")
    if prepared is not None:
        return prepared
    rundir = RunDir(Path(options.out_dir if options.out_dir is not None else DEFAULT_OUT_DIR) / agreed_id)
    rundir.create()  # on other machines too: each rank writes its own log there
    return rundir


class RunSession:
    """What a run sets up around its schedule in one process, and attaches to each task engine:
    the run directory in the context, logging, the board, progress, per-node timing and the
    preemption check (SIGTERM / SIGINT → a checkpoint at the next iteration boundary on every rank,
    then ``Preempted``)."""

    def __init__(self, context: RunContext, checkpointer: Checkpointer, launcher: Launcher, rundir: RunDir,
                 options: RunOptions):
        self.context = context
        self.checkpointer = checkpointer
        self.launcher = launcher
        self.rundir = rundir
        self.options = options
        self.board_logger: BoardLogger | None = None
        self.progress: Progress | None = None
        self._guard: PreemptionGuard | None = None
        self._agreed: parallel.AgreedFlag | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator["RunSession"]:
        """Enter the run: logging, signal handling, context, board; restored on exit."""
        launcher, ctx, options = self.launcher, self.context, self.options
        bars = options.progress and launcher.local_rank == 0 and sys.stderr.isatty()
        with run_logging(self.rundir.logs, launcher.rank, bars), PreemptionGuard() as self._guard:
            ctx.launcher, ctx.run_dir, ctx.run_id, ctx.seed = launcher, self.rundir.root, self.rundir.run_id, options.seed
            seed_everything(options.seed + launcher.rank)
            ctx.precision.setup(launcher.device)
            ctx.open_board(str(self.rundir.logs) if launcher.rank == 0 else None)
            ctx.timer = NodeTimer(launcher.device) if options.timing else None
            ctx.save_best = self.checkpointer.save_best
            self._agreed = parallel.AgreedFlag() if launcher.world_size > 1 else None
            self.checkpointer.open(self.rundir, options.n_saved, writer=launcher.rank == 0)
            if launcher.rank == 0:
                self.board_logger = BoardLogger(ctx, options.log_every)
            if options.progress and launcher.local_rank == 0:
                self.progress = Progress(sys.stderr)
            try:
                yield self
                if options.hparams is not None and self.board_logger is not None:
                    self.board_logger.write_hparams(options.hparams)
                if ctx.timer is not None and launcher.rank == 0:
                    ctx.timer.write(self.rundir.root)
            finally:
                self._close()

    def _close(self) -> None:
        ctx = self.context
        self._guard = None
        if self._agreed is not None:
            self._agreed.close()
            self._agreed = None
        ctx.close_board()
        ctx.timer, ctx.save_best = None, None
        ctx.launcher = None
        self.checkpointer.close()

    def attach(self, task: Any) -> None:
        """Attach the run's handlers to a starting task's engine (inside its ``internal()`` block)."""
        engine = task.engine
        engine.add_event_handler(Events.ITERATION_STARTED, self.check_preemption)
        if self.board_logger is not None:
            self.board_logger.attach(task)
        if self.progress is not None:
            self.progress.attach(task)
        timer = self.context.timer
        if timer is not None:
            timer.attach(task)

    def check_preemption(self) -> None:
        """At an iteration boundary: after SIGTERM / SIGINT on any rank, every rank checkpoints at
        the same boundary and raises Preempted (the agreement overlaps the next iteration)."""
        self._preempt_if_asked(blocking=False)

    def check_preemption_now(self) -> None:
        """Between schedule entries: a blocking agreement, so that every rank stops at the same entry."""
        self._preempt_if_asked(blocking=True)

    def _preempt_if_asked(self, blocking: bool) -> None:
        guard = self._guard
        if guard is None:
            return
        local = guard.requested is not None
        agreed = self._agreed
        if agreed is not None:
            local = agreed.check_now(local) if blocking else agreed.check(local)
        if local:
            path = self.checkpointer.save(None, (DEFAULT_TAG,))
            raise Preempted(guard.requested or signal.SIGTERM, path)
