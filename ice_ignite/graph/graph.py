"""The per-iteration output cache, ``engine.state.output``, and ``ExecutableGraph``: the nodes one
task selected, run as the process function of the task's engine (API.md B2, B3)."""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, cast

import torch
from ignite.engine import Events

from ice_ignite.engine.engine import TaskEngine
from ice_ignite.engine.events import StepEvents
from ice_ignite.engine.roles import TaskView, name_of
from ice_ignite.errors import GraphError, IceError, NodeError, NodeNotSelectedError, StopAllTasks, StopTask
from ice_ignite.nodes.context import RunContext
from ice_ignite.nodes.dataset import DatasetNode
from ice_ignite.nodes.loss import LossNode
from ice_ignite.nodes.module import ModuleNode
from ice_ignite.nodes.node import HOOKS, Node
from ice_ignite.observe.timing import NodeTimer

__all__ = ["GraphOutputCache", "ExecutableGraph", "PHASE_EVENTS", "detach"]

logger = logging.getLogger("ice_ignite")

# Exceptions that pass through node error reporting untouched.
_PASS_THROUGH = (StopTask, StopAllTasks, IceError, KeyboardInterrupt)

#: the engine event each node hook is a handler of
PHASE_EVENTS = {
    "prepare": Events.STARTED,
    "epoch_start": Events.EPOCH_STARTED,
    "backward": StepEvents.BACKWARD_COMPLETED,
    "update": Events.ITERATION_COMPLETED,
    "epoch_end": Events.EPOCH_COMPLETED,
    "clean_up": Events.COMPLETED,
}


#: the deepest chain of pulls (``x["a"]`` whose forward pulls ``x["b"]``...) evaluated; a deeper
#: one is a GraphError naming it rather than a RecursionError blamed on whichever node it hit
MAX_PULL_DEPTH = 2000
#: every this many nodes of depth, the recursion limit is checked (and raised for the next ones)
_DEPTH_STEP = 25
#: interpreter frames a pull may take: the cache, the node, its forward and what it calls (nn.Module, autocast)
_FRAMES_PER_PULL = 40


def _chain(names: list[str]) -> str:
    """``a -> b -> c``, the middle left out of a long chain."""
    if len(names) <= 8:
        return " -> ".join(names)
    return f"{' -> '.join(names[:3])} -> ... ({len(names) - 6} more) -> {' -> '.join(names[-3:])}"


def _describe_tags(tags: tuple[str, ...]) -> str:
    return ",".join(tags)


def detach(value: Any) -> Any:
    """``value`` with every tensor in it (nested lists, tuples, dicts) detached."""
    if isinstance(value, torch.Tensor):
        return value.detach() if value.requires_grad else value
    if isinstance(value, (list, tuple)):
        items = [(v.detach() if v.requires_grad else v) if isinstance(v, torch.Tensor) else detach(v) for v in value]
        if isinstance(value, tuple):
            return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
        return items
    if isinstance(value, dict):
        return {k: detach(v) for k, v in value.items()}
    return value


class _NoSync(Protocol):
    """A wrapper whose gradients are not synchronised inside ``no_sync()`` (DDP, an FSDP2 root)."""

    def no_sync(self) -> AbstractContextManager[None]: ...


