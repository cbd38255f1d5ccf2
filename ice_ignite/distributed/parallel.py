"""Collectives and model wrapping for multi-process runs, through ``ignite.distributed``.

Everything here is a no-op (or the identity) in a single-process run, so the rest of the
package never branches on the number of processes itself.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import ignite.distributed as idist
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ice_ignite.errors import GraphError

__all__ = [
    "world_size",
    "rank",
    "ddp_options",
    "DDP_SET_HERE",
    "check_wrapper_kwargs",
    "wrap_ddp",
    "batchnorm_layers",
    "sync_batchnorm",
    "gather_objects",
    "broadcast_object",
    "any_rank",
    "AgreedFlag",
    "fsdp_options",
    "FSDP_SET_HERE",
    "compile_options",
    "module_policy",
    "shard_fsdp",
    "full_tensors",
    "shard_like",
    "local_bytes",
]

#: DistributedDataParallel options ``wrap_ddp`` sets itself (``idist.auto_model`` places the module on
#: the process's device), with what to do instead.
DDP_SET_HERE = {
    "device_ids": "ice_ignite sets it to the process's device (choose devices with run(devices=...)); leave it out",
    "output_device": "ice_ignite sets it to the process's device (choose devices with run(devices=...)); leave it out",
}

#: ``fully_shard`` options ``shard_fsdp`` sets itself, with what to do instead.
FSDP_SET_HERE = {
    "mesh": "ice_ignite shards over all processes of the run (a 1-D mesh on the process's device); leave it out",
    "dp_mesh_dims": "ice_ignite shards over a 1-D mesh of all processes; leave it out",
}

#: the kinds of layer ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` converts
_BATCHNORM = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.LazyBatchNorm1d,
    torch.nn.LazyBatchNorm2d,
    torch.nn.LazyBatchNorm3d,
)
#: device types on which torch's SyncBatchNorm cannot train: its forward raises a ValueError there
#: (it trains on cuda, xpu, hpu and the PrivateUse1 backend only; torch 2.13)
_NO_SYNC_BN_DEVICES = ("cpu", "mps")


def world_size() -> int:
    """Processes in the run (1 without a process group)."""
    return idist.get_world_size()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return idist.get_rank()


@functools.cache
def ddp_options() -> tuple[str, ...]:
    """The keyword options of ``torch.nn.parallel.DistributedDataParallel`` (from its signature).

    Examples:
        >>> "bucket_cap_mb" in ddp_options() and "gradient_as_bucket_view" in ddp_options()
        True
    """
    parameters = inspect.signature(DistributedDataParallel.__init__).parameters
    return tuple(n for n in parameters if n not in ("self", "module"))


@functools.cache
def fsdp_options() -> tuple[str, ...]:
    """The keyword options of ``torch.distributed.fsdp.fully_shard`` (from its signature).

    Examples:
        >>> "offload_policy" in fsdp_options() and "reshard_after_forward" in fsdp_options()
        True
    """
    from torch.distributed.fsdp import fully_shard

    return tuple(n for n in inspect.signature(fully_shard).parameters if n != "module")


@functools.cache
def compile_options() -> tuple[str, ...]:
    """The keyword options of ``torch.compile`` (from its signature).

    Examples:
        >>> "backend" in compile_options() and "fullgraph" in compile_options()
        True
    """
    return tuple(n for n in inspect.signature(torch.compile).parameters if n != "model")


def module_policy(policy: Any, argument: str, where: str) -> Callable[[torch.nn.Module], bool] | None:
    """A ``policy`` that picks submodules (None; ``True``: the module itself; a module class or a
    tuple of them; a callable ``module -> bool``) as a predicate over modules.

    Raises:
        TypeError: ``policy`` is none of these.

    Examples:
        >>> pick = module_policy(torch.nn.Linear, "fsdp_policy", "ModuleNode(Sequential)")
        >>> pick(torch.nn.Linear(2, 2)), pick(torch.nn.ReLU())
        (True, False)
    """
    if policy is None or policy is False:
        return None
    if policy is True:
        return lambda m: True
    classes = policy if isinstance(policy, tuple) else (policy,)
    if all(isinstance(c, type) and issubclass(c, torch.nn.Module) for c in classes):
        return lambda m: isinstance(m, classes)
    if callable(policy) and not isinstance(policy, (type, tuple)):
        return policy
    raise TypeError(
        f"{argument} of {where} must be a torch.nn.Module class, a tuple of them or a callable "
        f"module -> bool, got {policy!r}; e.g. {argument}=torch.nn.TransformerEncoderLayer"
    )


def check_wrapper_kwargs(
    kwargs: Mapping[str, Any] | None,
    *,
    argument: str,
    wrapper: str,
    valid: Iterable[str],
    reserved: Mapping[str, str],
    where: str,
) -> dict[str, Any]:
    """``kwargs`` for a model wrapper (``ddp_kwargs`` for DistributedDataParallel), checked by name.

    Args:
        kwargs: the user's dict (None: no options).
        argument: the argument's name in messages, e.g. ``"ddp_kwargs"``.
        wrapper: the wrapper's name in messages, e.g. ``"DistributedDataParallel"``.
        valid: the wrapper's option names.
        reserved: options the caller sets itself, with what to do instead.
        where: who got ``kwargs``, e.g. ``"ModuleNode '*/net'"``.

    Raises:
        TypeError: ``kwargs`` is not a dict of names, or names an unknown or reserved option.

    Examples:
        >>> check_wrapper_kwargs({"bucket_cap_mb": 25}, argument="ddp_kwargs", wrapper="DistributedDataParallel",
        ...                      valid=ddp_options(), reserved=DDP_SET_HERE, where="ModuleNode(Linear)")
        {'bucket_cap_mb': 25}
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise TypeError(
            f"{argument} of {where} must be a dict of {wrapper} options by name, got {kwargs!r}; "
            f"e.g. {argument}={{'bucket_cap_mb': 25}}"
        )
    valid = [n for n in valid if n not in reserved]
    for key in kwargs:
        if key in reserved:
            raise TypeError(f"{argument} of {where} sets {key!r}: {reserved[key]}")
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TypeError(
                f"{argument} of {where} has {key!r}, which is not a {wrapper} option: {hint}"
                f"valid options are {', '.join(valid)}"
            )
    return dict(kwargs)


