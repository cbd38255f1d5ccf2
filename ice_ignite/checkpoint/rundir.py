"""The run directory ``out_dir/run_id/`` with ``ckpts/``, ``logs/`` and ``src/`` (B8), and the
lock that gives it to one run at a time."""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

__all__ = [
    "RunDir",
    "RunLock",
    "prepare_run_dir",
    "check_run_id",
    "check_run_path",
    "CKPT_GLOB",
    "BEST_GLOB",
    "DEFAULT_OUT_DIR",
    "LOCK_NAME",
]

CKPT_GLOB = "ckpt-*"  # files (.pt) and sharded directories (.dcp)
BEST_GLOB = "best-*"  # the best checkpoints of MetricNodes: whole checkpoints too
DEFAULT_OUT_DIR = "runs"
LOCK_NAME = "run.lock"
NAME_MAX = 255  # bytes in one file name on Linux and macOS file systems
PATH_MAX = 4096  # bytes in a path given to the system on Linux
#: torchelastic names the workers' log directory ``logs/workers/<run_id>_<8 random characters>``
WORKER_LOG_SUFFIX = 9
#: the longest path below a run directory the run writes: a file name of NAME_MAX bytes in ``ckpts/``
#: (best checkpoints carry a node uid) or the workers' logs, ``logs/workers/<run id>_.../attempt_<n>/<rank>/stderr.log``
RESERVED = len("/ckpts/") + NAME_MAX

logger = logging.getLogger("ice_ignite")

#: descriptors of the run locks this process holds
_HELD: set[int] = set()


def _drop_inherited_locks() -> None:
    # A forked child (a DataLoader worker) shares the holder's flock through its copy of the
    # descriptor: after a SIGKILL of the holder, orphaned workers would keep the run directory
    # locked for seconds. Closing the copy leaves the holder's lock as it is.
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def check_run_id(run_id: object) -> None:
    """Raise unless ``run_id`` is None or a name that can be a directory of ``out_dir``.

    Examples:
        >>> check_run_id("exp-1")
        >>> check_run_id(5)
        Traceback (most recent call last):
        ...
        TypeError: run_id must be a str (the run directory's name), got int 5; pass run_id='5'
    """
    if run_id is None:
        return
    if not isinstance(run_id, str):
        raise TypeError(
            f"run_id must be a str (the run directory's name), got {type(run_id).__name__} {run_id!r}; "
            f"pass run_id={str(run_id)!r}"
        )
    if not run_id or "/" in run_id or "\0" in run_id or run_id in (".", ".."):
        raise ValueError(
            f"run_id must be a non-empty name without '/' or NUL characters, and not '.' or '..', "
            f"got {run_id!r}; pass a plain name such as 'exp1'"
        )
    try:
        size = len(os.fsencode(run_id))
    except UnicodeEncodeError as e:
        raise ValueError(
            f"run_id {run_id!r} cannot be a file name here: its character {run_id[e.start]!r} (position "
            f"{e.start}) is not encodable in the file system encoding {sys.getfilesystemencoding()!r}; "
            "pass a run_id of encodable characters"
        ) from None
    if size > NAME_MAX:
        raise ValueError(
            f"run_id {run_id[:40]!r}... is {size} bytes long; a directory name has at most {NAME_MAX} "
            "bytes: pass a shorter run_id"
        )
    if size > NAME_MAX - WORKER_LOG_SUFFIX:
        raise ValueError(
            f"run_id {run_id[:40]!r}... is {size} bytes long; the workers' log directory "
            f"logs/workers/<run_id>_XXXXXXXX of a run with several processes (a resume with more "
            f"included) would be longer than a file name may be ({NAME_MAX} bytes): pass a shorter "
            f"run_id, at most {NAME_MAX - WORKER_LOG_SUFFIX} bytes"
        )


