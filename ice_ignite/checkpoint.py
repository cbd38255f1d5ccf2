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
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed.checkpoint as dcp
from ignite.handlers import DiskSaver
from torch.distributed.checkpoint import metadata as dcp_metadata

from ice_ignite import parallel
from ice_ignite.errors import CheckpointError
from ice_ignite.transfer import LoadSpec

__all__ = ["FORMAT", "STATE", "checkpoint_filename", "best_filename", "best_files", "next_sequence",
           "list_checkpoints", "prune_checkpoints", "remove_checkpoint", "remove_partial_writes", "partial_path",
           "publish_directory", "write_checkpoint", "write_sharded_checkpoint", "read_checkpoint",
           "SaveCheckpointTask", "LoadCheckpointTask", "latest_valid_checkpoint"]

#: the marker every ice_ignite checkpoint carries
FORMAT = "ice_ignite.checkpoint.v1"
#: the file of a checkpoint directory that holds everything but the sharded nodes' tensors
STATE = "state.pt"
_NAME = re.compile(r"^ckpt-(\d+)-E(\d+)S(\d+)\.(?:pt|dcp)$")
_BEST = re.compile(r"^best-(\d+)-E(\d+)S(\d+)-(.+)=([^=]+)\.(?:pt|dcp)$")
_PARTIAL = re.compile(r"^\..+\.partial$")
#: what a failed DCP save or load raises: torch's ``CheckpointException`` is a BaseException
_DCP_ERRORS = (Exception, dcp.CheckpointException)


def _describe(error: BaseException) -> str:
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


def best_filename(seq: int, epochs: int, steps: int, name: str, value: float, sharded: bool = False) -> str:
    """``best-000124-E3S117-acc=0.9812.pt``: a MetricNode's best checkpoint (``.dcp``: ``sharded``)."""
    return f"best-{seq:06d}-E{epochs}S{steps}-{name}={value:.6g}{_suffix(sharded)}"


def best_files(ckpt_dir: Path, name: str) -> list[Path]:
    """The best checkpoints of MetricNode ``name`` in ``ckpt_dir``."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if (m := _BEST.match(p.name)) and m.group(4) == name)


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
    stale = [p for p in ckpt_dir.iterdir()
             if (p.is_file() and p.name.startswith("tmp")) or (p.is_dir() and _PARTIAL.match(p.name))]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(sequence, path)`` of the periodic checkpoints in ``ckpt_dir`` (files and directories),
    oldest first."""
    if not ckpt_dir.is_dir():
        return []
    found = []
    for path in ckpt_dir.iterdir():
        m = _NAME.match(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def write_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename, by ignite's
    ``DiskSaver(atomic=True)``): a crash leaves the old file set intact. Never overwrites."""
    path = Path(path)
    if path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} exists; save to another path or delete it first")
    before = set(path.parent.iterdir()) if path.parent.is_dir() else set()
    try:
        saver = DiskSaver(str(path.parent), atomic=True, create_dir=True, require_empty=False)
        saver(state, path.name)
    except OSError as e:
        # DiskSaver deletes its temporary file after a failed write, unless closing that file fails
        # too (a full disk fails the final flush), so remove what this write left behind.
        for stray in set(path.parent.iterdir()) - before:
            if stray.name.startswith("tmp"):
                stray.unlink(missing_ok=True)
        raise CheckpointError(
            f"writing checkpoint {str(path)!r} failed: {e}; the previous checkpoints are intact"
        ) from None


@contextlib.contextmanager
def quiet_single_process_dcp() -> Iterator[None]:
    """DCP warns that it assumes a single process when there is no process group: that is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        warnings.filterwarnings("ignore", message="torch.distributed is unavailable or uninitialized")
        yield


def publish_directory(path: "str | os.PathLike", write: Callable[[Path], None], what: str = "checkpoint") -> Path:
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
        if first:
            os.replace(partial, final)

    for step in (prepare, write, publish):  # every process agrees on each step's outcome before the next
        error: BaseException | None = None
        try:
            step(partial)
        except _DCP_ERRORS as e:
            error = e
        if parallel.any_rank(error is not None):
            if first:
                shutil.rmtree(partial, ignore_errors=True)
            cause = _describe(error) if error is not None else "another process failed"
            raise CheckpointError(f"writing {what} {str(final)!r} failed ({cause}); the previous checkpoints are "
                                  "intact") from error
    return final


