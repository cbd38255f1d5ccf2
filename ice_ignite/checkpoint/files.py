"""Checkpoints: names with a sequence number, atomic writes, safe reads (B8).

A checkpoint is a file (``ckpt-000123-E3S117.pt``, one ``torch.save`` written by global rank 0)
or, when the graph holds FSDP-sharded ModuleNodes, a directory (``ckpt-000123-E3S117.dcp``):
every process writes its own pieces of those nodes' tensors through ``torch.distributed.checkpoint``
(DCP), and rank 0 writes the rest to ``state.pt``. A directory is written under a partial name and
renamed into place once every process finished. ``read_checkpoint`` gives both kinds in one form,
full tensors, so that everything that loads a checkpoint takes either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, unquote

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.filesystem import _StorageInfo  # DCP's storage record: no public name
from torch.distributed.tensor import DTensor
from torch.utils.serialization import config as serialization_config

from ice_ignite.checkpoint.transfer import LoadSpec
from ice_ignite.distributed import parallel
from ice_ignite.errors import CheckpointError

__all__ = [
    "FORMAT",
    "STATE",
    "checkpoint_filename",
    "best_filename",
    "best_uid",
    "best_files",
    "next_sequence",
    "list_checkpoints",
    "prune_checkpoints",
    "remove_checkpoint",
    "remove_partial_writes",
    "partial_path",
    "publish_directory",
    "write_checkpoint",
    "write_sharded_checkpoint",
    "read_checkpoint",
    "SaveCheckpointTask",
    "LoadCheckpointTask",
    "latest_valid_checkpoint",
    "read_dcp_metadata",
    "dcp_load",
    "nest",
    "load_plain_file",
    "describe",
    "check_loadable",
    "fsync_directory",
    "verify_file",
    "CHECKSUMS",
]

#: the marker every ice_ignite checkpoint carries
FORMAT = "ice_ignite.checkpoint.v1"
#: the file of a checkpoint directory that holds everything but the sharded nodes' tensors
STATE = "state.pt"
#: the file of a checkpoint directory that lists the CRC-32 and size of every other file in it
CHECKSUMS = "CHECKSUMS"
_NAME = re.compile(r"^ckpt-(\d+)-E(\d+)S(\d+)\.(?:pt|dcp)$")
_BEST = re.compile(r"^best-(\d+)-E(\d+)S(\d+)-(.+)=([^=]+)\.(?:pt|dcp)$")
_PARTIAL = re.compile(r"^\..+\.partial$")
#: what a failed DCP save or load raises: torch's ``CheckpointException`` is a BaseException
_DCP_ERRORS = (Exception, dcp.CheckpointException)


def describe(error: BaseException) -> str:
    """``Type: message`` of ``error``, or of the first process's error a DCP exception wraps."""
    if isinstance(error, dcp.CheckpointException) and error.failures:
        error = error.failures[min(error.failures)][0]
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _suffix(sharded: bool) -> str:
    return ".dcp" if sharded else ".pt"


def checkpoint_filename(seq: int, epochs: int, steps: int, sharded: bool = False) -> str:
    """``ckpt-000123-E3S117.pt``: sequence number, train epochs, train steps (``.dcp``: a
    ``sharded`` checkpoint directory)."""
    return f"ckpt-{seq:06d}-E{epochs}S{steps}{_suffix(sharded)}"


def best_filename(seq: int, epochs: int, steps: int, uid: str, value: float, sharded: bool = False) -> str:
    """``best-000124-E3S117-val%2Facc=0.9812.pt``: the best checkpoint of MetricNode ``uid``
    (``val/acc``), percent-encoded (every character but letters, digits, ``_.-~``: ``/`` is
    ``%2F``, ``*`` ``%2A``, ``,`` ``%2C``, ``#`` ``%23``), so that it is one file name and decodes
    to the uid (``.dcp``: ``sharded``).

    Examples:
        >>> best_filename(124, 3, 117, "#dbg,val/acc", 0.98125)
        'best-000124-E3S117-%23dbg%2Cval%2Facc=0.98125.pt'
        >>> best_uid(best_filename(124, 3, 117, "#dbg,val/acc", 0.98125))
        ('#dbg,val/acc', 'acc')
    """
    return f"best-{seq:06d}-E{epochs}S{steps}-{quote(uid, safe='')}={value:.6g}{_suffix(sharded)}"


def best_uid(filename: str) -> tuple[str | None, str] | None:
    """``(uid, node name)`` of a best checkpoint's file name; the uid is None for the names of
    ice_ignite before 0.3 (``best-...-acc=0.98.pt``: the node's name only, no encoded ``/``).
    None if ``filename`` is not a best checkpoint's."""
    m = _BEST.match(filename)
    if m is None:
        return None
    part = m.group(4)
    if "%2F" not in part:  # a node name has no '/': an encoded uid always has one
        return None, part
    uid = unquote(part)
    return uid, uid.rpartition("/")[2]


def best_files(ckpt_dir: Path, node: str, legacy: bool = True) -> list[Path]:
    """The best checkpoints in ``ckpt_dir`` of the MetricNode with uid ``node`` (with ``legacy``,
    also the old files named after its name, which do not say which node of that name wrote
    them), or of every MetricNode named ``node`` (a name: no ``/``)."""
    if not ckpt_dir.is_dir():
        return []
    by_uid = "/" in node
    name = node.rpartition("/")[2]
    found = []
    for p in ckpt_dir.iterdir():
        owner = best_uid(p.name)
        if owner is None:
            continue
        uid, owner_name = owner
        if (uid is not None and (uid == node if by_uid else owner_name == node)) or (
            uid is None and owner_name == name and (legacy or not by_uid)
        ):
            found.append(p)
    return sorted(found)


def next_sequence(ckpt_dir: Path) -> int:
    """One more than the highest sequence number of any checkpoint in ``ckpt_dir``."""
    if not ckpt_dir.is_dir():
        return 0
    seqs = [int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _NAME.match(p.name) or _BEST.match(p.name))]
    return max(seqs) + 1 if seqs else 0


