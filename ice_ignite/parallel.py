"""Collectives and model wrapping for multi-process runs, through ``ignite.distributed``.

Everything here is a no-op (or the identity) in a single-process run, so the rest of the
package never branches on the number of processes itself.
"""

from __future__ import annotations

from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist

__all__ = ["world_size", "wrap_ddp", "gather_objects", "broadcast_object", "any_rank", "AgreedFlag"]


def world_size() -> int:
    """Processes in the run (1 without a process group)."""
    return idist.get_world_size()


def wrap_ddp(module: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
    """``idist.auto_model`` in a multi-process run (DistributedDataParallel with ``ddp_kwargs``)."""
    # auto_model wraps DataParallel in a single process that sees several GPUs: callers only
    # come here when world_size() > 1.
    return idist.auto_model(module, sync_bn=False, **ddp_kwargs)


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (``[obj]`` in a single process; None on
    the other ranks). A collective."""
    if world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank. A collective."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is set on any rank. A collective."""
    if world_size() == 1:
        return flag
    return bool(idist.all_reduce(int(flag), op="MAX"))


class AgreedFlag:
    """A flag that every rank sees set at the same check, once any rank raised it.

    ``check()`` is called at the same program points on every rank (iteration boundaries). It
    waits for the all-reduce started at the previous check and starts the next one, so the
    communication overlaps an iteration instead of adding its latency to it.
    """

    def __init__(self) -> None:
        self._group = dist.new_group(backend="gloo") if world_size() > 1 else None
        self._pending: tuple[Any, torch.Tensor] | None = None

    def _drain(self) -> bool:
        """Wait for the all-reduce in flight, if any; whether it found the flag set."""
        if self._pending is None:
            return False
        work, value = self._pending
        self._pending = None
        work.wait()
        return bool(value.item())

    def check(self, local: bool) -> bool:
        """Whether the flag is agreed set (at most one check after the first rank raised it)."""
        if self._group is None:
            return local
        agreed = self._drain()
        value = torch.tensor([1 if local else 0], dtype=torch.int32)
        self._pending = (dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._group, async_op=True), value)
        return agreed

    def check_now(self, local: bool) -> bool:
        """A blocking check (between schedule entries)."""
        if self._group is None:
            return local
        local = self._drain() or local
        value = torch.tensor([1 if local else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self._group)
        return bool(value.item())

    def close(self) -> None:
        """Release the group; errors of peers that already died are left to the caller's own."""
        try:
            self._drain()
            if self._group is not None:
                dist.destroy_process_group(self._group)
        except RuntimeError:
            pass
        self._pending = self._group = None
