"""What a run writes to TensorBoard without user code: losses every N optimizer steps and per
epoch, metrics per epoch, aux values, learning rates and the grad scale — all against
``global_counters.steps.train`` (B4)."""

from __future__ import annotations

import json
import logging
import numbers
import os
import re
import socket
import struct
import time
import warnings
from pathlib import Path
from typing import Any

import google_crc32c
from ignite.engine import Engine, Events
from tensorboardX import FileWriter, SummaryWriter
from tensorboardX.proto.event_pb2 import Event

from ice_ignite.engine.events import StepEvents
from ice_ignite.engine.roles import ContextView, TaskView, name_of, running_graph

__all__ = [
    "NullWriter",
    "BoardLogger",
    "BoardWriter",
    "EVENTS_PREFIX",
    "METRICS_NAME",
    "board_files",
    "rewind_board",
    "write_last_metrics",
]

logger = logging.getLogger("ice_ignite")

#: how TensorBoard event files are named
EVENTS_PREFIX = "events.out.tfevents."
#: the run directory's file of last metric values (``write_last_metrics``)
METRICS_NAME = "metrics.json"

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


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of an event record (TFRecord framing), as tensorboardX's ``masked_crc32c``:
    computed by google-crc32c in C, where tensorboardX's pure-Python loop was over half of the cost
    of logging a scalar."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _Events:
    """An event file written in the caller's thread (tensorboardX writes from a thread of its own,
    which dies on a failed write, after which its queue fills and every later ``add_scalar``
    blocks for ever). A failed write (a full disk, the file-size limit, no memory) is a warning
    naming the file, once; the board then stops and training goes on. Events are buffered and
    flushed every ``flush_secs`` and by ``flush()`` (with ``fsync``: on disk)."""

    def __init__(self, logdir: str, flush_secs: float = 10.0):
        self._logdir = logdir
        self.flush_secs = flush_secs
        # the second and the nanoseconds: files of one run directory sort in the order written
        self.path = os.path.join(
            logdir, f"{EVENTS_PREFIX}{int(time.time()):010d}.{socket.gethostname()}.{time.time_ns()}"
        )
        self._file: Any = None
        self._last_flush = time.monotonic()
        try:
            os.makedirs(logdir, exist_ok=True)
            self._file = open(self.path, "xb")
        except (OSError, MemoryError) as e:
            self._fail(e)
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def get_logdir(self) -> str:
        return self._logdir

    def add_event(self, event: Any) -> None:
        if self._file is None:
            return
        try:
            data = event.SerializeToString()
            header = struct.pack("Q", len(data))
            self._file.write(
                header + struct.pack("I", masked_crc32c(header)) + data + struct.pack("I", masked_crc32c(data))
            )
            if time.monotonic() - self._last_flush > self.flush_secs:
                self._file.flush()
                self._last_flush = time.monotonic()
        except (OSError, MemoryError) as e:
            self._fail(e)

    def flush(self) -> None:
        """Everything added so far on disk (flushed and ``fsync``-ed)."""
        if self._file is None:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._last_flush = time.monotonic()
        except (OSError, MemoryError) as e:
            self._fail(e)

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def reopen(self) -> None:
        return None

    def _fail(self, error: BaseException) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except (OSError, MemoryError):
                pass  # the buffered tail fails again: it is lost with the board's later events
        message = (
            f"the board's event file {self.path!r} cannot be written ({type(error).__name__}: {error}); "
            "TensorBoard logging stops for the rest of this run and training goes on. Free disk space (or "
            "raise the file-size or memory limit) and resume from a checkpoint to log again"
        )
        logger.warning("%s", message)
        warnings.warn(message, stacklevel=3)


class _FileWriter(FileWriter):
    """tensorboardX's FileWriter over ``_Events``."""

    def __init__(self, logdir: str):  # not FileWriter.__init__, which starts the writer thread this replaces
        self.event_writer = _Events(logdir)
        self._default_metadata: dict[str, object] = {}  # FileWriter's own field, which its add_event reads


class BoardWriter(SummaryWriter):
    """The run's board: tensorboardX's ``SummaryWriter`` (every ``add_*`` method), writing in the
    caller's thread: ``flush()`` puts everything logged so far on disk, and a failing disk is a
    warning, never a hang. ``path`` is its event file."""

    # SummaryWriter's own fields (tensorboardX is untyped), set by _get_file_writer
    file_writer: _FileWriter | None
    all_writers: dict[str, _FileWriter] | None

    def _get_file_writer(self) -> _FileWriter:  # tensorboardX has no public way to choose its event writer
        if self.all_writers is None or self.file_writer is None:
            self.file_writer = _FileWriter(self.logdir)
            self.all_writers = {self.file_writer.get_logdir(): self.file_writer}
        return self.file_writer

    @property
    def path(self) -> str:
        return self._get_file_writer().event_writer.path


def board_files(logdir: str | os.PathLike) -> dict[str, int]:
    """``{name: size}`` of the event files directly in ``logdir``: what a checkpoint records of
    the board."""
    logdir = Path(logdir)
    if not logdir.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in logdir.iterdir() if p.name.startswith(EVENTS_PREFIX) and p.is_file()}