def prune_checkpoints(ckpt_dir: Path, n_saved: int) -> list[Path]:
    """Delete the oldest periodic checkpoints (files and directories) beyond the newest
    ``n_saved``; returns them."""
    old = [path for _, path in list_checkpoints(ckpt_dir)[:-n_saved]]
    for path in old:
        remove_checkpoint(path)
    return old


def partial_path(path: Path) -> Path:
    """Where checkpoint directory ``path`` is written before it is published: ``.NAME.partial``."""
    return path.with_name(f".{path.name}.partial")


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint file, or a checkpoint directory: renamed to its partial name first, so
    that a process killed while deleting leaves nothing that looks like a checkpoint."""
    if not path.is_dir():
        path.unlink(missing_ok=True)
        return
    doomed = partial_path(path)
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_partial_writes(ckpt_dir: Path) -> list[Path]:
    """Delete what the writes of a killed process left behind: temporary files of an atomic file
    write, partial directories (``.NAME.partial``) of a directory checkpoint."""
    if not ckpt_dir.is_dir():
        return []
    stale = [
        p
        for p in ckpt_dir.iterdir()
        if (p.is_file() and p.name.startswith("tmp")) or (p.is_dir() and _PARTIAL.match(p.name))
    ]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def list_checkpoints(ckpt_dir: Path, best: bool = False) -> list[tuple[int, Path]]:
    """``(sequence, path)`` of the periodic checkpoints in ``ckpt_dir`` (files and directories),
    oldest first; with ``best``, the best checkpoints of MetricNodes too."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        m = _NAME.match(path.name) or (_BEST.match(path.name) if best else None)
        if m:
            found.append((int(m.group(1)), path.name.startswith("ckpt-"), path))
    return [(seq, path) for seq, _, path in sorted(found)]


#: what ``torch.load(weights_only=True)`` rebuilds (torch 2.13's allowlist, ``torch/_weights_only_unpickler.py``),
#: besides tensors and containers: checked at save time so that a run never writes what it cannot read
_PLAIN = (
    int,
    float,
    bool,
    complex,
    str,
    bytes,
    bytearray,
    type(None),
    torch.Size,
    torch.dtype,
    torch.device,
    torch.layout,
    torch.qscheme,
)
_CONTAINERS = (dict, OrderedDict, Counter, list, tuple, set)
_TENSORS = (torch.Tensor, torch.nn.Parameter, DTensor)


def check_loadable(state: Any, where: str = "") -> None:
    """Raise unless ``torch.load(weights_only=True)`` can read ``state`` back: tensors, numbers,
    str, bytes, bool, None, ``torch.Size``, dtypes, devices, and dicts (``OrderedDict``,
    ``Counter``), lists, tuples and sets of those, or classes given to
    ``torch.serialization.add_safe_globals``. One walk of the tree.

    Examples:
        >>> check_loadable({"w": torch.ones(2), "steps": [1, 2]})
        >>> check_loadable({"nodes": {"*/net": {"extra": {"table": range(3)}}}})
        Traceback (most recent call last):
        ...
        ice_ignite.errors.CheckpointError: nodes['*/net']['extra']['table'] in the checkpoint is a builtins.range, ...

    Raises:
        CheckpointError: naming the key path and the type of the first value it refuses.
    """
    safe = {g[0] if isinstance(g, tuple) else g for g in torch.serialization.get_safe_globals()}
    stack = [(where, state)]
    while stack:
        path, value = stack.pop()
        kind = type(value)
        if kind in _PLAIN or kind in _TENSORS:
            continue
        if kind in _CONTAINERS:
            if isinstance(value, dict):
                for key, item in value.items():
                    stack.append((f"a key of {path or 'the checkpoint'}", key))
                    stack.append((key if not path and type(key) is str else f"{path}[{key!r}]", item))
            else:
                stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
            continue
        if kind in safe:  # the user allowed it for weights_only loading; what it holds must load too
            stack.extend((f"{path}.{name}", item) for name, item in getattr(value, "__dict__", {}).items())
            continue
        raise CheckpointError(
            f"{path or 'the state'} in the checkpoint is a {kind.__module__}.{kind.__qualname__}, which "
            "torch.load(weights_only=True) refuses: a "
            "checkpoint holding it could not be resumed, so none was written. Return a state_dict of tensors and "
            "plain types (numbers, str, bool, None, and lists, tuples and dicts of them), e.g. torch.from_numpy(a) "
            "for a numpy array, a.item() for a numpy number, list(s) for a frozenset, a dict of its fields for your "
            "own class"
        )


#: bytes written between two starts of the kernel's writeback (see ``_Writeback``)
_CHUNK = 8 << 20