def wrap_ddp(module: torch.nn.Module, **ddp_kwargs: Any) -> torch.nn.Module:
    """``idist.auto_model`` in a multi-process run (DistributedDataParallel with ``ddp_kwargs``)."""
    # auto_model wraps DataParallel in a single process that sees several GPUs: callers only
    # come here when world_size() > 1.
    return idist.auto_model(module, sync_bn=False, **ddp_kwargs)


def shard_fsdp(
    root: torch.nn.Module,
    module: torch.nn.Module,
    pick: Callable[[torch.nn.Module], bool] | None,
    device: torch.device,
    autocast: tuple[str, torch.dtype] | None,
    where: str,
    **fsdp_kwargs: Any,
) -> torch.nn.Module:
    """Shard ``root`` (which holds ``module``) with FSDP2's ``fully_shard`` over all processes: first
    every submodule of ``module`` that ``pick`` selects (innermost first), then ``root``. In place
    (parameters become DTensors under the same names); returns ``root``.

    ``autocast`` (the run's ``(device type, dtype)``) gives the ``MixedPrecisionPolicy``: parameters
    gathered in that dtype, gradients reduced in float32; an ``mp_policy`` in ``fsdp_kwargs`` wins.

    Raises:
        GraphError: ``module`` is sharded already (a module shared by two ModuleNodes); CPU
            offload on the CPU.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in module.parameters()):
        raise GraphError(
            f"{where}: parallel='fsdp', but its module is sharded already (by another ModuleNode that "
            "shares it); give the module to one ModuleNode with parallel='fsdp', or use parallel='ddp'"
        )
    options = dict(fsdp_kwargs)
    if device.type == "cpu" and isinstance(options.get("offload_policy"), CPUOffloadPolicy):
        raise GraphError(
            f"{where}: fsdp_kwargs offload_policy=CPUOffloadPolicy() moves parameters, gradients and "
            "optimizer state from an accelerator to the CPU, and this run's device is the CPU already; "
            "drop the offload_policy (or run on GPUs)"
        )
    if "mp_policy" not in options and autocast is not None:
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=autocast[1], reduce_dtype=torch.float32)
    mesh = init_device_mesh(device.type, (world_size(),))
    if pick is not None:
        for sub in reversed(list(module.modules())):  # pre-order reversed: children before their parents
            if pick(sub) and any(True for _ in sub.parameters()):
                fully_shard(sub, mesh=mesh, **options)
    # root itself, its class now also an FSDPModule (which torch's annotation alone names)
    return cast(torch.nn.Module, fully_shard(root, mesh=mesh, **options))


def full_tensors(tree: Any) -> Any:
    """``tree`` (nested dicts and lists) with every DTensor replaced by the full tensor. A
    collective when there are DTensors: every rank calls it on the same structure."""
    from torch.distributed.tensor import DTensor

    if isinstance(tree, DTensor):
        return tree.full_tensor()
    if isinstance(tree, dict):
        out: Any = type(tree)((k, full_tensors(v)) for k, v in tree.items())  # an OrderedDict may carry _metadata
        if hasattr(tree, "_metadata"):  # a module's state_dict: its version metadata
            out._metadata = tree._metadata
        return out
    if isinstance(tree, (list, tuple)):
        return type(tree)(full_tensors(v) for v in tree)
    return tree


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` sharded as the DTensor ``like`` is (each rank keeps its own piece, no communication);
    ``full`` unchanged when ``like`` is a plain tensor or a DTensor already.

    Raises:
        ValueError: the shapes differ.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor) or isinstance(full, DTensor):
        return full
    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(
            f"a saved tensor of shape {tuple(full.shape)} cannot load into a sharded parameter of "
            f"shape {tuple(like.shape)}"
        )
    local = full.detach().to(device=like.device, dtype=like.dtype)
    return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of ``tensors`` held by this process: a DTensor counts its local shard.

    Examples:
        >>> local_bytes([torch.zeros(3, dtype=torch.float32)])
        12
    """
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        local = t.to_local() if isinstance(t, DTensor) else t
        total += local.numel() * local.element_size()
    return total