def _split(tree: Any) -> tuple[Any, Any]:
    """``tree`` (nested dicts, lists and tuples) with every tensor left as None, and its tensors
    alone, in nested dicts keyed by the ``str`` of each key or index (as DCP wants them)."""
    if isinstance(tree, torch.Tensor):
        return None, tree
    if isinstance(tree, dict):
        pairs = {k: _split(v) for k, v in tree.items()}
        skeleton = type(tree)((k, s) for k, (s, _) in pairs.items())
        if hasattr(tree, "_metadata"):  # a module's state_dict: its version metadata
            skeleton._metadata = tree._metadata
        return skeleton, {str(k): t for k, (_, t) in pairs.items() if _holds_tensors(t)}
    if isinstance(tree, (list, tuple)):
        pairs = [_split(v) for v in tree]
        return type(tree)(s for s, _ in pairs), {str(i): t for i, (_, t) in enumerate(pairs) if _holds_tensors(t)}
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
        out = type(skeleton)((k, _merge(v, tensors.get(str(k)))) for k, v in skeleton.items())
        if hasattr(skeleton, "_metadata"):
            out._metadata = skeleton._metadata
        return out
    if isinstance(skeleton, (list, tuple)):
        return type(skeleton)(_merge(v, tensors.get(str(i))) for i, v in enumerate(skeleton))
    return skeleton


def write_sharded_checkpoint(state: dict, uids: Iterable[str], path: "str | os.PathLike") -> Path:
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
            dcp.save({uid: t for uid, t in tensors.items() if _holds_tensors(t)}, checkpoint_id=partial,
                     no_dist=parallel.world_size() == 1)
        if parallel.rank() == 0:
            torch.save(rest, partial / STATE)

    return publish_directory(path, write)


class _MetadataUnpickler(pickle.Unpickler):
    """Reads DCP's ``.metadata`` (a pickle) and refuses every global but the classes of DCP's
    metadata, ``torch.Size``, dtypes, layouts and paths: DCP itself would ``pickle.load`` it."""

    _ALLOWED = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("pathlib", "PosixPath"),
                ("pathlib", "WindowsPath"), ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"),
                ("pathlib", "Path")}

    def find_class(self, module: str, name: str) -> Any:
        if module == dcp_metadata.__name__ and isinstance(getattr(dcp_metadata, name, None), type):
            return getattr(dcp_metadata, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP metadata")


def _load_state_file(file: Path, map_location: Any, source: Path) -> dict:
    """``torch.load(weights_only=True)`` of a checkpoint file (or a directory's ``state.pt``),
    with the format marker checked; errors name ``source``."""
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load checkpoint {str(source)!r}: it holds pickled objects other than tensors and plain "
            f"containers, and loading it could run code ({str(e).splitlines()[0]}); only a file you trust may be "
            "opened with torch.load(weights_only=False)"
        ) from None
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(source)!r} is truncated or corrupted ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(source)!r} is not an ice_ignite checkpoint (no {FORMAT!r} marker); pass a file written by "
            "save_checkpoint"
        )
    return state


def _read_shards(path: Path, map_location: Any) -> dict:
    """The tensors of a checkpoint directory's DCP part, consolidated into full plain tensors (as
    ``torch.distributed.checkpoint.format_utils.dcp_to_torch_save`` does, in memory, without a
    process group), nested as they were saved."""
    meta_file = path / ".metadata"
    if not meta_file.is_file():
        raise CheckpointError(f"checkpoint directory {str(path)!r} has no .metadata: its sharded part is missing or "
                              "incomplete; resume from another checkpoint (resume_from='auto' picks the newest one "
                              "that loads)")
    try:
        with open(meta_file, "rb") as f:
            meta = _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load checkpoint directory {str(path)!r}: its .metadata holds pickled objects other than "
            f"DCP metadata, and loading it could run code ({e}); open only a checkpoint you trust with "
            "torch.distributed.checkpoint"
        ) from None
    except Exception as e:
        raise CheckpointError(f"checkpoint directory {str(path)!r} is truncated or corrupted: its .metadata does not "
                              f"load ({type(e).__name__}: {e})") from e
    if not isinstance(meta, dcp_metadata.Metadata):
        raise CheckpointError(f"checkpoint directory {str(path)!r} is truncated or corrupted: its .metadata is a "
                              f"{type(meta).__name__}, not DCP metadata")
    entries = meta.state_dict_metadata
    others = [fqn for fqn, entry in entries.items() if not isinstance(entry, dcp_metadata.TensorStorageMetadata)]
    if others:  # DCP would torch.load(weights_only=False) them
        raise CheckpointError(
            f"refused to load checkpoint directory {str(path)!r}: its sharded part holds pickled objects, not only "
            f"tensors ({', '.join(others[:3])}), and loading them could run code; open only a checkpoint you trust "
            "with torch.distributed.checkpoint"
        )
    device = torch.device("cpu") if map_location is None else torch.device(map_location)
    flat = {fqn: torch.empty(entry.size, dtype=entry.properties.dtype, device=device) for fqn, entry in entries.items()}
    try:
        with quiet_single_process_dcp():
            dcp.load(flat, checkpoint_id=path, no_dist=True)  # every chunk of every process, into the full tensors
    except _DCP_ERRORS as e:
        raise CheckpointError(f"checkpoint directory {str(path)!r} is truncated or corrupted: its shards do not load "
                              f"({_describe(e)}); resume from another checkpoint (resume_from='auto' picks the newest "
                              "one that loads)") from e
    nested: dict = {}
    for fqn, tensor in flat.items():
        keys = (meta.planner_data or {}).get(fqn, (fqn,))
        here = nested
        for key in keys[:-1]:
            here = here.setdefault(key, {})
        here[keys[-1]] = tensor
    return nested