def fsync_directory(directory: str | os.PathLike) -> None:
    """Flush ``directory``'s entries (a file created or renamed in it) to disk, where the system
    lets a directory be opened and synced (not on Windows, nor on file systems that refuse it)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


class _Writeback:
    """The file ``torch.save`` writes a checkpoint through: every ``_CHUNK`` bytes it asks the
    kernel to start writing them to disk (``posix_fadvise(DONTNEED)`` starts the writeback of dirty
    pages without waiting for it), so the ``fsync`` before the checkpoint is published waits for the
    last chunk only instead of the whole file: the disk works while torch serialises."""

    def __init__(self, file: Any):
        self.file = file
        self.fd = file.fileno()
        self.started = 0  # bytes whose writeback was started
        self.written = 0
        self.error: BaseException | None = None  # torch reports a failed write as "unexpected pos": the cause

    def write(self, data: Any) -> int:
        try:
            return self._write(data)
        except BaseException as e:
            self.error = e
            raise

    def _write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), _CHUNK):
            piece = view[start : start + _CHUNK]
            self.file.write(piece)
            self.written += len(piece)
            if self.written - self.started >= _CHUNK and hasattr(os, "posix_fadvise"):
                self.file.flush()
                os.posix_fadvise(self.fd, self.started, self.written - self.started, os.POSIX_FADV_DONTNEED)
                self.started = self.written
        return len(view)

    def flush(self) -> None:
        self.file.flush()


@contextlib.contextmanager
def _with_checksums() -> Iterator[None]:
    """torch.save records a CRC-32 of every record of its zip archive (the default of
    ``torch.utils.serialization.config.save.compute_crc32``): make sure it does for checkpoints."""
    before = serialization_config.save.compute_crc32
    serialization_config.save.compute_crc32 = True
    try:
        yield
    finally:
        serialization_config.save.compute_crc32 = before


def write_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` durably and atomically: ``torch.save`` into a temporary file of
    the same directory (every record of the archive with its CRC-32, verified when it is read), the
    file flushed to disk (``fsync``), renamed into place, and the directory flushed: a crash or a
    power cut leaves either the old file set or the new file whole. Never overwrites.

    Raises:
        CheckpointError: ``path`` exists, or the write failed (nothing is left behind then).
    """
    path = Path(path)
    if path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} exists; save to another path or delete it first")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="tmp", suffix=".pt", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            writer = _Writeback(f)
            try:
                with _with_checksums():
                    torch.save(state, writer)  # type: ignore[arg-type]  # torch writes to any object with write(); its annotation says IO[bytes]
            except RuntimeError as e:
                raise (writer.error if isinstance(writer.error, OSError) else e) from None
            f.flush()
            os.fsync(f.fileno())
        if path.exists():  # written meanwhile by someone else: never overwritten
            raise FileExistsError(errno.EEXIST, "the checkpoint exists", str(path))
        os.replace(tmp, path)
        tmp = None
        fsync_directory(path.parent)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(
            f"writing checkpoint {str(path)!r} failed: {e}; the previous checkpoints are intact"
        ) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def verify_file(file: Path, source: Path) -> None:
    """Check every record of checkpoint file ``file`` (a zip archive, as ``torch.save`` writes)
    against the CRC-32 torch recorded for it when it was written: one flipped byte in a tensor is
    found here, before anything is loaded. Files that are not zip archives, and records written
    without a checksum (``compute_crc32=False``: a CRC of 0), are left to ``torch.load``.

    Raises:
        CheckpointError: naming the file (and ``source``, the checkpoint it belongs to) and the
            record whose bytes do not match.
    """
    where = repr(str(source)) if file == source else f"{str(source)!r} (its {file.name})"
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not an archive (or truncated before its directory): torch.load says what it is
    with archive:
        for info in archive.infolist():
            if info.CRC == 0 or info.compress_type != zipfile.ZIP_STORED:
                continue
            try:
                with archive.open(info) as member:
                    while member.read(_CHUNK):
                        pass
            except zipfile.BadZipFile as e:
                if "CRC" not in str(e):
                    return  # a damaged structure: torch.load's message says more
                raise CheckpointError(
                    f"checkpoint {where} is corrupted: its record {info.filename!r} does not match the CRC-32 "
                    "checksum written with it (its bytes changed on disk since it was saved); resume from another "
                    "checkpoint (resume_from='auto' falls back to the newest one that verifies)"
                ) from None
            except (OSError, EOFError, ValueError):
                return