class GraphOutputCache:
    """The ``x`` of ``forward(n, x)``: ``x["name"]`` is node ``name``'s output this iteration.

    A node is computed on first use and cached until the next iteration starts; each use inside
    a forward records a dependency edge (``deps[user][name]``), in the order they were pulled.
    ``"name" in x`` tells whether the task selected that node.
    """

    __slots__ = ("_graph", "_limit", "_nodes", "_stack", "_timer", "deps", "outputs")

    def __init__(self, graph: ExecutableGraph):
        self._graph = graph
        self._nodes = graph.nodes
        #: this iteration's outputs by name, in the order computed (read it; the cache writes it)
        self.outputs: dict[str, Any] = {}
        self._stack: list[str] = []
        self.deps: dict[str, dict[str, None]] = {name: {} for name in graph.nodes}
        self._timer: NodeTimer | None = None
        #: the interpreter's recursion limit before a deep pull raised it (restored when it ends)
        self._limit: int | None = None

    def __getitem__(self, name: str) -> Any:
        stack = self._stack
        if stack:
            self.deps[stack[-1]][name] = None
        values = self.outputs
        if name in values:
            return values[name]
        return self._compute(name)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def keys(self) -> Iterator[str]:
        """Names of the nodes computed so far this iteration."""
        return iter(list(self.outputs))

    def pulling(self) -> str | None:
        """The name of the node whose forward runs now (the innermost), or None."""
        stack = self._stack
        return stack[-1] if stack else None

    def value(self, name: str) -> Any:
        """The output node ``name`` computed this iteration (no dependency recorded)."""
        return self.outputs[name]

    def compute_all(self, names: list[str]) -> None:
        """Forward every node of ``names`` not computed yet, in order."""
        values = self.outputs
        for name in names:
            if name not in values:
                self._compute(name)

    def _compute(self, name: str) -> Any:
        stack = self._stack
        node = self._nodes.get(name)
        if node is None:
            raise self._graph.not_selected_error(name, stack)
        if name in stack:
            path = " -> ".join(stack[stack.index(name) :] + [name])
            raise GraphError(
                f"cycle in the graph of task tags ({_describe_tags(self._graph.tags)}): {path}; "
                "a node may not depend on itself, directly or through others"
            )
        if len(stack) >= _DEPTH_STEP and len(stack) % _DEPTH_STEP == 0:
            self._deepen(name)
        stack.append(name)
        try:
            timer = self._timer
            if timer is None:
                out = node.forward_impl(self)
            else:
                out = timer.forward(str(node.uid), lambda: node.forward_impl(self))
        except _PASS_THROUGH:
            raise
        except Exception as e:
            deep = f" at depth {len(stack)} of a chain of pulls" if isinstance(e, RecursionError) else ""
            raise NodeError(
                f"node {node.uid!r} raised {type(e).__name__} in forward{deep}: {e}"
                + (f" (pulled by {_chain(stack[:-1])})" if len(stack) > 1 else ""),
                str(node.uid),
                "forward",
            ) from e
        finally:
            stack.pop()
            if not stack and self._limit is not None:
                sys.setrecursionlimit(self._limit)
                self._limit = None
        self.outputs[name] = out
        return out

    def _deepen(self, name: str) -> None:
        """A pull ``_DEPTH_STEP`` more nodes deep: lazy pulls recurse (each forward asks for the
        next), so raise the interpreter's recursion limit for it (restored when the outermost pull
        ends) — up to ``MAX_PULL_DEPTH`` nodes, beyond which a GraphError names the depth and chain."""
        stack = self._stack
        depth = len(stack) + 1
        if depth > MAX_PULL_DEPTH:
            raise GraphError(
                f"the graph of task tags ({_describe_tags(self._graph.tags)}) is more than {MAX_PULL_DEPTH} nodes deep: "
                f"pulling {name!r} makes a chain of {depth} nodes, each forward asking for the next "
                f"({_chain(stack + [name])}); ice_ignite evaluates chains of pulls up to {MAX_PULL_DEPTH} nodes deep. "
                "Compute a long chain inside one node (a loop over its modules), or have each node pull a node "
                "computed earlier in add order (add producers before their consumers), which keeps chains short"
            )
        limit = sys.getrecursionlimit()
        if self._limit is None:
            self._limit = limit
        needed = self._limit + _FRAMES_PER_PULL * (depth + _DEPTH_STEP)
        if limit < needed:
            sys.setrecursionlimit(needed)

    def clear(self) -> None:
        """Release the outputs of the last iteration."""
        self.outputs.clear()
        self._stack.clear()


def _handler(node: Node, fn: Callable[[], None], phase: str, timer: NodeTimer | None) -> Callable[[], None]:
    """``fn`` as an engine handler: an exception becomes a NodeError naming the node and phase."""

    def handler() -> None:
        try:
            if timer is None:
                fn()
            else:
                start = timer.now()
                fn()
                timer.add(str(node.uid), phase, timer.now() - start)
        except _PASS_THROUGH:
            raise
        except Exception as e:
            raise NodeError(f"node {node.uid!r} raised {type(e).__name__} in {phase}: {e}", str(node.uid), phase) from e

    return handler