def rewind_board(logdir: str | os.PathLike, record: dict[str, int]) -> list[str]:
    """Put the board of ``logdir`` back where a checkpoint recorded it (``board_files`` then):
    event files cut back to their recorded sizes, event files written after the checkpoint
    removed. So a resumed run logs what followed the checkpoint once, and nothing logged before
    it is lost. Returns what it changed; a recorded file that is gone or shorter is a warning."""
    logdir = Path(logdir)
    changed = []
    for name, size in board_files(logdir).items():
        file = logdir / name
        try:
            if name not in record:
                file.unlink()
                changed.append(f"removed {name}")
            elif size > record[name]:
                os.truncate(file, record[name])
                changed.append(f"cut {name} back to {record[name]} bytes")
        except OSError as e:
            warnings.warn(
                f"cannot rewind the board's event file {str(file)!r} to the checkpoint ({e}): TensorBoard "
                "may show the steps after the checkpoint twice",
                stacklevel=4,
            )
    present = board_files(logdir)
    lost = [name for name, size in record.items() if present.get(name, -1) < size]
    if lost:
        warnings.warn(
            f"the board's event files {', '.join(lost)} in {str(logdir)!r} are gone or shorter than when the "
            "checkpoint was taken: TensorBoard lacks what they held",
            stacklevel=4,
        )
    return changed


def write_last_metrics(run_dir: Path, metrics: dict[str, float], step: int) -> None:
    """Write ``metrics.json`` into ``run_dir``: the last epoch value of every metric logged since
    the run (re)started, by board tag, and ``steps.train`` then (what ``python -m ice_ignite show``
    and a sweep's summary read). Written whole and renamed: a reader never sees half of it."""
    path = run_dir / METRICS_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps({"steps.train": step, "metrics": metrics}, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:  # the board's rule: a failed write is a warning, training goes on
        logger.warning("cannot write %s: %s", path, e)


def _scalars(prefix: str, value: Any) -> dict[str, float]:
    """Numbers (and dicts of numbers) as ``{tag: float}``; other values are not scalars."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return {prefix: float(value)}
    if isinstance(value, dict):
        out: dict[str, float] = {}
        for key, sub in value.items():
            out.update(_scalars(f"{prefix}/{key}", sub))
        return out
    return {}


class BoardLogger:
    """Attached to each task engine of a run on global rank 0 (see ``HyperGraph.run``).

    * every ``log_every`` optimizer steps of a train task (its own steps, ``engine.state.optim_step``,
      as ``Events.ITERATION_COMPLETED(every=N)`` counts a trainer's own iterations; the x axis is the
      run's global step): each LossNode's value and aux values
      (``<task tags>/<loss>/step``), each optimizer's learning rate (``lr/<node>``, with the
      pattern after it when the node has several optimizers) and
      the grad scale (``grad_scale``); the only host reads it adds are these, every N steps;
    * at every epoch end: everything in ``engine.state.metrics`` (``<task tags>/<name>``).

    The last epoch values become the metrics of ``add_hparams`` at the end of the run, and are
    kept in ``<run dir>/metrics.json`` at every epoch end.
    """

    def __init__(self, context: ContextView, log_every: int):
        self.context = context  # the graph's RunContext: counters, board, precision
        self.log_every = log_every
        self.final: dict[str, float] = {}

    def attach(self, task: TaskView) -> None:
        """Attach to a starting task's engine (inside its ``internal()`` block)."""
        engine = task.engine
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch, task)
        if task.train and self.log_every:
            engine.add_event_handler(StepEvents.OPTIM_STEP_COMPLETED, self._step, task)

    def _step(self, engine: Engine, task: TaskView) -> None:
        # the task's own steps decide: with tasks taking turns, the global count would skip a task
        if engine.state.optim_step % self.log_every:  # type: ignore[attr-defined]  # ignite's register_events
            return
        ctx = self.context
        step = ctx.counters.steps.train + 1  # this optimizer step, counted at ITERATION_COMPLETED
        board, prefix, graph = ctx.board, ",".join(task.tags), running_graph(task)
        for loss in graph.loss_nodes:
            board.add_scalar(f"{prefix}/{loss.name}/step", graph.cache.value(name_of(loss)).item(), step)
            for key, value in loss.aux.items():
                board.add_scalar(f"{prefix}/{loss.name}/{key}/step", value.item(), step)
        for module in graph.module_nodes:
            rates = module.learning_rates()
            for key, lrs in rates.items():
                tag = f"lr/{module.name}" + (f"/{_TAG_CHARS.sub('_', key)}" if len(rates) > 1 else "")
                for i, lr in enumerate(lrs):
                    board.add_scalar(tag + (f"/{i}" if len(lrs) > 1 else ""), lr, step)
        scaler = ctx.precision.grad_scaler
        if scaler is not None:
            board.add_scalar("grad_scale", scaler.get_scale(), step)

    def _epoch(self, engine: Engine, task: TaskView) -> None:
        ctx = self.context
        step = ctx.counters.steps.train
        prefix = ",".join(task.tags)
        scalars: dict[str, float] = {}  # a dict metric is in state.metrics whole and as name/key: one tag each
        for name, value in engine.state.metrics.items():
            scalars.update(_scalars(f"{prefix}/{name}", value))
        for tag, number in scalars.items():
            ctx.board.add_scalar(tag, number, step)
        self.final.update(scalars)
        if ctx.run_dir is not None:
            write_last_metrics(Path(ctx.run_dir), self.final, step)

    def write_hparams(self, hparams: dict) -> None:
        """Record ``hparams`` with the last epoch values of the run (TensorBoard's HParams tab)."""
        clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
        self.context.board.add_hparams(clean, dict(self.final))