def _file_checksum(file: Path) -> int:
    crc = 0
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_manifest(directory: Path) -> None:
    """Record the CRC-32 and size of every file of checkpoint directory ``directory`` in its
    ``CHECKSUMS`` (``<crc32 hex> <size> <name>`` lines), with every file and the directory
    flushed to disk."""
    lines = []
    for file in sorted(directory.iterdir()):
        if file.name == CHECKSUMS or not file.is_file():
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        lines.append(f"{_file_checksum(file):08x} {file.stat().st_size} {file.name}\n")
    with open(directory / CHECKSUMS, "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    fsync_directory(directory)


def verify_manifest(directory: Path) -> None:
    """Check every file listed in checkpoint directory ``directory``'s ``CHECKSUMS`` (present,
    same size, same CRC-32). Directories written before checksums existed have none: a warning.

    Raises:
        CheckpointError: naming the directory and the file that is missing or differs.
    """
    manifest = directory / CHECKSUMS
    if not manifest.is_file():
        warnings.warn(
            f"checkpoint directory {str(directory)!r} has no {CHECKSUMS} (written before ice_ignite "
            "recorded checksums): its files are not verified",
            stacklevel=4,
        )
        return
    try:
        entries = [line.split(" ", 2) for line in manifest.read_text(encoding="utf-8").splitlines() if line]
        expected = {name: (int(crc, 16), int(size)) for crc, size, name in entries}
    except ValueError:
        raise CheckpointError(
            f"checkpoint directory {str(directory)!r} is corrupted: its {CHECKSUMS} is not a list of "
            "checksums; resume from another checkpoint (resume_from='auto' falls back to the newest "
            "one that verifies)"
        ) from None
    for name, (crc, size) in expected.items():
        file = directory / name
        problem = None
        if name != Path(name).name or not file.is_file() or file.is_symlink():
            problem = "is missing"
        elif file.stat().st_size != size:
            problem = f"has {file.stat().st_size} bytes, not the {size} it was written with"
        elif _file_checksum(file) != crc:
            problem = (
                "does not match the CRC-32 checksum written with it (its bytes changed on disk since it was saved)"
            )
        if problem:
            raise CheckpointError(
                f"checkpoint directory {str(directory)!r} is corrupted: its file {name!r} {problem}; "
                "resume from another checkpoint (resume_from='auto' falls back to the newest one that "
                "verifies)"
            )


@contextlib.contextmanager
def quiet_single_process_dcp() -> Iterator[None]:
    """DCP warns that it assumes a single process when there is no process group: that is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        warnings.filterwarnings("ignore", message="torch.distributed is unavailable or uninitialized")
        yield


def publish_directory(path: str | os.PathLike, write: Callable[[Path], None], what: str = "checkpoint") -> Path:
    """Write a directory with every process and publish it atomically: ``write(partial)`` runs on
    every process (it may hold collectives) into ``.NAME.partial``, and global rank 0 renames that
    to ``path`` once every process's write succeeded. Call it on every process. Never overwrites.

    Raises:
        CheckpointError: ``path`` exists, or a process's write failed (nothing is published then,
            and the partial directory is removed).
    """
    final = Path(path)
    if final.exists():
        raise CheckpointError(f"{what} {str(final)!r} exists already; give a new directory or delete it first")
    partial = partial_path(final)
    first = parallel.rank() == 0

    def prepare(partial: Path) -> None:
        if first:
            shutil.rmtree(partial, ignore_errors=True)  # a save that died before publishing
            partial.mkdir(parents=True)

    def publish(partial: Path) -> None:
        if first:  # every file checksummed and flushed, then the rename, then the rename flushed
            write_manifest(partial)
            os.replace(partial, final)
            fsync_directory(final.parent)

    for step in (prepare, write, publish):  # every process agrees on each step's outcome before the next
        error: BaseException | None = None
        try:
            step(partial)
        except _DCP_ERRORS as e:
            error = e
        if parallel.any_rank(error is not None):
            if first:
                shutil.rmtree(partial, ignore_errors=True)
            cause = describe(error) if error is not None else "another process failed"
            raise CheckpointError(
                f"writing {what} {str(final)!r} failed ({cause}); the previous checkpoints are intact"
            ) from error
    return final


def _split(tree: Any) -> tuple[Any, Any]:
    """``tree`` (nested dicts, lists and tuples) with every tensor left as None, and its tensors
    alone, in nested dicts keyed by the ``str`` of each key or index (as DCP wants them)."""
    if isinstance(tree, torch.Tensor):
        return None, tree
    if isinstance(tree, dict):
        pairs = {k: _split(v) for k, v in tree.items()}
        skeleton: Any = type(tree)((k, s) for k, (s, _) in pairs.items())  # an OrderedDict may carry _metadata
        if hasattr(tree, "_metadata"):  # a module's state_dict: its version metadata
            skeleton._metadata = tree._metadata
        return skeleton, {str(k): t for k, (_, t) in pairs.items() if _holds_tensors(t)}
    if isinstance(tree, (list, tuple)):
        parts = [_split(v) for v in tree]
        return type(tree)(s for s, _ in parts), {str(i): t for i, (_, t) in enumerate(parts) if _holds_tensors(t)}
    return tree, None


def _holds_tensors(part: Any) -> bool:
    return isinstance(part, torch.Tensor) or bool(part)


def _merge(skeleton: Any, tensors: Any) -> Any:
    """``_split`` undone: ``skeleton`` with the tensors put back where they were."""
    if isinstance(tensors, torch.Tensor):
        return tensors
    if not tensors:
        return skeleton
    if isinstance(skeleton, dict):
        out: Any = type(skeleton)((k, _merge(v, tensors.get(str(k)))) for k, v in skeleton.items())
        if hasattr(skeleton, "_metadata"):
            out._metadata = skeleton._metadata
        return out
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(_merge(v, tensors.get(str(i))) for i, v in enumerate(skeleton))
    return skeleton


def write_sharded_checkpoint(state: dict, uids: Iterable[str], path: str | os.PathLike) -> Path:
    """Write checkpoint ``state`` as a directory, published atomically: the tensors of the node
    states ``uids`` through ``torch.distributed.checkpoint`` (every process writes its own pieces
    of sharded tensors, DTensors as they are: nothing is gathered), everything else to
    ``state.pt`` (global rank 0; ``weights_only``-safe), which lists the nodes under
    ``"sharded_nodes"``. Call it on every process, each with its own ``state``.

    Raises:
        CheckpointError: ``path`` exists, or a write failed (the previous checkpoints are intact).
    """
    uids = list(uids)
    skeletons, tensors = {}, {}
    for uid in uids:
        skeletons[uid], tensors[uid] = _split(state["nodes"][uid])
    rest = {**state, "nodes": {**state["nodes"], **skeletons}, "sharded_nodes": uids}

    def write(partial: Path) -> None:
        with quiet_single_process_dcp():  # DCP first: a collective that reports a failure to every process
            dcp.save(
                {uid: t for uid, t in tensors.items() if _holds_tensors(t)},
                checkpoint_id=partial,
                no_dist=parallel.world_size() == 1,
            )
        if parallel.rank() == 0:
            torch.save(rest, partial / STATE)

    return publish_directory(path, write)


class _MetadataUnpickler(pickle.Unpickler):
    """Reads DCP's ``.metadata`` (a pickle) and refuses every global but the classes of DCP's
    metadata, ``torch.Size``, dtypes, layouts and paths: DCP itself would ``pickle.load`` it."""

    _ALLOWED = {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("collections", "OrderedDict"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("pathlib", "PosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "PureWindowsPath"),
        ("pathlib", "Path"),
    }

    def find_class(self, module: str, name: str) -> Any:
        found = getattr(dcp_metadata, name, None)
        if module == dcp_metadata.__name__ and isinstance(found, type) and found.__module__ == module:
            return found  # the classes metadata.py defines, not what it imports
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP metadata")


#: the files of a DCP directory that ``torch.distributed.checkpoint`` unpickles: the global
#: ``.metadata`` and, when that one fails to load, a process's own ``__<rank>.metadata``
_DCP_METADATA = re.compile(r"^(?:__\d+)?\.metadata$")


class _Invalid(Exception):
    """A field of DCP metadata that DCP did not write (the message says which)."""


def _size(value: Any, what: str) -> torch.Size:
    if type(value) is not torch.Size or any(type(d) is not int or d < 0 for d in value):
        raise _Invalid(f"{what} is {value!r}, not a torch.Size of sizes >= 0")
    return value


def _count(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise _Invalid(f"{what} is {value!r}, not an int >= 0")
    return value


def _volume(sizes: Iterable[int]) -> int:
    out = 1
    for d in sizes:
        out *= d
    return out


def _check_tensor_entry(fqn: str, entry: Any) -> None:
    """Properties, size and chunks of one tensor: the chunks lie inside the tensor, do not
    overlap and cover it (else part of it would keep the uninitialised memory it is read into)."""
    props = entry.properties
    if type(props) is not dcp_metadata.TensorProperties or type(props.dtype) is not torch.dtype:
        raise _Invalid(f"tensor {fqn!r} has properties {props!r}, not TensorProperties with a dtype")
    if (
        type(props.layout) is not torch.layout
        or type(props.requires_grad) is not bool
        or type(props.pin_memory) is not bool
        or type(props.memory_format) is not torch.memory_format
    ):
        raise _Invalid(f"tensor {fqn!r} has properties {props!r} of the wrong types")
    size = _size(entry.size, f"the size of tensor {fqn!r}")
    if type(entry.chunks) is not list:
        raise _Invalid(f"the chunks of tensor {fqn!r} are a {type(entry.chunks).__name__}, not a list")
    boxes = []
    for i, chunk in enumerate(entry.chunks):
        if type(chunk) is not dcp_metadata.ChunkStorageMetadata:
            raise _Invalid(f"chunk {i} of tensor {fqn!r} is a {type(chunk).__name__}")
        offsets = _size(chunk.offsets, f"the offsets of chunk {i} of tensor {fqn!r}")
        sizes = _size(chunk.sizes, f"the sizes of chunk {i} of tensor {fqn!r}")
        if (
            len(offsets) != len(size)
            or len(sizes) != len(size)
            or any(o + n > d for o, n, d in zip(offsets, sizes, size))
        ):
            raise _Invalid(
                f"chunk {i} of tensor {fqn!r} (offsets {list(offsets)}, sizes {list(sizes)}) does not lie "
                f"inside its size {list(size)}"
            )
        boxes.append((offsets, sizes))
    if sum(_volume(n) for _, n in boxes) != _volume(size):
        raise _Invalid(f"the chunks of tensor {fqn!r} do not cover its size {list(size)} exactly")
    for i, (a_off, a_n) in enumerate(boxes):  # chunks per tensor: one per process that wrote it
        for b_off, b_n in boxes[:i]:
            if all(max(a, b) < min(a + m, b + n) for a, m, b, n in zip(a_off, a_n, b_off, b_n)) and _volume(a_n):
                raise _Invalid(f"two chunks of tensor {fqn!r} overlap")


def _check_metadata(meta: Any, directory: Path) -> None:
    """Raise ``_Invalid`` unless ``meta`` is DCP metadata as ``dcp.save`` writes it for a
    directory whose files are those of ``directory``: every field of the right type, every chunk
    of every tensor stored in a plain file of the directory within its size, in disjoint byte
    ranges at least as long as the chunk's data (so nothing read from it can allocate more than
    the files hold), and no transform (decompression) of the stored bytes."""
    if type(meta) is not dcp_metadata.Metadata:
        raise _Invalid(f"it holds a {type(meta).__name__}, not DCP Metadata")
    entries, storage, paths = meta.state_dict_metadata, meta.storage_data, meta.planner_data
    if type(entries) is not dict or type(storage) is not dict:
        raise _Invalid("its state_dict_metadata or storage_data is not a dict")
    needed: dict[Any, int] = {}  # storage index -> the least number of bytes it holds
    for fqn, entry in entries.items():
        if type(fqn) is not str:
            raise _Invalid(f"it has the key {fqn!r}, not a str")
        if type(entry) is dcp_metadata.BytesStorageMetadata:
            needed[dcp_metadata.MetadataIndex(fqn)] = 0
            continue
        if type(entry) is not dcp_metadata.TensorStorageMetadata:
            raise _Invalid(f"entry {fqn!r} is a {type(entry).__name__}, not tensor or bytes metadata")
        _check_tensor_entry(fqn, entry)
        for chunk in entry.chunks:
            needed[dcp_metadata.MetadataIndex(fqn, chunk.offsets)] = (
                _volume(chunk.sizes) * entry.properties.dtype.itemsize
            )
    if paths is not None:
        if type(paths) is not dict:
            raise _Invalid(f"its planner_data is a {type(paths).__name__}, not a dict")
        for fqn, keys in paths.items():
            if (
                fqn not in entries
                or type(keys) is not tuple
                or not keys
                or any(type(k) is not str and (type(k) is not int or not 0 <= k < len(entries)) for k in keys)
            ):
                raise _Invalid(f"its planner_data maps {fqn!r} to {keys!r}, not a path of str and int keys of an entry")
    if not isinstance(meta.storage_meta, (dcp_metadata.StorageMeta, type(None))) or not isinstance(
        meta.version, (str, type(None))
    ):
        raise _Invalid(
            f"its storage_meta ({type(meta.storage_meta).__name__}) or version "
            f"({type(meta.version).__name__}) has the wrong type"
        )
    sm = meta.storage_meta
    if sm is not None and (
        type(sm) is not dcp_metadata.StorageMeta
        or not isinstance(sm.checkpoint_id, (str, os.PathLike, type(None)))
        or not all(isinstance(v, (str, type(None))) for v in (sm.save_id, sm.load_id))
        or type(sm.modules) is not list
        or any(type(m) is not str for m in sm.modules)
    ):
        raise _Invalid(f"its storage_meta {sm!r} has fields of the wrong types")
    ranges: dict[str, list[tuple[int, int]]] = {}
    for index, info in storage.items():
        if type(index) is not dcp_metadata.MetadataIndex or index not in needed:
            raise _Invalid(f"its storage_data has the key {index!r}, which is no chunk of its entries")
        if type(info) is not _StorageInfo or type(info.relative_path) is not str:
            raise _Invalid(f"the storage of {index.fqn!r} is {info!r}, not a _StorageInfo with a file name")
        name = info.relative_path
        file = directory / name
        if (
            not name
            or name != Path(name).name
            or name in (".", "..")
            or _DCP_METADATA.match(name)
            or file.is_symlink()
            or not file.is_file()
        ):
            raise _Invalid(f"the storage of {index.fqn!r} names {name!r}, not a shard file of the directory")
        offset, length = (
            _count(info.offset, f"the offset of {index.fqn!r}"),
            _count(info.length, f"the length of {index.fqn!r}"),
        )
        if offset + length > file.stat().st_size:
            raise _Invalid(
                f"the storage of {index.fqn!r} (bytes {offset} to {offset + length}) lies past the end of "
                f"{name!r} ({file.stat().st_size} bytes)"
            )
        if length < needed[index]:
            raise _Invalid(
                f"the storage of {index.fqn!r} holds {length} bytes, less than its {needed[index]} bytes of data"
            )
        if info.transform_descriptors:
            raise _Invalid(
                f"the storage of {index.fqn!r} is transformed ({info.transform_descriptors!r}); "
                "ice_ignite reads untransformed shards only"
            )
        ranges.setdefault(name, []).append((offset, offset + length))
    missing = [index.fqn for index in needed if index not in storage]
    if missing:
        raise _Invalid(f"entries {', '.join(repr(f) for f in missing[:3])} have no storage")
    for name, spans in ranges.items():
        spans.sort()
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            raise _Invalid(f"two chunks are stored in overlapping bytes of {name!r}")


def read_dcp_metadata(path: str | os.PathLike) -> dcp_metadata.Metadata:
    """The DCP metadata of directory ``path``, read and checked before torch sees the directory:
    every file DCP could unpickle (``.metadata`` and any ``__<rank>.metadata``) is read with an
    unpickler that admits DCP's metadata classes only, and validated (types of every field, sizes,
    chunks, storage indices, offsets and lengths against the shard files' sizes). Load the
    directory only through ``dcp_load`` with the metadata returned.

    Examples:
        >>> import tempfile, torch
        >>> d = write_sharded_checkpoint({"format": FORMAT, "nodes": {"*/n": {"w": torch.ones(2)}}}, ["*/n"],
        ...                              tempfile.mkdtemp() + "/c.dcp")
        >>> list(read_dcp_metadata(d).state_dict_metadata)
        ['*/n.w']

    Raises:
        CheckpointError: naming the file: it is missing, holds pickled objects other than DCP
            metadata (refused unread), or is corrupted or inconsistent with the shard files.
    """
    path = Path(path)
    files = sorted(p for p in path.iterdir() if _DCP_METADATA.match(p.name)) if path.is_dir() else []
    if path / ".metadata" not in files:
        raise CheckpointError(
            f"checkpoint directory {str(path)!r} has no .metadata: its sharded part is missing or "
            "incomplete; resume from another checkpoint (resume_from='auto' picks the newest one "
            "that loads)"
        )
    found = {}
    for file in files:
        try:
            if file.is_symlink() or not file.is_file():
                raise _Invalid("it is not a plain file")
            with open(file, "rb") as f:
                meta = _MetadataUnpickler(f).load()
            _check_metadata(meta, path)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"refused to load checkpoint directory {str(path)!r}: its {file.name} holds pickled objects other than "
                f"DCP metadata, and loading it could run code ({e}); open only a checkpoint you trust with "
                "torch.distributed.checkpoint"
            ) from None
        except _Invalid as e:
            raise CheckpointError(
                f"checkpoint directory {str(path)!r} is truncated or corrupted: its {file.name} does "
                f"not describe the directory ({e}); resume from another checkpoint "
                "(resume_from='auto' picks the newest one that loads)"
            ) from None
        except Exception as e:
            raise CheckpointError(
                f"checkpoint directory {str(path)!r} is truncated or corrupted: its {file.name} "
                f"does not load ({type(e).__name__}: {e})"
            ) from None
        found[file.name] = meta
    return found[".metadata"]


class _CheckedReader(FileSystemReader):
    """DCP's file reader, given the metadata ``read_dcp_metadata`` checked: DCP then never
    unpickles a metadata file itself (nor falls back to a per-rank one)."""

    def __init__(self, path: Path, metadata: dcp_metadata.Metadata):
        super().__init__(path)
        self._checked = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        self._checked.storage_meta = self._checked.storage_meta or dcp_metadata.StorageMeta()
        self._checked.storage_meta.load_id = self.load_id
        return self._checked


class _SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, but a non-tensor value (``BytesStorageMetadata``, which DCP
    reads with ``torch.load(weights_only=False)``) is loaded only if ``weights_only=True`` accepts
    its bytes: the same bytes, in memory, then run only the allowlisted calls."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        try:
            torch.load(value, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"refused the value {read_item.dest_index.fqn!r} of a sharded checkpoint: it holds "
                f"pickled objects other than tensors and plain data, and loading it could run code "
                f"({str(e).splitlines()[0]}); open only a checkpoint you trust with "
                "torch.distributed.checkpoint"
            ) from None
        value.seek(0)
        super().load_bytes(read_item, value)


def dcp_load(state_dict: dict, path: str | os.PathLike, metadata: dcp_metadata.Metadata, no_dist: bool = True) -> None:
    """``torch.distributed.checkpoint.load`` of directory ``path`` into ``state_dict``, with the
    ``metadata`` of ``read_dcp_metadata(path)`` and non-tensor values loaded ``weights_only``."""
    with quiet_single_process_dcp():
        dcp.load(
            state_dict, storage_reader=_CheckedReader(Path(path), metadata), planner=_SafeLoadPlanner(), no_dist=no_dist
        )


def nest(flat: dict, metadata: dcp_metadata.Metadata) -> dict:
    """A flat ``{fqn: value}`` loaded from a DCP directory, nested as it was saved (its
    ``planner_data``: dicts for str keys, lists for int keys)."""
    nested: dict = {}
    for fqn, value in flat.items():
        keys = (metadata.planner_data or {}).get(fqn, (fqn,))
        here: Any = nested
        for key, nxt in zip(keys, keys[1:] + (None,)):
            new = value if nxt is None else ([] if type(nxt) is int else {})
            if type(key) is int and type(here) is list:
                here.extend([None] * (key + 1 - len(here)))
                here[key] = new if here[key] is None or nxt is None else here[key]
            elif type(key) is str and type(here) is dict:
                here[key] = new if nxt is None else here.get(key, new)
            else:
                raise CheckpointError(f"the DCP metadata maps {fqn!r} to {keys!r}, which clashes with another entry")
            here = here[key]
    return nested


def load_plain_file(file: Path, source: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of ``file``, a checkpoint file or a file of checkpoint
    directory ``source``; errors name both."""
    where = repr(str(source)) if file == source else f"{str(source)!r} (its {file.name})"
    verify_file(file, source)
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load checkpoint {where}: it holds pickled objects other than tensors and plain "
            f"containers, and loading it could run code ({str(e).splitlines()[0]}); only a file you trust may be "
            "opened with torch.load(weights_only=False)"
        ) from None
    except Exception as e:
        raise CheckpointError(f"checkpoint {where} is truncated or corrupted ({type(e).__name__}: {e})") from e