class ExecutableGraph:
    """The nodes a task selected, in ``add`` order, and the process function of its engine.

    Built and cached by ``HyperGraph.select_egraph(tags)``. ``train_step`` forwards every node,
    sums ``weight * loss`` over the LossNodes, runs one backward and, at the end of an
    accumulation cycle, steps the optimizers; ``eval_step`` forwards. Node hooks, metrics and
    policies are handlers of the engine's events (``attach`` adds them when the engine's run
    starts; ``bind`` makes the graph the running one at every repetition).
    """

    def __init__(
        self, nodes: dict[str, Node], tags: tuple[str, ...], context: RunContext, uids_of: Callable[[str], list[str]]
    ):
        self.nodes = nodes
        self.tags = tags
        self.context = context
        self._uids_of = uids_of
        self.cache = GraphOutputCache(self)
        self.task: TaskView | None = None
        self.training = False
        #: True in the train iteration that ends an accumulation cycle (optimizers step); a
        #: handler of BACKWARD_COMPLETED may set it False to skip the step (non-finite policy)
        self.step_now = False
        #: the summed, unscaled loss of the current train iteration (None without LossNodes)
        self.loss: torch.Tensor | None = None
        #: (device type, dtype) when ModuleNode and LossNode forwards run under autocast
        self.autocast: tuple[str, torch.dtype] | None = None
        self.loss_nodes = [n for n in nodes.values() if isinstance(n, LossNode)]
        self._loss_names = [name for name, n in nodes.items() if isinstance(n, LossNode)]
        self.module_nodes = [n for n in nodes.values() if isinstance(n, ModuleNode)]
        self.dataset_nodes = [n for n in nodes.values() if isinstance(n, DatasetNode)]
        self._data_names = frozenset(n._name for n in self.dataset_nodes)
        self._names = list(nodes)
        self._batch_source: dict[str, DatasetNode | None] = {}
        self._loss_sources: list[DatasetNode | None] | None = None
        self._cycle_len = 1
        self._ddp: list[_NoSync] = []
        self._cleaned = True
        #: True while the process function runs (no checkpoint can be taken then)
        self.in_step = False
        #: phase -> (built-in behaviour of node kinds, user hooks), each in ``add`` order
        self._phases = {phase: self._collect(phase) for phase in HOOKS}
        #: the batches the engine fetched for this iteration, by DatasetNode name
        self.batch: dict | None = None
        self._roots: list[torch.nn.Module] = []

    # -- construction -------------------------------------------------------------------------
    def _collect(self, phase: str) -> tuple[list, list]:
        internal, hooks = [], []
        for node in self.nodes.values():
            fn = getattr(node, "_on_" + phase)
            if fn is not None:
                internal.append((node, fn))
            if phase in node.__dict__ or getattr(type(node), phase) is not getattr(Node, phase):
                hooks.append((node, getattr(node, phase)))
        return internal, hooks

    def not_selected_error(self, name: str, stack: list[str]) -> NodeNotSelectedError:
        """The error for ``x[name]`` of a node this task did not select."""
        who = f"node {self.nodes[stack[-1]].uid!r}" if stack else "the task"
        path = " -> ".join(stack + [name])
        others = self._uids_of(name)
        hint = (
            f"'{name}' exists as {', '.join(repr(u) for u in others)}, which these tags do not select: "
            "add the task's tag to that node or tag the node '*'"
            if others
            else f"no node is named '{name}' (selected: {', '.join(self._names) or 'none'}); check the spelling"
        )
        return NodeNotSelectedError(
            f"{who} asked for x['{name}'] (path {path}) in a task with tags ({_describe_tags(self.tags)}); {hint}"
        )

    # -- task lifecycle -----------------------------------------------------------------------
    def bind(self, task: TaskView) -> None:
        """Make the graph the running one of ``task`` (at the start of every repetition): module
        modes and trainable parameters, precision, the nodes' running graph."""
        self.task = task
        self.training = task.train
        self.step_now = False
        self.autocast = self.context.precision.autocast
        self.cache._timer = self.context.timer
        self.cache.clear()
        for node in self.nodes.values():
            node.egraph = self
        self._set_module_modes()
        if self.training:  # a train run continued after other tasks ran their forwards
            for node in self.module_nodes:
                node.reshard_root()

    def attach(self, engine: TaskEngine) -> None:
        """Attach the nodes' metrics, built-in behaviour and hooks as ice_ignite handlers of
        ``engine`` (they run before user handlers; ``finish`` removes them)."""
        timer = self.context.timer
        with engine.internal() as self._added:
            for node in self.nodes.values():
                node._attach_engine(engine)
            for phase, event in PHASE_EVENTS.items():
                internal, hooks = self._phases[phase]
                for node, fn in internal + hooks:
                    engine.add_event_handler(event, _handler(node, fn, phase, timer))
            engine.add_event_handler(Events.STARTED, self._find_ddp)  # after the prepare hooks
            engine.add_event_handler(Events.COMPLETED, self._mark_cleaned)
        self._cleaned = False

    def suspend(self) -> None:
        """Between two repetitions of a train task: release the last iteration's outputs."""
        self.cache.clear()
        self.batch = None

    def _mark_cleaned(self) -> None:
        self._cleaned = True

    def finish(self, engine: TaskEngine) -> None:
        """End a task run: ``clean_up`` every node if COMPLETED did not fire (an exception), remove
        the handlers ``start`` attached and release the last outputs."""
        try:
            if not self._cleaned:
                for node, fn in self._phases["clean_up"][0] + self._phases["clean_up"][1]:
                    _handler(node, fn, "clean_up", None)()
        finally:
            engine.remove_internal(self._added)
            for node in self.nodes.values():
                node._detach_engine(engine)
            self.cache.clear()
            self.batch = None
            self.task = None

    def _set_module_modes(self) -> None:
        # Always, whatever the tags: ice-learn reused one graph for train and eval with the same
        # tags and left modules in train mode during evaluation (its bug 4).
        if not self.training:
            for node in self.module_nodes:
                node.module.eval()
            return
        self._roots = list({id(n.module): n.module for n in self.module_nodes}.values())
        trainable: dict[int, tuple[torch.nn.Module, set[int]]] = {}
        for node in self.module_nodes:
            module, ids = trainable.setdefault(id(node.module), (node.module, set()))
            ids.update(id(p) for p in node.trainable_parameters())
        for module, ids in trainable.values():
            module.train()
            for p in module.parameters():
                p.requires_grad_(id(p) in ids)

    # -- the process functions ----------------------------------------------------------------
    def train_step(self, engine: TaskEngine, batch: Any) -> dict:
        """One train iteration: forward all, one backward of the summed loss, and at the end of
        an accumulation cycle the optimizer steps, firing ``StepEvents`` around them. Returns the
        node outputs by name, detached (``engine.state.output``)."""
        state = engine.state
        for module in self._roots:
            if not module.training:  # a handler switched it (e.g. an evaluator run from EPOCH_COMPLETED)
                self._set_module_modes()
                break
        if self.context.grad_acc_steps == 1:  # every iteration a cycle of its own (_begin_cycle, without a call)
            self._cycle_len, self.step_now = 1, True
            for node in self.module_nodes:
                node.zero_grad()
        else:
            length = state.epoch_length
            assert length is not None  # set while the engine runs
            self._begin_cycle((state.iteration - 1) % length, length)
        self.cache.clear()
        self.in_step = True
        try:
            if self.step_now or not self._ddp:
                self._forward_backward(engine)
            else:
                with contextlib.ExitStack() as stack:  # DDP's no_sync: no all-reduce until the step
                    for ddp in self._ddp:
                        stack.enter_context(ddp.no_sync())
                    self._forward_backward(engine)
            if self.step_now:  # not skipped by a BACKWARD_COMPLETED handler (the non-finite policy)
                state.optim_step += 1  # type: ignore[attr-defined]  # ignite's State: attributes of register_events
                if engine.listening.optim_step_started:
                    engine.fire(StepEvents.OPTIM_STEP_STARTED)
                for node in self.module_nodes:
                    node.step()
                if engine.listening.optim_step_completed:
                    engine.fire(StepEvents.OPTIM_STEP_COMPLETED)
        finally:
            self.in_step = False
        tensor, data = torch.Tensor, self._data_names  # batches need no detaching
        out = {}  # a loop, not a comprehension: no frame of its own per iteration
        for name, value in self.cache.outputs.items():
            if name in data:
                out[name] = value
            elif type(value) is tensor:
                out[name] = value.detach() if value.requires_grad else value
            else:
                out[name] = detach(value)
        return out

    def _forward_backward(self, engine: TaskEngine) -> None:
        cache = self.cache
        values = cache.outputs
        for name in self._names:  # cache.compute_all, without a call
            if name not in values:
                cache._compute(name)
        total = self.loss = self._summed_loss()
        if engine.listening.backward_started:
            engine.fire(StepEvents.BACKWARD_STARTED)
        if total is not None:
            if self._cycle_len != 1:  # each micro-batch's share of the cycle's mean loss
                total = total / self._cycle_len
            scaler = self.context.precision.grad_scaler
            (total if scaler is None else scaler.scale(total)).backward()
        if engine.listening.backward_completed:
            engine.fire(StepEvents.BACKWARD_COMPLETED)

    def eval_step(self, engine: TaskEngine, batch: Any) -> dict:
        """One eval iteration: forward every node (under ``torch.no_grad``, set by the task).
        Returns the node outputs by name (``engine.state.output``)."""
        self.cache.clear()
        self.in_step = True
        try:
            self.cache.compute_all(self._names)
        finally:
            self.in_step = False
        return dict(self.cache.outputs)

    def _begin_cycle(self, position: int, epoch_length: int) -> None:
        k = self.context.grad_acc_steps
        in_cycle = position % k
        self._cycle_len = min(k, epoch_length - (position - in_cycle))
        self.step_now = in_cycle == self._cycle_len - 1
        if in_cycle == 0:  # a new cycle: fresh gradients
            for node in self.module_nodes:
                node.zero_grad()

    def release_wrappers(self) -> None:
        """At the end of a run: forget the wrappers found at the start (``ModuleNode.release_wrapper``)."""
        self._ddp = []

    def _find_ddp(self) -> None:
        """After ``prepare``: the DistributedDataParallel wrappers of this task's modules."""
        # DistributedDataParallel, or the FSDP2 root (a _ShardedProxy): both have no_sync()
        self._ddp = [cast(_NoSync, n.ddp) for n in self.module_nodes if n.ddp is not None]

    def _summed_loss(self) -> torch.Tensor | None:
        """``sum(weight * loss)`` over the LossNodes (None without any)."""
        values, terms = self.cache.outputs, []
        sources = self._loss_sources
        if sources is None:  # the first iteration of the task: its forwards recorded the dependencies
            sources = self._loss_sources = [self.batch_source(name_of(node)) for node in self.loss_nodes]
        for name, node, source in zip(self._loss_names, self.loss_nodes, sources):
            loss, weight = values[name], node.weight
            if source is not None and source.last_loss_scale != 1.0:
                weight = weight * source.last_loss_scale  # unequal slices of a global batch across ranks
            terms.append(loss if weight == 1.0 else loss * weight)
        if not terms:
            return None
        total = terms[0] if len(terms) == 1 else functools.reduce(operator.add, terms)
        if not total.requires_grad:  # a frozen model or a detached loss: say so, not autograd
            raise self._no_grad_error()
        return total

    def _no_grad_error(self) -> GraphError:
        trained = [repr(n.uid) for n in self.module_nodes if n.trainable_parameters()]
        losses = ", ".join(repr(n.uid) for n in self.loss_nodes)
        head = f"the losses of the train task with tags ({_describe_tags(self.tags)}) do not require grad ({losses})"
        if not trained:
            return GraphError(
                f"{head}: no ModuleNode of this task has optimizers, so nothing trains; give a "
                "ModuleNode optimizers (optimizers=ice.Optimizer(...)), or make the task train=False"
            )
        return GraphError(
            f"{head}: they do not depend on any trainable parameter (of {', '.join(trained)}); the "
            "loss's forward uses detached values (.detach(), .item(), torch.no_grad, a frozen "
            "module) — compute it from the ModuleNodes' outputs, x['name']"
        )

    # -- helpers for nodes --------------------------------------------------------------------
    def batch_source(self, name: str) -> DatasetNode | None:
        """The first DatasetNode that node ``name`` depends on (recorded dependencies, BFS)."""
        if name in self._batch_source:
            return self._batch_source[name]
        deps = self.cache.deps
        seen, queue, found = {name}, [name], None
        while queue and found is None:
            for dep in deps.get(queue.pop(0), ()):
                node = self.nodes.get(dep)
                if isinstance(node, DatasetNode):
                    found = node
                    break
                if dep not in seen:
                    seen.add(dep)
                    queue.append(dep)
        self._batch_source[name] = found
        return found
