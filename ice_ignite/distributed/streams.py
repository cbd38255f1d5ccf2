"""Streams (``IterableDataset``): which shard a process or DataLoader worker yields, and whether a
stream can resume from a saved position instead of replaying what it had yielded."""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist
from torch.utils.data import get_worker_info

__all__ = ["stream_shard", "is_resumable_stream"]


def stream_shard() -> tuple[int, int]:
    """``(index, count)``: the shard of a stream that this process and DataLoader worker should
    yield, out of ``count`` = processes × workers, so that together they yield every element once.

    Call it in ``IterableDataset.__iter__`` (it runs in the worker). The process's rank comes from
    ``torch.distributed`` (or ``RANK`` / ``WORLD_SIZE``, which ``run`` and ``torchrun`` set, in
    workers started with ``spawn``), the worker's from ``torch.utils.data.get_worker_info()``.

    Examples:
        >>> import torch
        >>> class Numbers(torch.utils.data.IterableDataset):
        ...     def __iter__(self):
        ...         index, count = stream_shard()
        ...         return iter(range(index, 10, count))
        >>> list(Numbers())
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers


def is_resumable_stream(dataset: Any) -> bool:
    """Whether ``dataset`` has ``state_dict()`` and ``load_state_dict(state)`` (the protocol of
    torchdata's ``StatefulDataLoader`` and of Hugging Face ``datasets``' iterable datasets)."""
    return callable(getattr(dataset, "state_dict", None)) and callable(getattr(dataset, "load_state_dict", None))
