"""Checkpoint files: names with a sequence number, atomic writes, safe reads (B8)."""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
from ignite.handlers import DiskSaver

from ice_ignite.errors import CheckpointError
from ice_ignite.transfer import LoadSpec

__all__ = ["FORMAT", "checkpoint_filename", "best_filename", "best_files", "next_sequence", "list_checkpoints",
           "prune_checkpoints", "remove_partial_writes", "write_checkpoint", "read_checkpoint",
           "SaveCheckpointTask", "LoadCheckpointTask",
           "latest_valid_checkpoint"]

#: the marker every ice_ignite checkpoint carries
FORMAT = "ice_ignite.checkpoint.v1"
_NAME = re.compile(r"^ckpt-(\d+)-E(\d+)S(\d+)\.pt$")
_BEST = re.compile(r"^best-(\d+)-E(\d+)S(\d+)-(.+)=([^=]+)\.pt$")


def checkpoint_filename(seq: int, epochs: int, steps: int) -> str:
    """``ckpt-000123-E3S117.pt``: sequence number, train epochs, train steps."""
    return f"ckpt-{seq:06d}-E{epochs}S{steps}.pt"


def best_filename(seq: int, epochs: int, steps: int, name: str, value: float) -> str:
    """``best-000124-E3S117-acc=0.9812.pt``: a MetricNode's best checkpoint."""
    return f"best-{seq:06d}-E{epochs}S{steps}-{name}={value:.6g}.pt"


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
    """Delete the oldest periodic checkpoints beyond the newest ``n_saved``; returns them."""
    old = [path for _, path in list_checkpoints(ckpt_dir)[:-n_saved]]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def remove_partial_writes(ckpt_dir: Path) -> list[Path]:
    """Delete temporary files an atomic write left behind when its process was killed."""
    if not ckpt_dir.is_dir():
        return []
    stale = [p for p in ckpt_dir.iterdir() if p.is_file() and p.name.startswith("tmp")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(sequence, path)`` of the checkpoint files in ``ckpt_dir``, oldest first."""
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


def read_checkpoint(path: "str | Path", map_location: Any = "cpu") -> dict:
    """Load a checkpoint without unpickling arbitrary objects (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing, refused (it holds pickled code), truncated or
            corrupted, or not an ice_ignite checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (or is not a file); check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load checkpoint {str(path)!r}: it holds pickled objects other than tensors and plain "
            f"containers, and loading it could run code ({str(e).splitlines()[0]}); only a file you trust may be "
            "opened with torch.load(weights_only=False)"
        ) from None
    except Exception as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is truncated or corrupted ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is not an ice_ignite checkpoint (no {FORMAT!r} marker); pass a file written by "
            "save_checkpoint"
        )
    return state


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