def _load_state_file(file: Path, map_location: Any, source: Path) -> dict:
    """``torch.load(weights_only=True)`` of a checkpoint file (or a directory's ``state.pt``),
    with the format marker checked; errors name ``source``."""
    state = load_plain_file(file, source, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(source)!r} is not an ice_ignite checkpoint (no {FORMAT!r} marker); pass a file written by "
            "save_checkpoint"
        )
    return state


def _read_shards(path: Path, map_location: Any) -> dict:
    """The tensors of a checkpoint directory's DCP part, consolidated into full plain tensors (as
    ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` does, in memory, without a
    process group), nested as they were saved. The metadata is checked first
    (``read_dcp_metadata``): nothing is allocated before, nor more than the shard files hold."""
    meta = read_dcp_metadata(path)
    entries = meta.state_dict_metadata
    others = [fqn for fqn, entry in entries.items() if not isinstance(entry, dcp_metadata.TensorStorageMetadata)]
    if others:  # save_checkpoint writes tensors only there
        raise CheckpointError(
            f"refused to load checkpoint directory {str(path)!r}: its sharded part holds pickled objects, not only "
            f"tensors ({', '.join(others[:3])}), and loading them could run code; open only a checkpoint you trust "
            "with torch.distributed.checkpoint"
        )
    verify_manifest(path)  # after the metadata is known safe, before any shard is read
    device = torch.device("cpu") if map_location is None else torch.device(map_location)
    flat = {
        fqn: torch.empty(entry.size, dtype=entry.properties.dtype, device=device)
        for fqn, entry in entries.items()
        if isinstance(entry, dcp_metadata.TensorStorageMetadata)  # all of them (checked above)
    }
    try:
        dcp_load(flat, path, meta)  # every chunk of every process, into the full tensors
    except _DCP_ERRORS as e:
        raise CheckpointError(
            f"checkpoint directory {str(path)!r} is truncated or corrupted: its shards do not load "
            f"({describe(e)}); resume from another checkpoint (resume_from='auto' picks the newest "
            "one that loads)"
        ) from e
    return nest(flat, meta)