def check_run_path(out_dir: str | os.PathLike, run_id: str | None) -> None:
    """Raise unless the run directory ``out_dir/run_id`` can hold what a run writes: its path
    encodable in the file system encoding, and short enough that the longest path below it (a file
    name of 255 bytes in ``ckpts/``) stays within the system's limit on a path (4096 bytes on
    Linux). Checked when ``run`` starts, not when a write fails in the middle of training.

    Raises:
        ValueError: naming ``out_dir`` (or ``run_id``) and saying what to pass instead.
    """
    text = os.fspath(out_dir)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    try:
        os.fsencode(text)
    except UnicodeEncodeError as e:
        raise ValueError(
            f"out_dir {text!r} cannot be a path here: its character {text[e.start]!r} (position "
            f"{e.start}) is not encodable in the file system encoding {sys.getfilesystemencoding()!r}; "
            "pass an out_dir of encodable characters"
        ) from None
    root = os.path.join(os.path.abspath(text), run_id if run_id is not None else "YYYYmmdd-HHMMSS-NN")
    size = len(os.fsencode(root))
    if size + RESERVED >= PATH_MAX:
        raise ValueError(
            f"the run directory {root[:60]!r}... is {size} bytes long: the files a run writes below it "
            f"(up to {RESERVED} bytes more, a checkpoint name in ckpts/) would pass the system's limit of "
            f"{PATH_MAX} bytes on a path, and the run would fail after training started. Pass a shorter "
            f"out_dir (or run_id): at most {PATH_MAX - RESERVED - 1} bytes for both, as an absolute path"
        )


class RunLock:
    """An exclusive OS lock (``fcntl.flock``) on ``<run dir>/run.lock`` for the life of a run, so
    that two runs never share a run directory. The kernel releases it when its holder exits,
    however it exits (an exception, SIGKILL, a crash), so it is never stale; processes forked from
    the holder (DataLoader workers) close their copy at the fork, so orphans do not keep it. The
    file records the holder (host, pid, start time) for the error that another run gets.

    Examples:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> lock = RunLock(d / "run.lock")
        >>> lock.acquire()
        >>> RunLock(d / "run.lock").acquire()
        Traceback (most recent call last):
        ...
        RuntimeError: the run directory ... is in use by another run (host ..., pid ..., started ...); ...
        >>> lock.release()
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self._pid = 0

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise RuntimeError naming the process that holds it."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock; run directories are not locked there
            logger.warning("no fcntl on this platform: run directory %s is not locked", self.path.parent)
            return
        # close-on-exec: processes the run starts do not keep the lock after it ends
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 1024, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise RuntimeError(
                f"the run directory {str(self.path.parent)!r} is in use by another run "
                f"({holder or 'a process that has not recorded itself yet'}); wait for that run to end (its lock "
                f"{str(self.path)!r} is released when its process exits, even after a crash), or pass another "
                "run_id"
            ) from None
        except OSError as e:  # a file system without locks (some network mounts): go on unlocked
            os.close(fd)
            logger.warning(
                "cannot lock the run directory %s (%s): another run of it would not be refused", self.path.parent, e
            )
            return
        except BaseException:
            os.close(fd)
            raise
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, started {started}\n".encode(), 0)
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(fd)

    def release(self) -> None:
        """Release the lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is None or self._pid != os.getpid():  # a forked child's copy: closed at the fork
            return
        _HELD.discard(fd)
        import fcntl

        try:
            os.ftruncate(fd, 0)  # the file no longer names a holder
        except OSError:
            pass
        # LOCK_UN releases the lock even where forked workers hold copies of the descriptor
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class RunDir:
    """Paths of one run's directory, and its lock while a run holds it."""

    def __init__(self, root: Path):
        self.root = root
        self.ckpts = root / "ckpts"
        self.logs = root / "logs"
        self.src = root / "src"
        self.lock = RunLock(root / LOCK_NAME)
        self._identity: tuple[int, int] | None = None

    @property
    def run_id(self) -> str:
        return self.root.name

    def create(self) -> None:
        """Make the directory and its ``ckpts/``, ``logs/`` and ``src/`` (kept if they exist), and
        check that each can be written: a run finds out now, not at its first checkpoint.

        Raises:
            PermissionError: one of them is not a directory or cannot be written.
        """
        for d in (self.root, self.ckpts, self.logs, self.src):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise PermissionError(
                    f"cannot create the run directory's {str(d)!r}: {e}; remove what is in its way, "
                    "or pass another out_dir / run_id"
                ) from e
        for d in (self.ckpts, self.logs, self.src):
            try:
                with tempfile.TemporaryFile(dir=d, prefix=".write-probe-"):
                    pass
            except OSError as e:
                raise PermissionError(
                    f"the run directory's {str(d)!r} cannot be written: {e}; make it writable, or "
                    "pass another out_dir / run_id"
                ) from e
        st = os.stat(self.root)
        self._identity = (st.st_dev, st.st_ino)

    def check_present(self) -> None:
        """Raise if the run directory (or its ``ckpts/`` or ``logs/``) was deleted or replaced
        since ``create``: the run's logs and checkpoints would be lost without a word.

        Raises:
            FileNotFoundError: naming the directory.
        """
        if self._identity is None:
            return
        try:
            st = os.stat(self.root)
            present = (st.st_dev, st.st_ino) == self._identity and self.ckpts.is_dir() and self.logs.is_dir()
        except OSError:
            present = False
        if not present:
            raise FileNotFoundError(
                f"the run directory {str(self.root)!r} was deleted or replaced during the run: its logs and "
                "checkpoints are gone. Keep a run directory until its run ends; to go on, start the run again "
                "(resume_from= a checkpoint you still have)"
            )

    def has_checkpoints(self) -> bool:
        """Whether ``ckpts/`` holds checkpoints, periodic or best (files or directories)."""
        return self.ckpts.is_dir() and any(any(self.ckpts.glob(pattern)) for pattern in (CKPT_GLOB, BEST_GLOB))

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"


