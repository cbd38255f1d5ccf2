"""Python logging of a run: ``logs/run.log`` (``run.rank<r>.log`` for other ranks) and concise
console output from global rank 0 that does not break progress bars."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO, cast

from tqdm import tqdm

__all__ = ["run_logging", "TqdmHandler"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TqdmHandler(logging.Handler):
    """Writes records with ``tqdm.write``, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _TqdmStdout:
    """``sys.stdout`` while bars are shown: prints go above the bars."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        if text.rstrip():
            tqdm.write(text.rstrip("\n"), file=self.stream)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class _RunLogFile(logging.FileHandler):
    """``logs/run.log``: a write that fails (a full disk, the file-size limit) is one warning naming
    the file, after which the file is left alone; training goes on and the console still logs."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not self.failed:
            self.failed = True
            warnings.warn(
                f"the run's log file {self.baseFilename!r} cannot be written ({type(error).__name__}: "
                f"{error}); it gets no more records in this run, training goes on. Free disk space (or raise "
                "the file-size limit)",
                stacklevel=2,
            )

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def close(self) -> None:
        try:
            super().close()
        except (OSError, MemoryError) as e:  # the buffered tail fails again
            if not self.failed:
                self.failed = True
                warnings.warn(
                    f"the run's log file {self.baseFilename!r} cannot be written ({type(e).__name__}: {e}); "
                    "its last records are lost",
                    stacklevel=2,
                )


@contextlib.contextmanager
def run_logging(log_dir: Path, rank: int, bars: bool) -> Iterator[None]:
    """Log ``ice_ignite`` and ``ignite`` records of this rank to a file in ``log_dir``; on rank 0
    also to the console (unless the application configured logging itself); with ``bars``,
    route ``print`` above the progress bars."""
    name = "run.log" if rank == 0 else f"run.rank{rank}.log"
    file_handler = _RunLogFile(log_dir / name, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    file_handler.setLevel(logging.INFO)
    ours, theirs = logging.getLogger("ice_ignite"), logging.getLogger("ignite")
    console = None
    if rank == 0 and not logging.getLogger().handlers:
        console = TqdmHandler()
        console.setFormatter(logging.Formatter("ice_ignite: %(message)s"))
        console.setLevel(logging.INFO)
        ours.addHandler(console)
    previous = ours.level
    if ours.level == logging.NOTSET or ours.level > logging.INFO:
        ours.setLevel(logging.INFO)
    ours.addHandler(file_handler)
    theirs.addHandler(file_handler)
    redirect = contextlib.redirect_stdout(cast(TextIO, _TqdmStdout(sys.stdout))) if bars else contextlib.nullcontext()
    try:
        with redirect:
            yield
    finally:
        ours.removeHandler(file_handler)
        theirs.removeHandler(file_handler)
        if console is not None:
            ours.removeHandler(console)
        ours.setLevel(previous)
        file_handler.close()
