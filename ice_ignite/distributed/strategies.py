"""How a ModuleNode spreads over the processes of a multi-process train task: ``ice.DDP`` (the
default) or ``ice.FSDP``, passed as ``ModuleNode(..., parallel=...)``; ``parallel=None`` keeps a
copy of the module in every process, untouched. Each strategy owns its options and their checks:
a misspelt option is a ``TypeError`` when the strategy is built.
"""

from __future__ import annotations

from typing import Any

from ice_ignite.distributed import parallel

__all__ = ["DDP", "FSDP"]

#: DDP options a ``DDP`` strategy takes by name (the others go through ``**ddp_kwargs``), for its repr
_OWN = ("find_unused_parameters", "static_graph", "broadcast_buffers")


class DDP:
    """Replicate the module in every process and all-reduce its gradients with torch's
    ``DistributedDataParallel`` (built in the first multi-process train task).

    Args:
        find_unused_parameters: DDP's option (ModuleNode's ``unused_parameters`` other than
            ``"error"`` sets it too).
        static_graph: DDP's option.
        broadcast_buffers: DDP's option.
        sync_batchnorm: convert the module's BatchNorm layers to ``torch.nn.SyncBatchNorm``
            before wrapping (statistics over the global batch; GPUs only, torch cannot train it on
            the CPU). Without it, BatchNorm layers that train in a multi-process run use
            per-process statistics, and a warning says so once.
        ddp_kwargs: any other ``DistributedDataParallel`` option, checked against its signature.

    Raises:
        TypeError: a flag is not a bool, or an option is unknown to DistributedDataParallel (with
            the closest name) or set by ice_ignite itself.

    Examples:
        >>> import ice_ignite as ice
        >>> ice.DDP(static_graph=True, bucket_cap_mb=50)
        DDP(static_graph=True, bucket_cap_mb=50)
    """

    def __init__(
        self,
        *,
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        broadcast_buffers: bool = True,
        sync_batchnorm: bool = False,
        **ddp_kwargs: Any,
    ):
        for flag, value in (
            ("find_unused_parameters", find_unused_parameters),
            ("static_graph", static_graph),
            ("broadcast_buffers", broadcast_buffers),
            ("sync_batchnorm", sync_batchnorm),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"ice.DDP {flag} must be True or False, got {value!r}")
        self.find_unused_parameters = find_unused_parameters
        self.static_graph = static_graph
        self.broadcast_buffers = broadcast_buffers
        self.sync_batchnorm = sync_batchnorm
        # the named options are valid too (so that a misspelt one is suggested); they never reach ddp_kwargs
        #: the other DistributedDataParallel options
        self.ddp_kwargs = parallel.check_wrapper_kwargs(
            ddp_kwargs,
            argument="options",
            wrapper="DistributedDataParallel",
            valid=[*parallel.ddp_options(), "sync_batchnorm"],
            reserved=parallel.DDP_SET_HERE,
            where="ice.DDP(...)",
        )

    def flags(self, unused_parameters: str) -> dict[str, Any]:
        """The DDP options to pass: those that differ from DDP's defaults (passing
        ``broadcast_buffers`` at all warns in torch 2.13), with ``find_unused_parameters`` on for
        a ModuleNode whose ``unused_parameters`` policy is not ``"error"``."""
        flags = {
            "find_unused_parameters": self.find_unused_parameters or unused_parameters != "error",
            "static_graph": self.static_graph,
            "broadcast_buffers": self.broadcast_buffers,
        }
        return {**{k: v for k, v in flags.items() if v != (k == "broadcast_buffers")}, **self.ddp_kwargs}

    def __repr__(self) -> str:
        given = [
            f"{k}={getattr(self, k)!r}"
            for k in (*_OWN, "sync_batchnorm")
            if getattr(self, k) != (k == "broadcast_buffers")
        ]
        return f"DDP({', '.join(given + [f'{k}={v!r}' for k, v in self.ddp_kwargs.items()])})"


class FSDP:
    """Shard the module's parameters, gradients and optimizer state over the processes with
    torch's FSDP2 ``fully_shard`` (in the first multi-process train task); checkpoints of a graph
    holding sharded ModuleNodes are directories every process writes its shards to.

    Args:
        policy: the blocks sharded (and gathered) one by one, inside out, before the whole
            module: a module class, a tuple of them, or a callable ``module -> bool``; None (the
            default) shards the module as one unit.
        fully_shard_kwargs: any other ``fully_shard`` option (``reshard_after_forward``,
            ``mp_policy``...), checked against its signature; without ``mp_policy`` the graph's
            autocast dtype becomes the FSDP mixed-precision policy.

    Raises:
        TypeError: an option is unknown to ``fully_shard`` or set by ice_ignite itself, or the
            policy is neither a predicate nor a tuple of classes.

    Examples:
        >>> import ice_ignite as ice
        >>> ice.FSDP(reshard_after_forward=False)
        FSDP(reshard_after_forward=False)
    """

    def __init__(self, *, policy: Any = None, **fully_shard_kwargs: Any):
        self.policy = policy
        #: ``pick(module)``: whether a submodule is an FSDP unit of its own (None: the root only)
        self.pick = parallel.module_policy(policy, "policy", "ice.FSDP(...)")
        #: the ``fully_shard`` options
        self.fully_shard_kwargs = parallel.check_wrapper_kwargs(
            fully_shard_kwargs,
            argument="options",
            wrapper="fully_shard",
            valid=parallel.fsdp_options(),
            reserved=parallel.FSDP_SET_HERE,
            where="ice.FSDP(...)",
        )

    def __repr__(self) -> str:
        given = ([f"policy={self.policy!r}"] if self.policy is not None else []) + [
            f"{k}={v!r}" for k, v in self.fully_shard_kwargs.items()
        ]
        return f"FSDP({', '.join(given)})"