def _fresh_root(out_dir: Path) -> Path:
    """A new timestamped directory in ``out_dir``, created here: two runs started in the same
    second get different ones."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = stamp, 1
    while True:
        try:
            (out_dir / candidate).mkdir()
            return out_dir / candidate
        except FileExistsError:
            n += 1
            candidate = f"{stamp}-{n}"


def prepare_run_dir(
    out_dir: str | os.PathLike | None,
    run_id: str | None,
    resume_from: object,
    lock: bool = True,
    held_by_launcher: str | None = None,
) -> RunDir:
    """Create (or reopen) the run directory and, with ``lock``, take its lock (kept until
    ``rundir.lock.release()``), enforcing that a directory holding checkpoints is only reused to
    resume it. ``held_by_launcher`` is the directory whose lock the process that started this
    one holds for it (not taken again).

    Raises:
        RuntimeError: another run holds the directory's lock.
        FileExistsError: the run directory holds checkpoints and ``resume_from`` is None.
        NotADirectoryError / PermissionError: ``out_dir`` is a file or not writable.
    """
    if out_dir is None:
        out_dir = DEFAULT_OUT_DIR
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__} {out_dir!r}")
    check_run_id(run_id)
    check_run_path(out_dir, run_id)
    base = Path(out_dir)
    if base.exists() and not base.is_dir():
        raise NotADirectoryError(f"out_dir {str(base)!r} is a file; pass a directory (it is created if missing)")
    check_run_id(run_id)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"cannot create out_dir {str(base)!r}: {e}; pass a writable out_dir") from e
    if not os.access(base, os.W_OK | os.X_OK):
        raise PermissionError(f"out_dir {str(base)!r} is not writable; pass a writable out_dir")
    run = RunDir(base / run_id if run_id is not None else _fresh_root(base))
    if run.root.exists() and not run.root.is_dir():
        raise NotADirectoryError(f"run directory {str(run.root)!r} is a file; pass another run_id")
    run.root.mkdir(exist_ok=True)
    if lock and str(run.root.resolve()) != held_by_launcher:
        run.lock.acquire()  # before reading the directory: never resume another live run's checkpoint
    try:
        if run.has_checkpoints() and resume_from is None:
            raise FileExistsError(
                f"run directory {str(run.root)!r} holds checkpoints; pass resume_from='auto' to continue that run "
                "(its ckpt-* and best-* checkpoints are never overwritten nor pruned by a new run), "
                "or another run_id to start a new one"
            )
        run.create()
    except BaseException:
        run.lock.release()
        raise
    return run