def _read_directory(path: Path, map_location: Any) -> dict:
    """A checkpoint directory in the form of a checkpoint file: ``state.pt`` with the sharded
    nodes' full tensors put back."""
    if _PARTIAL.match(path.name):
        raise CheckpointError(f"checkpoint directory {str(path)!r} is the partial write of a save that did not finish; "
                              "resume from a published checkpoint (resume_from='auto' picks the newest one that loads)")
    if not (path / STATE).is_file():
        raise CheckpointError(f"checkpoint directory {str(path)!r} has no {STATE}: not written by save_checkpoint, "
                              "or incomplete; resume from another checkpoint (resume_from='auto' picks the newest one "
                              "that loads)")
    state = _load_state_file(path / STATE, map_location, path)
    uids = state.pop("sharded_nodes", [])
    if not uids:
        return state
    tensors = _read_shards(path, map_location)
    for uid in uids:
        state["nodes"][uid] = _merge(state["nodes"][uid], tensors.get(uid))
    return state


def read_checkpoint(path: "str | Path", map_location: Any = "cpu") -> dict:
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
            return (f"checkpoint {str(path)!r} is a broken symbolic link (to {os.readlink(path)!r}); check the path")
        return f"checkpoint {str(path)!r} does not exist; check the path"
    except OSError as e:
        return f"checkpoint {str(path)!r} cannot be examined ({e.strerror}); check the path and its permissions"
    kinds = [(stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return (f"checkpoint {str(path)!r} is {kind}, not a checkpoint file or directory; nothing was read from it. "
            "Pass the path of a checkpoint file (ckpts/ckpt-*.pt) or directory (ckpts/ckpt-*.dcp), or "
            "resume_from='auto'")


def latest_valid_checkpoint(ckpt_dir: Path, map_location: Any = "cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint in ``ckpt_dir`` that loads; newer broken ones are skipped with a warning."""
    for _, path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, read_checkpoint(path, map_location)
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint {path.name}: {e}; falling back to an older one", stacklevel=3)
    return None


class SaveCheckpointTask:
    """A schedule step that calls ``g.save_checkpoint(save_to, tags)``.

    Examples:
        >>> import ice_ignite as ice
        >>> ice.SaveCheckpointTask()
        SaveCheckpointTask()
    """

    __ice_schedule_item__ = True

    def __init__(self, save_to: "str | Path | None" = None, tags: Any = "*"):
        self.save_to = save_to
        self.tags = tags

    def __call__(self, g: Any) -> None:
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

    def __init__(self, resume_from: "str | Path", strict: bool = False, tags: Any = "*", *,
                 nodes: "str | Iterable[str] | None" = None, rename: "dict[str, str] | None" = None,
                 weights: bool = True, optimizers: bool = False, other: bool = False):
        if not isinstance(resume_from, (str, Path)):
            raise TypeError(f"LoadCheckpointTask needs a checkpoint path, got {resume_from!r}")
        self.resume_from = resume_from
        self.strict = strict
        self.tags = tags
        self.spec = LoadSpec(weights=weights, optimizers=optimizers, other=other, nodes=nodes, rename=rename)

    def __call__(self, g: Any) -> dict:
        s = self.spec
        return g.load_checkpoint(self.resume_from, self.strict, self.tags, nodes=s.nodes, rename=s.rename,
                                 weights=s.weights, optimizers=s.optimizers, other=s.other)

    def __repr__(self) -> str:
        args = [repr(str(self.resume_from))]
        if self.strict:
            args.append("strict=True")
        if self.tags != "*":
            args.append(f"tags={self.tags!r}")
        s = self.spec
        args += [f"nodes={s.nodes!r}"] if s.nodes is not None else []
        args += [f"rename={s.rename!r}"] if s.rename else []
        args += [f"{part}={getattr(s, part)!r}" for part in ("weights", "optimizers", "other")
                 if getattr(s, part) != (part == "weights")]
        return f"LoadCheckpointTask({', '.join(args)})"
