"""``RunContext``: what the nodes of a HyperGraph see of the run they are in (counters, the
process's launcher, precision, the board, the run directory, the running task) — and nothing
else of the HyperGraph. The upper layers fill it in; nodes only read it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ice_ignite.distributed.launcher_record import Launcher
from ice_ignite.engine.counters import GlobalCounters
from ice_ignite.engine.roles import TaskView
from ice_ignite.observe.board import BoardWriter, NullWriter, board_files, rewind_board
from ice_ignite.observe.timing import NodeTimer
from ice_ignite.training.precision import Precision

__all__ = ["RunContext", "RunningTask"]


#: What a node sees of the running task (an ``ice.Task``).
RunningTask = TaskView


class RunContext:
    """The shared state of one HyperGraph that its nodes may read: the one place to read the run
    from, as ``g.context`` on the graph and ``n.context`` on each of its nodes (the same object).

    Examples:
        >>> ctx = RunContext()
        >>> ctx.device, ctx.counters.steps.train, bool(ctx.board)
        (device(type='cpu'), 0, False)
    """

    def __init__(self) -> None:
        #: global step and epoch counters (``g.global_counters``)
        self.counters = GlobalCounters()
        #: autocast settings and the GradScaler
        self.precision = Precision()
        #: micro-batches per optimizer step
        self.grad_acc_steps = 1
        #: this process's place in the run, or None outside a run
        self.launcher: Launcher | None = None
        #: the run's base seed
        self.seed = 0
        #: whether the run's seed was given (``run(seed=...)``) rather than taken from torch
        self.seed_given = False
        #: the run directory and its name, None outside a run
        self.run_dir: Path | None = None
        self.run_id: str | None = None
        self._board: BoardWriter | NullWriter = NullWriter()
        self._board_dir: str | None = None
        #: per-node timing of the run (``OutputOptions(timing=True)``), else None
        self.timer: NodeTimer | None = None
        #: ``save_best(node, value, higher_better, max_keep)`` of the run, None outside one
        self.save_best: Callable[..., Path | None] | None = None
        #: ``f(run_dir, error)`` called on every rank when a run ends, its last checkpoint on disk;
        #: ``error`` is what ended it (None: it completed). Trackers (``ice.MLflow``) register here.
        self.run_end: list[Callable[[Path, BaseException | None], None]] = []

    @property
    def board(self) -> BoardWriter | NullWriter:
        """A tensorboardX SummaryWriter into the run's ``logs/`` on global rank 0 (created at its
        first use), else a NullWriter."""
        if self._board_dir is not None and isinstance(self._board, NullWriter):
            self._board = BoardWriter(logdir=self._board_dir)
        return self._board

    def flush_board(self) -> dict[str, int] | None:
        """Put everything logged to the board so far on disk; returns the event files and their
        sizes (what a checkpoint records), None where this process has no board."""
        if self._board_dir is None:
            return None
        if not isinstance(self._board, NullWriter):
            self._board.flush()
        return board_files(self._board_dir)

    def rewind_board(self, record: dict[str, int]) -> list[str]:
        """Cut the board back to what a checkpoint recorded (``board.rewind_board``), closing the
        writer first (the next use opens a new event file after the others)."""
        if self._board_dir is None:
            return []
        if not isinstance(self._board, NullWriter):
            self._board.close()
            self._board = NullWriter()
        return rewind_board(self._board_dir, record)

    def open_board(self, logdir: str | None) -> None:
        """Write the board into ``logdir`` from now on (None: nowhere)."""
        self.close_board()
        self._board_dir = logdir

    def close_board(self) -> None:
        """Close the board's writer, if one was created."""
        if not isinstance(self._board, NullWriter):
            self._board.close()
        self._board, self._board_dir = NullWriter(), None

    @property
    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """The run's GradScaler, or None when it is disabled (``precision.grad_scaler``)."""
        return self.precision.grad_scaler

    @property
    def device(self) -> torch.device:
        """The device of this process (CPU outside a run)."""
        return self.launcher.device if self.launcher is not None else torch.device("cpu")

    @property
    def rank(self) -> int:
        """Global rank (0 outside a run)."""
        return self.launcher.rank if self.launcher is not None else 0

    @property
    def world_size(self) -> int:
        """Processes in the run (1 outside a run)."""
        return self.launcher.world_size if self.launcher is not None else 1
