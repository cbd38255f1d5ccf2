"""Where a process runs: the ``Launcher`` record every node sees as ``n.launcher``, and the
``devices=`` grammar of ``HyperGraph.run`` (B9)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import torch

__all__ = ["Launcher", "parse_devices", "default_backend"]


@dataclass(frozen=True)
class Launcher:
    """This process's place in the run.

    Example:
        >>> Launcher().world_size
        1
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is global rank 0."""
        return self.rank == 0


_RANGE = re.compile(r"^\d+(-\d+)?$")


def _indices(spec: str, available: int, devices: str) -> list[int]:
    if spec == "*":
        return list(range(available))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not _RANGE.match(part):
            raise ValueError(
                f"devices={devices!r}: {part!r} is not an index or a range; write e.g. 'cuda:0', 'cuda:0-3,6', "
                "'cuda:*', 'cpu', 'cpu:0-1'"
            )
        lo, _, hi = part.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
        if hi_i < lo_i:
            raise ValueError(f"devices={devices!r}: the range {part!r} runs backwards")
        out.extend(range(lo_i, hi_i + 1))
    return out


def parse_devices(devices: str) -> list[torch.device]:
    """One device per process from ``"auto"``, ``"cpu"``, ``"cpu:0-1"``, ``"cpu:*"``, ``"cuda"``,
    ``"cuda:0"``, ``"cuda:1,3"``, ``"cuda:0-2,7"``, ``"cuda:*"`` or ``"auto:*"``.

    Example:
        >>> parse_devices("cpu:0-1")
        [device(type='cpu'), device(type='cpu')]
    """
    if not isinstance(devices, str) or not devices.strip():
        raise TypeError(f"devices must be a string such as 'cpu', 'cuda:0-1' or 'auto', got {devices!r}")
    text = devices.strip().lower()
    kind, _, spec = text.partition(":")
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
        spec = spec or ""
    if kind == "cpu":
        count = len(_indices(spec, os.cpu_count() or 1, devices)) if spec else 1
        if count == 0:
            raise ValueError(f"devices={devices!r} names no process")
        return [torch.device("cpu")] * count
    if kind == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise RuntimeError(
                f"devices={devices!r} asks for CUDA, but torch sees no CUDA device on this machine "
                f"(torch {torch.__version__}); use devices='cpu' or devices='auto'"
            )
        indices = _indices(spec, available, devices) if spec else [0]
        missing = [i for i in indices if i >= available]
        if missing:
            raise ValueError(f"devices={devices!r} names CUDA device(s) {missing}, but only {available} exist")
        if not indices:
            raise ValueError(f"devices={devices!r} names no process")
        return [torch.device("cuda", i) for i in indices]
    raise ValueError(f"devices={devices!r}: the device kind must be 'cpu', 'cuda' or 'auto', got {kind!r}")


def default_backend(devices: list[torch.device], dist_backend: str = "auto") -> str:
    """``gloo`` for CPU, ``nccl`` for CUDA with one process per GPU (gloo when a GPU is shared)."""
    if dist_backend != "auto":
        if dist_backend not in ("gloo", "nccl", "mpi"):
            raise ValueError(f"dist_backend must be 'auto', 'gloo', 'nccl' or 'mpi', got {dist_backend!r}")
        return dist_backend
    if all(d.type == "cuda" for d in devices) and len(set(devices)) == len(devices):
        return "nccl"
    return "gloo"
