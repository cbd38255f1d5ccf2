"""``ModuleNode``: an ``nn.Module``, its forward, and the optimizers that train it (B2, B6)."""

from __future__ import annotations

import contextlib
import functools
import re
import reprlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import torch
import torch.utils.checkpoint

from ice_ignite.distributed import parallel as parallel_mod
from ice_ignite.distributed.strategies import DDP, FSDP
from ice_ignite.errors import GraphError
from ice_ignite.nodes.node import HOOKS, Node, OutputCache, check_callable
from ice_ignite.training.optimizer import Optimizer, step_scheduler

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule

__all__ = ["ModuleNode"]

PatternKey: TypeAlias = "str | tuple[str, ...]"


#: ModuleNode's own options: a resource named within two edits of one is a typo (``module`` and
#: ``forward`` are required, so Python reports theirs)
_OPTIONS = (
    "optimizers",
    "weight_init_fn",
    "find_unused_parameters",
    "static_graph",
    "broadcast_buffers",
    "unused_parameters",
    "ddp_kwargs",
    "sync_batchnorm",
    "parallel",
    "fsdp_policy",
    "fsdp_kwargs",
    "compile",
    "activation_checkpointing",
)
#: names other libraries give to a ModuleNode option (ignite's ``idist.auto_model(sync_bn=...)``)
_ALIASES = {"sync_bn": "sync_batchnorm"}
#: DDP options too generic to tell from a resource: ``dim`` is the dimension DataParallel scatters
#: inputs along, which a ModuleNode never does
_GENERIC_DDP_OPTIONS = ("dim",)
#: the DDP options ModuleNode has keywords for (not in ``ddp_kwargs``)
_OWN_DDP_OPTIONS = ("find_unused_parameters", "static_graph", "broadcast_buffers")
_UNUSED_POLICIES = ("error", "zero", "skip")
_PARALLEL = ("ddp", "fsdp", "none")
#: the keywords of the strategy options before strategies (deprecated aliases, for one release)
_LEGACY = (*_OWN_DDP_OPTIONS, "sync_batchnorm", "ddp_kwargs", "fsdp_policy", "fsdp_kwargs")
#: ``parallel``'s default: DDP with its defaults (a strategy holds no state, so one is shared)
_DEFAULT_STRATEGY = DDP()


def _strategy(parallel: Any, legacy: dict[str, Any], what: str) -> DDP | FSDP | None:
    """The strategy of ``ModuleNode(parallel=...)``, from the deprecated keywords too (``legacy``:
    ``find_unused_parameters``... ``fsdp_kwargs`` given to the ModuleNode; ``parallel`` a string)."""
    if parallel is None or isinstance(parallel, (DDP, FSDP)):
        if legacy and parallel is not _DEFAULT_STRATEGY:
            raise TypeError(
                f"{what} got parallel={parallel!r} and the strategy options {', '.join(legacy)}: pass "
                "them to the strategy, e.g. parallel=ice.DDP(find_unused_parameters=True)"
            )
        if not legacy:
            return parallel
        parallel = "ddp"
    if not isinstance(parallel, str) or parallel not in _PARALLEL:
        raise ValueError(f"{what} parallel must be ice.DDP(...), ice.FSDP(...) or None, got {parallel!r}")
    given = ", ".join(f"{k}=" for k in legacy)
    warnings.warn(
        f"{what}: parallel={parallel!r}{' and ' + given if given else ''} are deprecated: pass "
        "parallel=ice.DDP(...) (its options by name), ice.FSDP(policy=..., **fully_shard options) or None",
        DeprecationWarning,
        stacklevel=4,
    )
    fsdp = {k: legacy.pop(k) for k in ("fsdp_policy", "fsdp_kwargs") if k in legacy}
    if parallel != "fsdp" and any(v for v in fsdp.values()):
        raise TypeError(
            f"{what} got fsdp_policy/fsdp_kwargs with parallel={parallel!r}: they apply to "
            "parallel='fsdp' only; pass parallel='fsdp' or leave them out"
        )
    ddp = {k: v for k, v in legacy.items() if v != (k == "broadcast_buffers") and k != "ddp_kwargs"}
    ddp_kwargs = legacy.get("ddp_kwargs") or {}
    if parallel != "ddp" and (ddp or ddp_kwargs):
        names = (
            [k for k in ddp if k != "sync_batchnorm"]
            + (["ddp_kwargs"] if ddp_kwargs else [])
            + (["sync_batchnorm"] if "sync_batchnorm" in ddp else [])
        )
        raise TypeError(
            f"{what} got DistributedDataParallel options ({', '.join(names)}) with "
            f"parallel={parallel!r}: they apply to parallel='ddp' only; leave them out"
        )
    if parallel == "fsdp":  # checked as the keywords were, naming the node
        parallel_mod.module_policy(fsdp.get("fsdp_policy"), "fsdp_policy", what)
        options = parallel_mod.check_wrapper_kwargs(
            fsdp.get("fsdp_kwargs"),
            argument="fsdp_kwargs",
            wrapper="fully_shard",
            valid=parallel_mod.fsdp_options(),
            reserved=parallel_mod.FSDP_SET_HERE,
            where=what,
        )
        return FSDP(policy=fsdp.get("fsdp_policy"), **options)
    if parallel == "none":
        return None
    for flag in (*_OWN_DDP_OPTIONS, "sync_batchnorm"):
        if flag in legacy and not isinstance(legacy[flag], bool):
            raise TypeError(f"ModuleNode {flag} must be True or False, got {legacy[flag]!r}")
    reserved = {
        **parallel_mod.DDP_SET_HERE,
        **{o: f"pass it to the ModuleNode itself: ModuleNode(..., {o}=...)" for o in _OWN_DDP_OPTIONS},
    }
    ddp_kwargs = parallel_mod.check_wrapper_kwargs(
        ddp_kwargs,
        argument="ddp_kwargs",
        wrapper="DistributedDataParallel",
        valid=parallel_mod.ddp_options(),
        reserved=reserved,
        where=what,
    )
    return DDP(**{k: legacy[k] for k in legacy if k != "ddp_kwargs"}, **ddp_kwargs)