def _read_directory(path: Path, map_location: Any) -> dict:
    """A checkpoint directory in the form of a checkpoint file: ``state.pt`` with the sharded
    nodes' full tensors put back."""
    if _PARTIAL.match(path.name):
        raise CheckpointError(
            f"checkpoint directory {str(path)!r} is the partial write of a save that did not finish; "
            "resume from a published checkpoint (resume_from='auto' picks the newest one that loads)"
        )
    if not (path / STATE).is_file():
        raise CheckpointError(
            f"checkpoint directory {str(path)!r} has no {STATE}: not written by save_checkpoint, "
            "or incomplete; resume from another checkpoint (resume_from='auto' picks the newest one "
            "that loads)"
        )
    state = _load_state_file(path / STATE, map_location, path)
    uids = state.pop("sharded_nodes", [])
    if not uids:
        verify_manifest(path)
        return state
    tensors = _read_shards(path, map_location)
    for uid in uids:
        state["nodes"][uid] = _merge(state["nodes"][uid], tensors.get(uid))
    return state


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint file, or a checkpoint directory (consolidated into full tensors, the
    form of a file), without unpickling arbitrary objects (``weights_only=True``).

    Args:
        path: a checkpoint file or directory.
        map_location: as ``torch.load``'s; a directory's sharded tensors need a device (or None
            for the CPU).

    Raises:
        CheckpointError: the path is missing, refused (it holds pickled code), truncated or
            corrupted, incomplete (a directory without ``state.pt`` or DCP ``.metadata``, or the
            partial directory of an unfinished save), or not an ice_ignite checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        return _read_directory(path, map_location)
    if not path.is_file():
        raise CheckpointError(_not_a_checkpoint_file(path))
    return _load_state_file(path, map_location, path)


