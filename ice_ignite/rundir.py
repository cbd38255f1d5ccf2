"""The run directory ``out_dir/run_id/`` with ``ckpts/``, ``logs/`` and ``src/`` (B8)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

__all__ = ["RunDir", "prepare_run_dir", "CKPT_GLOB", "DEFAULT_OUT_DIR"]

CKPT_GLOB = "ckpt-*.pt"
DEFAULT_OUT_DIR = "runs"


class RunDir:
    """Paths of one run's directory."""

    def __init__(self, root: Path):
        self.root = root
        self.ckpts = root / "ckpts"
        self.logs = root / "logs"
        self.src = root / "src"

    @property
    def run_id(self) -> str:
        return self.root.name

    def create(self) -> None:
        """Make the directory and its ``ckpts/``, ``logs/`` and ``src/`` (kept if they exist)."""
        for d in (self.root, self.ckpts, self.logs, self.src):
            d.mkdir(parents=True, exist_ok=True)

    def has_checkpoints(self) -> bool:
        return self.ckpts.is_dir() and any(self.ckpts.glob(CKPT_GLOB))

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"


def _fresh_id(out_dir: Path) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = stamp, 1
    while (out_dir / candidate).exists():
        n += 1
        candidate = f"{stamp}-{n}"
    return candidate


def prepare_run_dir(out_dir: "str | os.PathLike | None", run_id: str | None, resume_from: object) -> RunDir:
    """Create (or reopen) the run directory, enforcing that a directory holding checkpoints is
    only reused to resume it.

    Raises:
        FileExistsError: the run directory holds checkpoints and ``resume_from`` is None.
        NotADirectoryError / PermissionError: ``out_dir`` is a file or not writable.
    """
    if out_dir is None:
        out_dir = DEFAULT_OUT_DIR
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__} {out_dir!r}")
    base = Path(out_dir)
    if base.exists() and not base.is_dir():
        raise NotADirectoryError(f"out_dir {str(base)!r} is a file; pass a directory (it is created if missing)")
    if run_id is not None:
        if not isinstance(run_id, str) or not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"run_id must be a non-empty name without '/', got {run_id!r}")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create out_dir {str(base)!r}: {e}; pass a writable out_dir") from e
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"out_dir {str(base)!r} is not writable; pass a writable out_dir")
    run = RunDir(base / (run_id if run_id is not None else _fresh_id(base)))
    if run.root.exists() and not run.root.is_dir():
        raise NotADirectoryError(f"run directory {str(run.root)!r} is a file; pass another run_id")
    if run.has_checkpoints() and resume_from is None:
        raise FileExistsError(
            f"run directory {str(run.root)!r} holds checkpoints; pass resume_from='auto' to continue that run, "
            "or another run_id to start a new one"
        )
    run.create()
    return run