def key_name(key: PatternKey) -> str:
    """The name of an optimizer / scheduler pattern key in checkpoints: ``"a | b"`` for a tuple."""
    return key if isinstance(key, str) else " | ".join(key)


def _recorded(value: Any) -> Any:
    """An optimizer hyper-parameter as a checkpoint can hold it (``weights_only``): numbers, strings,
    None, tensors (copied) and tuples of them; anything else by its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    if isinstance(value, (tuple, list)):
        return tuple(_recorded(v) for v in value)
    return repr(value)


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions that turn ``a`` into ``b``."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _closest(name: str, options: Iterable[str]) -> str | None:
    """The option within two edits of ``name`` (the closest), or None."""
    near = [(_edit_distance(name, o), o) for o in options if abs(len(o) - len(name)) <= 2]
    near = [pair for pair in near if pair[0] <= 2]
    return min(near)[1] if near else None


def _check_resources(resources: Mapping[str, Any], what: str) -> None:
    """A resource that is a DDP option, or a near miss of a ModuleNode or DDP option, is an error:
    it would otherwise become an attribute nobody reads."""
    ddp = [o for o in parallel_mod.ddp_options() if o not in _GENERIC_DDP_OPTIONS]
    for key, value in resources.items():
        if key in HOOKS:
            continue
        got = f"{what} got {key}={reprlib.repr(value)}"
        resource = "a keyword that is no option becomes a resource attribute: rename it if it is one"
        if key in _ALIASES:
            raise TypeError(f"{got}: did you mean {_ALIASES[key]}? ({resource})")
        if key in ddp:
            if key in parallel_mod.DDP_SET_HERE:
                raise TypeError(f"{got}, a DistributedDataParallel option: {parallel_mod.DDP_SET_HERE[key]}")
            raise TypeError(
                f"{got}, a DistributedDataParallel option: DDP options go in ddp_kwargs, "
                f"e.g. ddp_kwargs={{{key!r}: {reprlib.repr(value)}}}"
            )
        option = _closest(key, _OPTIONS)
        if option is not None:
            raise TypeError(f"{got}: did you mean {option}? (DDP's other options go in ddp_kwargs={{...}}; {resource})")
        option = _closest(key, [o for o in ddp if o not in parallel_mod.DDP_SET_HERE])
        if option is not None:
            raise TypeError(
                f"{got}: did you mean the DistributedDataParallel option {option}? DDP options go in "
                f"ddp_kwargs={{{option!r}: ...}} ({resource})"
            )


def _checkpoint_activations(module: torch.nn.Module, pick: Callable[[torch.nn.Module], bool]) -> None:
    """Run the outermost submodules of ``module`` that ``pick`` selects under torch's
    non-reentrant activation checkpoint (``torch.utils.checkpoint.checkpoint(use_reentrant=False)``)
    by wrapping their ``forward`` in place: names, parameters and module hooks (FSDP's) unchanged,
    and ``torch.compile`` traces it (composable hook-based checkpointing recomputes wrongly there)."""
    done: list[torch.nn.Module] = []
    for sub in module.modules():
        if pick(sub) and not any(any(s is sub for s in d.modules()) for d in done):
            sub.forward = _checkpointed(sub.forward)
            done.append(sub)


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def checkpointed(*args: Any, **kwargs: Any) -> Any:
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return checkpointed


class _ForwardProxy(torch.nn.Module):
    """Holds the node's module and runs the node's forward, so that DistributedDataParallel sees
    the whole forward (including the pulls of other nodes' outputs) while ``n.module`` stays the
    raw module."""

    def __init__(self, node: ModuleNode):
        super().__init__()
        self.module = node.module
        object.__setattr__(self, "_node", node)  # a plain reference, not a registered submodule

    _node: ModuleNode  # set above, past nn.Module's __setattr__

    def forward(self, x: OutputCache) -> Any:
        node = self._node
        return node._forward_fn(node, x)


class _ShardedProxy(_ForwardProxy):
    """The ``_ForwardProxy`` FSDP2 shards as the root: ``no_sync()`` is DDP's interface for the
    train step's gradient accumulation (no reduce-scatter until the cycle's last micro-batch)."""

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate unsharded gradients without a reduce-scatter."""
        self._node._unsynced_grads = True
        cast("FSDPModule", self).set_requires_gradient_sync(False)  # a method of the FSDPModule this becomes
        try:
            yield
        finally:
            cast("FSDPModule", self).set_requires_gradient_sync(True)


class ModuleNode(Node):
    """A ``torch.nn.Module`` with the optimizers that train it.

    ``optimizers`` maps regex patterns (or tuples of patterns) to ``ice.Optimizer`` specs; each
    pattern is matched with ``re.fullmatch`` against ``module.named_parameters()`` names, and a
    single spec means ``{".*": spec}``. Parameters matched by no pattern are frozen in this node's
    train tasks; ``optimizers=None`` freezes the whole module there. Several ModuleNodes (under
    different tags) may share one module, each with its own optimizers.

    Args:
        module: the ``nn.Module``; ``n.module`` is this raw module.
        forward: ``forward(n, x)``, e.g. ``lambda n, x: n.module(x["data"][0])``.
        optimizers: ``ice.Optimizer`` or ``{pattern: ice.Optimizer}``.
        weight_init_fn: called once with the module under ``torch.no_grad()`` at construction.
        parallel: how a multi-process train task spreads the module: ``ice.DDP(...)`` (the
            default: a DistributedDataParallel replica per process, with its options), ``ice.FSDP(...)``
            (sharded with FSDP2's ``fully_shard``: each process holds 1/world of the parameters,
            gradients and optimizer state; evaluation after a sharded train task runs sharded too)
            or None (not wrapped: each process trains its own copy, gradients are not
            synchronised). The strings ``"ddp"``, ``"fsdp"``, ``"none"`` and the keywords
            ``find_unused_parameters``, ``static_graph``, ``broadcast_buffers``, ``sync_batchnorm``,
            ``ddp_kwargs``, ``fsdp_policy``, ``fsdp_kwargs`` are deprecated aliases (one release).
        unused_parameters: what happens to a trainable parameter that got no gradient in an
            optimizer step: ``"error"`` (the default: a clear error naming every such parameter;
            an unused trainable parameter is almost always a bug), ``"zero"`` (it gets an explicit
            zero gradient, so that momentum and weight decay move it like the others) or ``"skip"``
            (PyTorch's own behaviour: its optimizer skips it, weights and optimizer state untouched;
            for heads used by some tasks only). With ``"zero"`` and ``"skip"`` DDP runs with
            ``find_unused_parameters=True``.
        compile: ``True`` or a dict of ``torch.compile`` options (``backend``, ``mode``,
            ``fullgraph``, ``dynamic``...): ``n.module.forward`` runs compiled (``torch.compile`` of the
            forward, in place: parameter and checkpoint names stay those of the module).
        activation_checkpointing: the submodules whose activations are recomputed in the backward
            instead of kept (torch's non-reentrant ``torch.utils.checkpoint.checkpoint`` around their
            forward; names unchanged): ``True`` (the whole module), a module class, a tuple of
            them, or a callable ``module -> bool``.
        resources: extra attributes or hooks (see ``Node``).

    Raises:
        ValueError: a parameter is matched twice, or a pattern matches nothing.
        TypeError: a resource is a DDP option (pass it to ``ice.DDP``) or within two edits of a
            ModuleNode or DDP option (a typo).

    Examples:
        >>> import torch, ice_ignite as ice
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> node = ice.ModuleNode(net, forward=lambda n, x: n.module(x["data"][0]),
        ...                       optimizers={r"1\\..*": ice.Optimizer(torch.optim.SGD, lr=0.1)})
        >>> [name for name, _ in node.named_trainable_parameters()]
        ['1.weight', '1.bias']
    """

    _forward_fn: Callable[[ModuleNode, OutputCache], Any]  # required here (Node's may be None)

    def __init__(
        self,
        module: torch.nn.Module,
        forward: Callable[[ModuleNode, OutputCache], Any],
        optimizers: Optimizer | Mapping[PatternKey, Optimizer] | None = None,
        weight_init_fn: Callable[[torch.nn.Module], Any] | None = None,
        *,
        parallel: DDP | FSDP | str | None = _DEFAULT_STRATEGY,
        unused_parameters: str = "error",
        compile: bool | Mapping[str, Any] = False,
        activation_checkpointing: Any = None,
        **resources: Any,
    ):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"ModuleNode needs a torch.nn.Module, got {type(module).__name__} {module!r}")
        if forward is None:
            raise TypeError("ModuleNode needs a forward, e.g. forward=lambda n, x: n.module(x['data'][0])")
        check_callable(forward, 2, "forward of ModuleNode", "forward=lambda n, x: n.module(x['data'][0])")
        if unused_parameters not in _UNUSED_POLICIES:
            raise ValueError(
                f"ModuleNode unused_parameters must be 'error', 'zero' or 'skip', got {unused_parameters!r}"
            )
        what = f"ModuleNode({type(module).__name__})"
        legacy = {k: resources.pop(k) for k in _LEGACY if k in resources}
        _check_resources(resources, what)
        #: how multi-process train tasks spread the module: an ``ice.DDP``, an ``ice.FSDP`` or None
        self.strategy = _strategy(parallel, legacy, what)
        #: the strategy's kind: "ddp", "fsdp" or "none"
        self.parallel = {DDP: "ddp", FSDP: "fsdp"}.get(type(self.strategy), "none")
        compile_kwargs: dict[str, Any] | None
        if isinstance(compile, bool):
            compile_kwargs = {} if compile else None
        elif isinstance(compile, Mapping):
            compile_kwargs = parallel_mod.check_wrapper_kwargs(
                compile,
                argument="compile",
                wrapper="torch.compile",
                valid=parallel_mod.compile_options(),
                reserved={},
                where=what,
            )
        else:
            raise TypeError(
                f"{what} compile must be True, False or a dict of torch.compile options, got "
                f"{compile!r}; e.g. compile={{'backend': 'inductor', 'mode': 'max-autotune'}}"
            )
        checkpointed = parallel_mod.module_policy(activation_checkpointing, "activation_checkpointing", what)
        if weight_init_fn is not None:
            check_callable(weight_init_fn, 1, f"weight_init_fn of {what}", "weight_init_fn=lambda m: ...")
            with torch.no_grad():
                weight_init_fn(module)
        if checkpointed is not None:
            _checkpoint_activations(module, checkpointed)
        if compile_kwargs is not None:
            # the forward, in place: no ``_orig_mod.`` in parameter or state_dict names, and module hooks
            # (FSDP's, activation checkpointing's) stay outside the compiled code. (``nn.Module.compile``
            # compiles ``_call_impl``, which torch 2.13's dynamo skips as torch code: nothing compiles.)
            module.forward = torch.compile(module.forward, **compile_kwargs)
        #: the ``torch.compile`` options (None: not compiled)
        self.compile_kwargs = compile_kwargs
        self.module = module
        self.unused_parameters = unused_parameters
        specs = self._normalize_optimizers(optimizers, what)
        groups = self._match(module, specs, what)
        #: the built torch optimizers, by pattern key
        self.optimizers: dict[Any, torch.optim.Optimizer] = {}
        #: the built schedulers, by pattern key (only keys whose spec has ``lr_scheduler``)
        self.lr_schedulers: dict[Any, Any] = {}
        self._steps: list[tuple[torch.optim.Optimizer, Optimizer, Any, list[torch.nn.Parameter]]] = []
        self._trainable: list[tuple[str, torch.nn.Parameter]] = []
        #: what each optimizer trains with, by pattern key name (``training_record``)
        self._training_record: dict[str, dict] = {}
        self._built_groups: dict[str, list[dict]] = {}
        for key, spec in specs.items():
            named = groups[key]
            where = f" for {what} pattern {key_name(key)!r}"
            opt = spec.build([p for _, p in named], where)
            self._training_record[key_name(key)] = {  # as built: before a scheduler changes the lr
                "class": f"{type(opt).__module__}.{type(opt).__qualname__}",
                "grad_clip_norm": spec.grad_clip_norm,
                "hyper_parameters": [
                    {k: _recorded(v) for k, v in group.items() if k != "params"} for group in opt.param_groups
                ],
            }
            self._built_groups[key_name(key)] = [
                {k: v for k, v in group.items() if k != "params"} for group in opt.param_groups
            ]
            sched = spec.build_scheduler(opt, where)
            self.optimizers[key] = opt
            if sched is not None:
                self.lr_schedulers[key] = sched
            self._steps.append((opt, spec, sched, [p for _, p in named]))
            self._trainable.extend(named)
        self._device: torch.device | None = None
        #: the wrapper of a multi-process run: DistributedDataParallel (``parallel="ddp"``) or the
        #: FSDP2 root (``"fsdp"``), both with ``no_sync()``; None otherwise
        self.ddp: torch.nn.Module | None = None
        self._unsynced_grads = False
        self._batchnorm_hooks: list[Any] = []
        self._batchnorm_warned = False
        super().__init__(forward=forward, **resources)

    @staticmethod
    def _normalize_optimizers(optimizers: Any, what: str) -> dict:
        if optimizers is None:
            return {}
        if isinstance(optimizers, Optimizer):
            return {".*": optimizers}
        if not isinstance(optimizers, Mapping):
            raise TypeError(
                f"optimizers of {what} must be an ice.Optimizer or a dict {{pattern: ice.Optimizer}}, got "
                f"{type(optimizers).__name__}; e.g. optimizers=ice.Optimizer(torch.optim.Adam, lr=1e-3)"
            )
        for key, spec in optimizers.items():
            patterns = (key,) if isinstance(key, str) else key
            if not isinstance(patterns, tuple) or not patterns or not all(isinstance(p, str) for p in patterns):
                raise TypeError(f"optimizer key {key!r} of {what} must be a regex string or a tuple of them")
            for p in patterns:
                try:
                    re.compile(p)
                except re.error as e:
                    raise ValueError(f"optimizer pattern {p!r} of {what} is not a valid regex: {e}") from None
            if not isinstance(spec, Optimizer):
                raise TypeError(
                    f"optimizers[{key!r}] of {what} must be an ice.Optimizer, got {type(spec).__name__}; "
                    "wrap it: ice.Optimizer(torch.optim.SGD, lr=0.1)"
                )
        return dict(optimizers)

    @staticmethod
    def _match(module: torch.nn.Module, specs: dict, what: str) -> dict:
        named = list(module.named_parameters())
        groups: dict = {key: [] for key in specs}
        owner: dict[str, str] = {}
        hits: dict[str, int] = {}
        for key in specs:
            for pattern in (key,) if isinstance(key, str) else key:
                hits[pattern] = 0
                regex = re.compile(pattern)
                for name, param in named:
                    if regex.fullmatch(name):
                        hits[pattern] += 1
                        if name in owner:
                            raise ValueError(
                                f"parameter {name!r} of {what} is matched by pattern {owner[name]!r} and by "
                                f"pattern {pattern!r}: give each parameter to one optimizer"
                            )
                        owner[name] = pattern
                        groups[key].append((name, param))
        for pattern, count in hits.items():
            if count == 0:
                sample = ", ".join(n for n, _ in named[:6]) + (", ..." if len(named) > 6 else "")
                raise ValueError(
                    f"optimizer pattern {pattern!r} of {what} matches no parameter (patterns are "
                    f"re.fullmatch'ed against names such as: {sample or 'none: the module has no parameters'})"
                )
        return groups

    def named_trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """Parameters this node's optimizers train, with their names."""
        return list(self._trainable)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters this node's optimizers train."""
        return [p for _, p in self._trainable]

    def learning_rates(self) -> dict[str, list[float]]:
        """The learning rate of every parameter group of every optimizer, by pattern key."""
        return {key_name(k): [group["lr"] for group in opt.param_groups] for k, opt in self.optimizers.items()}

    def training_record(self) -> dict[str, dict]:
        """What each optimizer trains with, by pattern key name: its ``class`` (qualified name),
        ``grad_clip_norm`` and ``hyper_parameters`` (every param group's entries but ``params``, as
        the optimizer was built from the code, before any LR scheduler changed them). Checkpoints
        carry it, so that a resume can tell that the code changed them (``strict_resume``)."""
        return {
            name: {**record, "hyper_parameters": [dict(group) for group in record["hyper_parameters"]]}
            for name, record in self._training_record.items()
        }

    def built_hyper_parameters(self) -> dict[str, list[dict]]:
        """Every optimizer's param-group entries but ``params`` as built from the code (before any
        LR scheduler), by pattern key name: the values a lenient resume restores over the
        checkpoint's when the code changed them."""
        return {name: [dict(group) for group in groups] for name, groups in self._built_groups.items()}

    def zero_grad(self) -> None:
        """Drop the gradients of this node's optimizers (``set_to_none``)."""
        for opt, _, _, _ in self._steps:
            opt.zero_grad(set_to_none=True)
        self._unsynced_grads = False

    # -- graph behaviour ----------------------------------------------------------------------
    def forward_impl(self, x: OutputCache) -> Any:
        egraph = self.egraph
        assert egraph is not None  # forwards run inside a task
        # evaluation needs no gradient synchronisation, but sharded parameters are gathered by the FSDP root
        ddp = self.ddp if egraph.training or isinstance(self.strategy, FSDP) else None
        autocast = egraph.autocast
        if autocast is None:
            return ddp(x) if ddp is not None else self._forward_fn(self, x)
        with torch.autocast(autocast[0], dtype=autocast[1]):
            return ddp(x) if ddp is not None else self._forward_fn(self, x)

    def _on_prepare(self) -> None:
        device = self.device
        if self._device != device:
            self.module.to(device)
            self._device = device
        assert self.egraph is not None  # hooks run inside a task
        if not self.egraph.training or parallel_mod.world_size() == 1:
            return
        if self.sync_batchnorm:  # before DDP is built, as torch's SyncBatchNorm asks
            self.module = parallel_mod.sync_batchnorm(self.module, device, f"ModuleNode {self.uid!r}")
        elif not self._batchnorm_warned and not self._batchnorm_hooks:
            for _, layer in parallel_mod.batchnorm_layers(self.module):
                self._batchnorm_hooks.append(layer.register_forward_pre_hook(self._batchnorm_forward))
        if self.ddp is None and self._trainable:
            # built in the first train task, with that task's trainable parameters
            if isinstance(self.strategy, DDP):
                self.ddp = parallel_mod.wrap_ddp(_ForwardProxy(self), **self.strategy.flags(self.unused_parameters))
            elif isinstance(self.strategy, FSDP):
                self.ddp = self._shard(device, self.strategy, self.egraph.autocast)
        else:
            self.reshard_root()

    @property
    def sync_batchnorm(self) -> bool:
        """Whether multi-process train tasks convert BatchNorm layers to SyncBatchNorm (``ice.DDP``)."""
        return isinstance(self.strategy, DDP) and self.strategy.sync_batchnorm

    @property
    def ddp_kwargs(self) -> dict[str, Any]:
        """The ``ice.DDP`` strategy's other DistributedDataParallel options ({} without DDP)."""
        return dict(self.strategy.ddp_kwargs) if isinstance(self.strategy, DDP) else {}

    @property
    def fsdp_kwargs(self) -> dict[str, Any]:
        """The ``ice.FSDP`` strategy's ``fully_shard`` options ({} without FSDP)."""
        return dict(self.strategy.fully_shard_kwargs) if isinstance(self.strategy, FSDP) else {}

    def release_wrapper(self) -> None:
        """At the end of a run: drop the DistributedDataParallel wrapper, which holds the process
        group, so that the group (and its threads) is freed when its launcher destroys it, as in a
        plain ignite script; the next multi-process train task wraps the module again. An
        FSDP-sharded module keeps its sharding: that is the module itself."""
        if not self.sharded:
            self.ddp = None

    def reshard_root(self) -> None:
        """Before a train task's repetition: FSDP2 keeps the root's parameters unsharded after a
        forward (it expects the backward); after an eval task's forwards they would be the ones the
        next backward gives gradients to. No-op unless the module is FSDP-sharded."""
        if self.sharded:
            cast("FSDPModule", self.ddp).reshard()

    def _shard(self, device: torch.device, strategy: FSDP, autocast: tuple[str, torch.dtype] | None) -> torch.nn.Module:
        """Shard the module with FSDP2 and point the optimizers at the sharded parameters (their
        state, if any was loaded, sharded the same way)."""
        names = {id(p): name for name, p in self.module.named_parameters()}
        root = parallel_mod.shard_fsdp(
            _ShardedProxy(self),
            self.module,
            strategy.pick,
            device,
            autocast,
            f"ModuleNode {self.uid!r}",
            **strategy.fully_shard_kwargs,
        )
        sharded = dict(self.module.named_parameters())
        new = {pid: sharded[name] for pid, name in names.items()}
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                for i, old in enumerate(group["params"]):
                    param = group["params"][i] = new[id(old)]  # in place: schedulers keep their optimizer
                    if old in opt.state:
                        opt.state[param] = {k: self._shard_state(v, param) for k, v in opt.state.pop(old).items()}
        self._trainable = [(name, sharded[name]) for name, _ in self._trainable]
        self._steps = [(opt, spec, sched, [new[id(p)] for p in params]) for opt, spec, sched, params in self._steps]
        return root

    @staticmethod
    def _shard_state(value: Any, param: torch.Tensor) -> Any:
        """An optimizer state value of ``param`` sharded as ``param`` (tensors of its shape only)."""
        if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) == tuple(param.shape):
            return parallel_mod.shard_like(value, param)
        return value

    def _batchnorm_forward(self, layer: torch.nn.Module, args: Any) -> None:
        """The first BatchNorm forward of a multi-process train task without sync_batchnorm: say
        once which layers train with per-process statistics (after the prepare hooks, which may
        have frozen them)."""
        for handle in self._batchnorm_hooks:
            handle.remove()
        self._batchnorm_hooks = []
        training = [
            f"{name or '<the module>'} ({type(m).__name__})"
            for name, m in parallel_mod.batchnorm_layers(self.module)
            if m.training
        ]
        if not training or not self.training or parallel_mod.world_size() == 1:
            return
        self._batchnorm_warned = True
        if self.launcher is None or self.launcher.local_rank == 0:
            warnings.warn(
                f"ModuleNode {self.uid!r}: BatchNorm layer(s) {', '.join(training)} of {type(self.module).__name__} "
                f"train with per-process batch statistics in this {parallel_mod.world_size()}-process run. Pass "
                "sync_batchnorm=True to the ModuleNode to compute them over the global batch (GPUs only), or keep "
                "per-process statistics knowingly (put the layers in eval mode to freeze them)",
                stacklevel=2,
            )

    def _check_unused(self) -> None:
        missing = []
        for name, p in self._trainable:  # a loop, not a comprehension: no frame of its own per step
            if p.grad is None and p.requires_grad:
                missing.append((name, p))
        if not missing:
            return
        if self.unused_parameters == "zero":
            for _, p in missing:
                p.grad = torch.zeros_like(p)
            return
        raise GraphError(
            f"ModuleNode {self.uid!r}: trainable parameter(s) got no gradient in optimizer step "
            f"{self.global_train_steps + 1}: {', '.join(name for name, _ in missing)}. Use them in the forward, "
            "leave them out of the optimizer patterns to freeze them, or pass unused_parameters='zero' (a zero "
            "gradient) or 'skip' (the optimizer skips them) to the ModuleNode"
        )

    def step(self) -> None:
        """Step every optimizer (through the GradScaler, clipping first) and its scheduler; called
        by the train step at the end of an accumulation cycle."""
        self._unsynced_grads = False
        if not self._steps:
            return
        if self.unused_parameters != "skip":  # "skip": torch's optimizers skip parameters whose grad is None
            self._check_unused()
        precision = self._ctx("step").precision
        scaler = precision.grad_scaler
        for opt, spec, sched, params in self._steps:
            # GradScaler.step asserts when an optimizer saw no gradient at all (ice-learn bug 17); such an
            # optimizer steps without it, which changes nothing but keeps its scheduler in step
            if scaler is not None and any(p.grad is not None for p in params):
                if spec.grad_clip_norm is not None:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, spec.grad_clip_norm)
                scaler.step(opt)
                precision.scaler_stepped = True
            else:
                if spec.grad_clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, spec.grad_clip_norm)
                opt.step()
            if sched is not None:
                step_scheduler(sched)

    # -- checkpoint ---------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        """Whether the module is sharded with FSDP2 now (after the first multi-process train task)."""
        return isinstance(self.strategy, FSDP) and self.ddp is not None

    def state_dict(self, full: bool = True) -> dict:
        """``{"module", "optimizers", "lr_schedulers"}``, optimizers and schedulers by pattern key.

        Sharded (``parallel="fsdp"``), the tensors are gathered into full ones (a collective: every
        rank calls it), so the state has the layout of an unsharded run and loads into any. With
        ``full=False`` they stay sharded: DTensors, each rank holding its own pieces, no
        communication (what a sharded checkpoint writes, each rank its part).

        Raises:
            GraphError: sharded, in the middle of an accumulation cycle (the gradients gathered so
                far are held unsharded inside FSDP and would be lost).
        """
        if self.sharded and self._unsynced_grads:
            raise GraphError(
                f"ModuleNode {self.uid!r}: a checkpoint in the middle of a gradient accumulation cycle of a "
                "parallel='fsdp' module would lose the gradients accumulated so far (FSDP holds them unsharded); "
                "checkpoint at the end of a cycle (after a multiple of grad_acc_steps iterations) or use "
                "parallel='ddp'"
            )
        state = {
            "module": self.module.state_dict(),
            "optimizers": {key_name(k): opt.state_dict() for k, opt in self.optimizers.items()},
            "lr_schedulers": {key_name(k): s.state_dict() for k, s in self.lr_schedulers.items()},
        }
        return parallel_mod.full_tensors(state) if self.sharded and full else state

    def _sharded_optimizer_state(self, opt: torch.optim.Optimizer, saved: dict) -> dict:
        """``saved`` (an optimizer state_dict of full tensors) with each parameter's state sharded as
        the parameter is."""
        params = [p for group in opt.param_groups for p in group["params"]]
        state = {
            i: {k: self._shard_state(v, params[i]) for k, v in values.items()}
            if isinstance(i, int) and 0 <= i < len(params)
            else values
            for i, values in saved["state"].items()
        }
        return {**saved, "state": state}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Restore module, optimizers and schedulers; non-strict loading warns about what differs."""
        weights = state["module"]
        if self.sharded:  # full tensors into sharded parameters: each rank keeps its piece
            current = self.module.state_dict()
            weights = {k: parallel_mod.shard_like(v, current[k]) if k in current else v for k, v in weights.items()}
        result = self.module.load_state_dict(weights, strict=strict)
        if not strict and (result.missing_keys or result.unexpected_keys):
            warnings.warn(
                f"{self.uid}: module weights loaded non-strictly; missing {result.missing_keys}, "
                f"unexpected {result.unexpected_keys}",
                stacklevel=2,
            )
        for kind, objects in (("optimizers", self.optimizers), ("lr_schedulers", self.lr_schedulers)):
            saved = dict(state.get(kind, {}))
            for key, obj in objects.items():
                name = key_name(key)
                if name in saved:
                    value = saved.pop(name)
                    if self.sharded and kind == "optimizers":
                        value = self._sharded_optimizer_state(obj, value)
                    obj.load_state_dict(value)
                elif strict:
                    raise KeyError(f"{self.uid}: the checkpoint has no state for {kind[:-1]} {name!r}")
                else:
                    warnings.warn(
                        f"{self.uid}: the checkpoint has no state for {kind[:-1]} {name!r}; kept as is", stacklevel=2
                    )
            if saved:
                msg = f"{self.uid}: the checkpoint holds {kind} {sorted(saved)} that this node does not have"
                if strict:
                    raise KeyError(msg)
                warnings.warn(msg, stacklevel=2)