def _not_a_checkpoint_file(path: Path) -> str:
    """Why ``path`` (neither a regular file nor a directory) cannot be read: told by ``stat``, which
    opens nothing (a FIFO would block ``open``, a device would be read forever)."""
    import stat

    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            return f"checkpoint {str(path)!r} is a broken symbolic link (to {os.readlink(path)!r}); check the path"
        return f"checkpoint {str(path)!r} does not exist; check the path"
    except OSError as e:
        return f"checkpoint {str(path)!r} cannot be examined ({e.strerror}); check the path and its permissions"
    kinds = [
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return (
        f"checkpoint {str(path)!r} is {kind}, not a checkpoint file or directory; nothing was read from it. "
        "Pass the path of a checkpoint file (ckpts/ckpt-*.pt) or directory (ckpts/ckpt-*.dcp), or "
        "resume_from='auto'"
    )


def latest_valid_checkpoint(ckpt_dir: Path, map_location: Any = "cpu") -> tuple[Path, dict] | None:
    """The checkpoint of ``ckpt_dir`` that ``resume_from="auto"`` resumes: the newest by sequence
    number that loads, periodic (``ckpt-*``) or best (``best-*``, a whole checkpoint too); newer
    broken ones are skipped with a warning. None when ``ckpt_dir`` holds no checkpoint.

    Raises:
        CheckpointError: ``ckpt_dir`` holds checkpoints (files or directories named ``ckpt-*`` or
            ``best-*``) and none loads; the message lists each and why.
    """
    if not ckpt_dir.is_dir():
        return None
    listed = list_checkpoints(ckpt_dir, best=True)
    failures = [
        f"{p.name} (not a checkpoint name: ckpt-<sequence>-E<epochs>S<steps>.pt, or best-...)"
        for p in sorted(ckpt_dir.iterdir())
        if (p.name.startswith("ckpt-") or p.name.startswith("best-")) and p not in {q for _, q in listed}
    ]
    for _, path in reversed(listed):
        try:
            return path, read_checkpoint(path, map_location)
        except CheckpointError as e:
            failures.append(f"{path.name} ({e})")
            warnings.warn(f"skipping checkpoint {path.name}: {e}; falling back to an older one", stacklevel=3)
    if not failures:
        return None
    raise CheckpointError(
        f"resume_from='auto': {str(ckpt_dir)!r} holds {len(failures)} checkpoint(s) and none loads, so the run is not "
        f"restarted from the beginning beside them: {'; '.join(failures)}. Resume from a copy you trust "
        "(resume_from=path), or move these out of the run directory to start it afresh, or pass another run_id"
    )


class CheckpointingGraph(Protocol):
    """What the checkpoint steps of a schedule call on the HyperGraph running them (the front door,
    which ``checkpoint/`` does not import)."""

    def save_checkpoint(
        self, save_to: str | os.PathLike | None = None, tags: str | Iterable[str] = "*"
    ) -> Path | None: ...

    def load_checkpoint(
        self,
        resume_from: str | os.PathLike,
        strict: bool = False,
        tags: str | Iterable[str] = "*",
        *,
        nodes: str | Iterable[str] | None = None,
        rename: Mapping[str, str] | None = None,
        weights: bool = True,
        optimizers: bool = False,
        other: bool = False,
    ) -> dict: ...


class SaveCheckpointTask:
    """A schedule step that calls ``g.save_checkpoint(save_to, tags)``.

    Examples:
        >>> import ice_ignite as ice
        >>> ice.SaveCheckpointTask()
        SaveCheckpointTask()
    """

    __ice_schedule_item__ = True

    def __init__(self, save_to: str | Path | None = None, tags: str | Iterable[str] = "*"):
        self.save_to = save_to
        self.tags = tags

    def __call__(self, g: CheckpointingGraph) -> None:
        g.save_checkpoint(self.save_to, self.tags)

    def __repr__(self) -> str:
        args = [f"save_to={str(self.save_to)!r}"] if self.save_to is not None else []
        if self.tags != "*":
            args.append(f"tags={self.tags!r}")
        return f"SaveCheckpointTask({', '.join(args)})"


class LoadCheckpointTask:
    """A schedule step that calls ``g.load_checkpoint(resume_from, strict, tags, ...)``: module
    weights and buffers only by default (pretrained weights before fine-tuning), with optimizer
    and other node state on request, nodes chosen by ``tags`` and ``nodes`` (names or uids), and a
    ``rename`` map ``{source in the checkpoint: destination in this graph}``. The options are
    checked when the task is built; see ``HyperGraph.load_checkpoint``.

    Examples:
        >>> import ice_ignite as ice
        >>> ice.LoadCheckpointTask("runs/pretrain/ckpts/ckpt-000009-E10S300.pt", tags="backbone")
        LoadCheckpointTask('runs/pretrain/ckpts/ckpt-000009-E10S300.pt', tags='backbone')
        >>> ice.LoadCheckpointTask("pre.pt", rename={"pretrain/encoder": "finetune/encoder"})
        LoadCheckpointTask('pre.pt', rename={'pretrain/encoder': 'finetune/encoder'})
    """

    __ice_schedule_item__ = True

    def __init__(
        self,
        resume_from: str | Path,
        strict: bool = False,
        tags: str | Iterable[str] = "*",
        *,
        nodes: str | Iterable[str] | None = None,
        rename: dict[str, str] | None = None,
        weights: bool = True,
        optimizers: bool = False,
        other: bool = False,
    ):
        if not isinstance(resume_from, (str, Path)):
            raise TypeError(f"LoadCheckpointTask needs a checkpoint path, got {resume_from!r}")
        self.resume_from = resume_from
        self.strict = strict
        self.tags = tags
        self.spec = LoadSpec(weights=weights, optimizers=optimizers, other=other, nodes=nodes, rename=rename)

    def __call__(self, g: CheckpointingGraph) -> dict:
        s = self.spec
        return g.load_checkpoint(
            self.resume_from,
            self.strict,
            self.tags,
            nodes=s.nodes,
            rename=s.rename,
            weights=s.weights,
            optimizers=s.optimizers,
            other=s.other,
        )

    def __repr__(self) -> str:
        args = [repr(str(self.resume_from))]
        if self.strict:
            args.append("strict=True")
        if self.tags != "*":
            args.append(f"tags={self.tags!r}")
        s = self.spec
        args += [f"nodes={s.nodes!r}"] if s.nodes is not None else []
        args += [f"rename={s.rename!r}"] if s.rename else []
        args += [
            f"{part}={getattr(s, part)!r}"
            for part in ("weights", "optimizers", "other")
            if getattr(s, part) != (part == "weights")
        ]
        return f"LoadCheckpointTask({', '.join(args)})"