def batchnorm_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The BatchNorm layers of ``module`` that ``sync_batchnorm`` converts, with their names
    (``""`` for the module itself)."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, _BATCHNORM)]


def sync_batchnorm(module: torch.nn.Module, device: torch.device, where: str) -> torch.nn.Module:
    """``module`` with its BatchNorm layers converted to ``torch.nn.SyncBatchNorm`` (in place,
    parameters and buffers shared; a new module only when ``module`` itself is a BatchNorm layer).

    Raises:
        GraphError: ``module`` has BatchNorm layers and ``device`` is one on which torch's
            SyncBatchNorm cannot train (the CPU).
    """
    layers = batchnorm_layers(module)
    if layers and device.type in _NO_SYNC_BN_DEVICES:
        raise GraphError(
            f"{where}: sync_batchnorm=True, but torch {torch.__version__}'s SyncBatchNorm trains only on GPUs "
            f"(cuda, xpu, hpu) and this run is on {device.type} "
            f"(layers {', '.join(name or '<the module>' for name, _ in layers)}). Run on GPUs (devices='cuda'), "
            "or drop sync_batchnorm=True: each process then normalises with its own batch's statistics"
        )
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module) if layers else module


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

    def __init__(self, timeout: Any = None) -> None:
        self._group = dist.new_group(backend="gloo", timeout=timeout) if world_size() > 1 else None
        # the flag's one tensor, alive until the group is freed: a gloo thread that released the last
        # reference to a collective's tensor would need the interpreter, which may be shutting down
        self._value = torch.zeros(1, dtype=torch.int32)
        self._pending: Any = None  # the all-reduce in flight

    def _drain(self) -> bool:
        """Wait for the all-reduce in flight, if any; whether it found the flag set."""
        if self._pending is None:
            return False
        work, self._pending = self._pending, None
        work.wait()
        return bool(self._value.item())

    def check(self, local: bool) -> bool:
        """Whether the flag is agreed set (at most one check after the first rank raised it)."""
        if self._group is None:
            return local
        agreed = self._drain()
        self._value.fill_(1 if local else 0)
        self._pending = dist.all_reduce(self._value, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return agreed

    def check_now(self, local: bool) -> bool:
        """A blocking check (between schedule entries)."""
        if self._group is None:
            return local
        local = self._drain() or local
        self._value.fill_(1 if local else 0)
        dist.all_reduce(self._value, op=dist.ReduceOp.MAX, group=self._group)
        return bool(self._value.item())

    def close(self) -> None:
        """Release the group (its threads end here, before the flag's tensor is dropped); errors of
        peers that already died are left to the caller's own."""
        try:
            self._drain()
            if self._group is not None:
                dist.destroy_process_group(self._group)
        except RuntimeError:
            pass
        self._pending = self._group = None  # the last reference: the group's threads are joined
