"""``ModuleNode``: an ``nn.Module``, its forward, and the optimizers that train it (B2, B6)."""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable, Mapping

import torch

from ice_ignite import parallel
from ice_ignite.errors import GraphError
from ice_ignite.nodes.node import Node, OutputCache, check_callable
from ice_ignite.optimizer import Optimizer, step_scheduler

__all__ = ["ModuleNode"]

PatternKey = "str | tuple[str, ...]"


def _key_name(key: "PatternKey") -> str:
    return key if isinstance(key, str) else " | ".join(key)


class _ForwardProxy(torch.nn.Module):
    """Holds the node's module and runs the node's forward, so that DistributedDataParallel sees
    the whole forward (including the pulls of other nodes' outputs) while ``n.module`` stays the
    raw module."""

    def __init__(self, node: "ModuleNode"):
        super().__init__()
        self.module = node.module
        object.__setattr__(self, "_node", node)  # a plain reference, not a registered submodule

    def forward(self, x: OutputCache) -> Any:
        node = self._node
        return node._forward_fn(node, x)


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
        find_unused_parameters: a DistributedDataParallel option.
        static_graph: a DistributedDataParallel option.
        broadcast_buffers: a DistributedDataParallel option.
        unused_parameters: what happens to a trainable parameter that got no gradient in an
            optimizer step: ``"error"`` (the default: a clear error naming every such parameter;
            an unused trainable parameter is almost always a bug) or ``"zero"`` (it gets an explicit
            zero gradient, so that momentum, weight decay and DistributedDataParallel treat it
            like the others; DDP then runs with ``find_unused_parameters=True``).
        resources: extra attributes or hooks (see ``Node``).

    Raises:
        ValueError: a parameter is matched twice, or a pattern matches nothing.

    Examples:
        >>> import torch, ice_ignite as ice
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> node = ice.ModuleNode(net, forward=lambda n, x: n.module(x["data"][0]),
        ...                       optimizers={r"1\\..*": ice.Optimizer(torch.optim.SGD, lr=0.1)})
        >>> [name for name, _ in node.named_trainable_parameters()]
        ['1.weight', '1.bias']
    """

    def __init__(
        self,
        module: torch.nn.Module,
        forward: Callable[["ModuleNode", OutputCache], Any],
        optimizers: "Optimizer | Mapping[PatternKey, Optimizer] | None" = None,
        weight_init_fn: Callable[[torch.nn.Module], Any] | None = None,
        *,
        find_unused_parameters: bool = False,
        static_graph: bool = False,
        broadcast_buffers: bool = True,
        unused_parameters: str = "error",
        **resources: Any,
    ):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"ModuleNode needs a torch.nn.Module, got {type(module).__name__} {module!r}")
        if forward is None:
            raise TypeError("ModuleNode needs a forward, e.g. forward=lambda n, x: n.module(x['data'][0])")
        check_callable(forward, 2, "forward of ModuleNode", "forward=lambda n, x: n.module(x['data'][0])")
        for flag, value in (("find_unused_parameters", find_unused_parameters), ("static_graph", static_graph),
                            ("broadcast_buffers", broadcast_buffers)):
            if not isinstance(value, bool):
                raise TypeError(f"ModuleNode {flag} must be True or False, got {value!r}")
        if unused_parameters not in ("error", "zero"):
            raise ValueError(f"ModuleNode unused_parameters must be 'error' or 'zero', got {unused_parameters!r}")
        what = f"ModuleNode({type(module).__name__})"
        if weight_init_fn is not None:
            check_callable(weight_init_fn, 1, f"weight_init_fn of {what}", "weight_init_fn=lambda m: ...")
            with torch.no_grad():
                weight_init_fn(module)
        self.module = module
        self.unused_parameters = unused_parameters
        self.ddp_kwargs = dict(find_unused_parameters=find_unused_parameters or unused_parameters == "zero",
                               static_graph=static_graph, broadcast_buffers=broadcast_buffers)
        specs = self._normalize_optimizers(optimizers, what)
        groups = self._match(module, specs, what)
        #: the built torch optimizers, by pattern key
        self.optimizers: dict[Any, torch.optim.Optimizer] = {}
        #: the built schedulers, by pattern key (only keys whose spec has ``lr_scheduler``)
        self.lr_schedulers: dict[Any, Any] = {}
        self._steps: list[tuple[torch.optim.Optimizer, Optimizer, Any, list[torch.nn.Parameter]]] = []
        self._trainable: list[tuple[str, torch.nn.Parameter]] = []
        for key, spec in specs.items():
            named = groups[key]
            where = f" for {what} pattern {_key_name(key)!r}"
            opt = spec.build([p for _, p in named], where)
            sched = spec.build_scheduler(opt, where)
            self.optimizers[key] = opt
            if sched is not None:
                self.lr_schedulers[key] = sched
            self._steps.append((opt, spec, sched, [p for _, p in named]))
            self._trainable.extend(named)
        self._device: torch.device | None = None
        #: the DistributedDataParallel wrapper of a multi-process run (None otherwise)
        self.ddp: torch.nn.Module | None = None
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
        return {_key_name(k): [group["lr"] for group in opt.param_groups] for k, opt in self.optimizers.items()}

    def zero_grad(self) -> None:
        """Drop the gradients of this node's optimizers (``set_to_none``)."""
        for opt, _, _, _ in self._steps:
            opt.zero_grad(set_to_none=True)

    # -- graph behaviour ----------------------------------------------------------------------
    def forward_impl(self, x: OutputCache) -> Any:
        egraph = self.egraph
        ddp = self.ddp if egraph.training else None  # evaluation needs no gradient synchronisation
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
        if self.ddp is None and self._trainable and self.egraph.training and parallel.world_size() > 1:
            # built in the first train task, with that task's trainable parameters
            # only options that differ from DDP's defaults: passing broadcast_buffers at all warns in torch 2.13
            options = {k: v for k, v in self.ddp_kwargs.items() if v != (k == "broadcast_buffers")}
            self.ddp = parallel.wrap_ddp(_ForwardProxy(self), **options)

    def _check_unused(self) -> None:
        missing = [(name, p) for name, p in self._trainable if p.grad is None and p.requires_grad]
        if not missing:
            return
        if self.unused_parameters == "zero":
            for _, p in missing:
                p.grad = torch.zeros_like(p)
            return
        raise GraphError(
            f"ModuleNode {self.uid!r}: trainable parameter(s) got no gradient in optimizer step "
            f"{self.global_train_steps + 1}: {', '.join(name for name, _ in missing)}. Use them in the forward, "
            "leave them out of the optimizer patterns to freeze them, or pass unused_parameters='zero' to the ModuleNode"
        )

    def step(self) -> None:
        """Step every optimizer (through the GradScaler, clipping first) and its scheduler; called
        by the train step at the end of an accumulation cycle."""
        if not self._steps:
            return
        self._check_unused()
        precision = self.context.precision
        scaler = precision.grad_scaler
        for opt, spec, sched, params in self._steps:
            if scaler is not None:
                # GradScaler asserts when an optimizer saw no gradient at all (ice-learn bug 17).
                if not any(p.grad is not None for p in params):
                    continue
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
    def state_dict(self) -> dict:
        """``{"module", "optimizers", "lr_schedulers"}``, optimizers and schedulers by pattern key."""
        return {
            "module": self.module.state_dict(),
            "optimizers": {_key_name(k): opt.state_dict() for k, opt in self.optimizers.items()},
            "lr_schedulers": {_key_name(k): s.state_dict() for k, s in self.lr_schedulers.items()},
        }

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Restore module, optimizers and schedulers; non-strict loading warns about what differs."""
        result = self.module.load_state_dict(state["module"], strict=strict)
        if not strict and (result.missing_keys or result.unexpected_keys):
            warnings.warn(
                f"{self.uid}: module weights loaded non-strictly; missing {result.missing_keys}, "
                f"unexpected {result.unexpected_keys}"
            )
        for kind, objects in (("optimizers", self.optimizers), ("lr_schedulers", self.lr_schedulers)):
            saved = dict(state.get(kind, {}))
            for key, obj in objects.items():
                name = _key_name(key)
                if name in saved:
                    obj.load_state_dict(saved.pop(name))
                elif strict:
                    raise KeyError(f"{self.uid}: the checkpoint has no state for {kind[:-1]} {name!r}")
                else:
                    warnings.warn(f"{self.uid}: the checkpoint has no state for {kind[:-1]} {name!r}; kept as is")
            if saved:
                msg = f"{self.uid}: the checkpoint holds {kind} {sorted(saved)} that this node does not have"
                if strict:
                    raise KeyError(msg)
                warnings.warn(msg)
