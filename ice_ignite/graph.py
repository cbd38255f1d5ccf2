"""The per-iteration output cache and ``ExecutableGraph``: the nodes one task selected, run
as one iteration of forward → backward → update (API.md, B2)."""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ice_ignite import parallel
from ice_ignite.errors import (
    GraphError,
    IceError,
    NodeError,
    NodeNotSelectedError,
    NonFiniteLossError,
    StopAllTasks,
    StopTask,
)
from ice_ignite.nodes.dataset import DatasetNode
from ice_ignite.nodes.loss import LossNode
from ice_ignite.nodes.module import ModuleNode
from ice_ignite.nodes.node import HOOKS, Node

if TYPE_CHECKING:
    from ice_ignite.hypergraph import HyperGraph
    from ice_ignite.timing import NodeTimer
    from ice_ignite.task import Task

__all__ = ["GraphOutputCache", "ExecutableGraph"]

logger = logging.getLogger("ice_ignite")

# Exceptions that pass through node error reporting untouched.
_PASS_THROUGH = (StopTask, StopAllTasks, IceError, KeyboardInterrupt)
_NONFINITE_HINT = ("Lower the learning rate, clip gradients (grad_clip_norm=), or choose "
                   "g.set_nonfinite_policy('skip') to skip such steps or 'stop' to checkpoint and stop")

_Call = tuple[Node, Callable[[], None]]


def _run(calls: list[_Call], phase: str, timer: "NodeTimer | None" = None) -> None:
    """Call each hook; an exception is re-raised as a NodeError naming the node and phase."""
    node = None
    try:
        if timer is None:
            for node, fn in calls:
                fn()
        else:
            for node, fn in calls:
                start = timer.now()
                fn()
                timer.add(node.uid, phase, timer.now() - start)
    except _PASS_THROUGH:
        raise
    except Exception as e:
        raise NodeError(f"node {node.uid!r} raised {type(e).__name__} in {phase}: {e}", node.uid, phase) from e


def _describe_tags(tags: tuple[str, ...]) -> str:
    return ",".join(tags)


class GraphOutputCache:
    """The ``x`` of ``forward(n, x)``: ``x["name"]`` is node ``name``'s output this iteration.

    A node is computed on first use and cached until the iteration ends; each use inside a
    forward records a dependency edge (``deps[user][name]``), in the order they were pulled.
    ``"name" in x`` tells whether the task selected that node.
    """

    __slots__ = ("_graph", "_nodes", "_values", "_stack", "deps", "_timer")

    def __init__(self, graph: "ExecutableGraph"):
        self._graph = graph
        self._nodes = graph.nodes
        self._values: dict[str, Any] = {}
        self._stack: list[str] = []
        self.deps: dict[str, dict[str, None]] = {name: {} for name in graph.nodes}
        self._timer: NodeTimer | None = None

    def __getitem__(self, name: str) -> Any:
        stack = self._stack
        if stack:
            self.deps[stack[-1]][name] = None
        values = self._values
        if name in values:
            return values[name]
        return self._compute(name)

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def keys(self) -> Iterator[str]:
        """Names of the nodes computed so far this iteration."""
        return iter(list(self._values))

    def _compute(self, name: str) -> Any:
        stack = self._stack
        node = self._nodes.get(name)
        if node is None:
            raise self._graph._not_selected_error(name, stack)
        if name in stack:
            path = " -> ".join(stack[stack.index(name):] + [name])
            raise GraphError(
                f"cycle in the graph of task tags ({_describe_tags(self._graph.tags)}): {path}; "
                "a node may not depend on itself, directly or through others"
            )
        stack.append(name)
        try:
            timer = self._timer
            if timer is None:
                out = node.forward_impl(self)
            else:
                out = timer.forward(node.uid, lambda: node.forward_impl(self))
        except _PASS_THROUGH:
            raise
        except Exception as e:
            raise NodeError(
                f"node {node.uid!r} raised {type(e).__name__} in forward: {e}"
                + (f" (pulled by {' -> '.join(stack[:-1])})" if len(stack) > 1 else ""),
                node.uid,
                "forward",
            ) from e
        finally:
            stack.pop()
        self._values[name] = out
        return out

    def clear(self) -> None:
        """Release this iteration's outputs."""
        self._values.clear()
        self._stack.clear()


class ExecutableGraph:
    """The nodes a task selected, in ``add`` order, and the code of one iteration.

    Built and cached by ``HyperGraph.select_egraph(tags)``. ``train_iteration`` forwards every
    node, sums ``weight * loss`` over the LossNodes and runs one backward, then lets every node
    update (ModuleNodes step at the end of an accumulation cycle). ``eval_iteration`` forwards
    and updates.
    """

    def __init__(self, hypergraph: "HyperGraph", nodes: dict[str, Node], tags: tuple[str, ...]):
        self.hypergraph = hypergraph
        self.nodes = nodes
        self.tags = tags
        self.cache = GraphOutputCache(self)
        self.task: Task | None = None
        self.training = False
        #: True in the train iteration that ends an accumulation cycle (optimizers step).
        self.step_now = False
        #: (device type, dtype) when ModuleNode and LossNode forwards run under autocast
        self.autocast: tuple[str, torch.dtype] | None = None
        #: per-node timing of the run (``run(timing=True)``), else None
        self.timer: NodeTimer | None = None
        self.loss_nodes = [n for n in nodes.values() if isinstance(n, LossNode)]
        self.module_nodes = [n for n in nodes.values() if isinstance(n, ModuleNode)]
        self.dataset_nodes = [n for n in nodes.values() if isinstance(n, DatasetNode)]
        self._names = list(nodes)
        self._batch_source: dict[str, DatasetNode | None] = {}
        self._ddp: list[torch.nn.Module] = []
        self._nonfinite: torch.Tensor | None = None
        self._check_each_step = False
        self._finite_until = 0  # the optimizer step up to which losses were last found finite
        #: phase -> (built-in behaviour of node kinds, user hooks), each in ``add`` order
        self._phases = {phase: self._collect(phase) for phase in HOOKS}

    # -- construction -------------------------------------------------------------------------
    def _collect(self, phase: str) -> tuple[list[_Call], list[_Call]]:
        internal, hooks = [], []
        for node in self.nodes.values():
            fn = getattr(node, "_on_" + phase)
            if fn is not None:
                internal.append((node, fn))
            if phase in node.__dict__ or getattr(type(node), phase) is not getattr(Node, phase):
                hooks.append((node, getattr(node, phase)))
        return internal, hooks

    def _not_selected_error(self, name: str, stack: list[str]) -> NodeNotSelectedError:
        who = f"node {self.nodes[stack[-1]].uid!r}" if stack else "the task"
        path = " -> ".join(stack + [name])
        others = self.hypergraph.uids_of(name)
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
    def start(self, task: "Task") -> None:
        """Bind the graph to a starting task run: set module modes, then ``prepare`` every node."""
        self.task = task
        self.training = task.train
        self.step_now = False
        self.autocast = self.hypergraph.autocast
        self.timer = self.cache._timer = self.hypergraph._timer
        self._check_each_step = task.train and self.hypergraph.nonfinite_policy in ("skip", "stop")
        self._finite_until = self.hypergraph.global_counters.steps.train
        if self.timer is not None:
            self.timer.task = task.label
        self.cache.clear()
        for node in self.nodes.values():
            node.egraph = self
        self._set_module_modes()
        self.apply("prepare")
        self._ddp = [n.ddp for n in self.module_nodes if n.ddp is not None]

    def finish(self) -> None:
        """``clean_up`` every node at the end of a task run."""
        try:
            self.apply("clean_up")
        finally:
            self.cache.clear()
            self.task = None

    def _set_module_modes(self) -> None:
        # Always, whatever the tags: ice-learn reused one graph for train and eval with the same
        # tags and left modules in train mode during evaluation (its bug 4).
        if not self.training:
            for node in self.module_nodes:
                node.module.eval()
            return
        trainable: dict[int, tuple[torch.nn.Module, set[int]]] = {}
        for node in self.module_nodes:
            module, ids = trainable.setdefault(id(node.module), (node.module, set()))
            ids.update(id(p) for p in node.trainable_parameters())
        for module, ids in trainable.values():
            module.train()
            for p in module.parameters():
                p.requires_grad_(id(p) in ids)

    def apply(self, phase: str) -> None:
        """Run ``phase`` on every node: built-in behaviour of all nodes first, then user hooks."""
        internal, hooks = self._phases[phase]
        _run(internal, phase, self.timer)
        _run(hooks, phase, self.timer)

    def apply_hooks(self, phase: str) -> None:
        """Run only the user hooks of ``phase`` (resuming a checkpointed epoch)."""
        _run(self._phases[phase][1], phase, self.timer)

    # -- one iteration ------------------------------------------------------------------------
    def train_iteration(self, position: int, epoch_length: int) -> dict[str, torch.Tensor]:
        """One train iteration at ``position`` (0-based) in an engine epoch of ``epoch_length``."""
        hg = self.hypergraph
        k = hg.grad_acc_steps
        in_cycle = position % k
        cycle_len = min(k, epoch_length - (position - in_cycle))
        self.step_now = in_cycle == cycle_len - 1
        self._cycle_len = cycle_len
        if in_cycle == 0:  # a new cycle: fresh gradients, and no non-finite loss seen in it yet
            self._nonfinite = None
            for node in self.module_nodes:
                node.zero_grad()
        if self._ddp and not self.step_now:
            with contextlib.ExitStack() as stack:  # accumulate locally: no all-reduce until the step
                for ddp in self._ddp:
                    stack.enter_context(ddp.no_sync())
                return self._train_iteration()
        return self._train_iteration()

    def _train_iteration(self) -> dict[str, torch.Tensor]:
        hg = self.hypergraph
        cache = self.cache
        values = cache._values
        try:
            for name in self._names:
                if name not in values:
                    cache._compute(name)
            terms = []
            for node in self.loss_nodes:  # sum(weight * loss), inline: this runs every iteration
                loss, weight = values[node._name], node.weight
                source = self.batch_source(node._name)
                if source is not None and source.last_loss_scale != 1.0:
                    weight = weight * source.last_loss_scale  # unequal slices of a global batch across ranks
                terms.append(loss if weight == 1.0 else loss * weight)
            phases, timer = self._phases, self.timer
            backward_internal, backward_hooks = phases["backward"]
            if backward_internal:
                _run(backward_internal, "backward", timer)
            if terms:
                total = terms[0] if len(terms) == 1 else functools.reduce(operator.add, terms)
                if not total.requires_grad:  # a frozen model or a detached loss: say so, not autograd
                    raise GraphError(
                        f"the losses of the train task with tags ({_describe_tags(self.tags)}) do not require "
                        f"grad ({', '.join(n.uid for n in self.loss_nodes)}): no trainable parameter reaches "
                        "them; give a ModuleNode optimizers, or make the task train=False"
                    )
                if self._check_each_step:  # policies "skip" and "stop": read once per optimizer step
                    bad = ~torch.isfinite(total.detach())
                    self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
                if self._cycle_len != 1:
                    total = total / self._cycle_len
                scaler = hg.grad_scaler
                if scaler is not None:
                    total = scaler.scale(total)
                if timer is None:
                    total.backward()
                else:
                    start = timer.now()
                    total.backward()
                    timer.add("(summed loss)", "backward", timer.now() - start)
            if backward_hooks:
                _run(backward_hooks, "backward", timer)
            step_now = self.step_now
            if step_now:
                if self._nonfinite is not None:
                    self._apply_nonfinite_policy()
                elif hg.nonfinite_policy == "raise" and (hg.global_counters.steps.train + 1) % hg.nonfinite_check_every == 0:
                    self.check_losses_finite(before_step=True)
            update_internal, update_hooks = phases["update"]
            if update_internal:
                _run(update_internal, "update", timer)
            if update_hooks:
                _run(update_hooks, "update", timer)
            if step_now and hg.grad_scaler is not None:
                hg._after_optimizer_step()
            return {n._name: values[n._name].detach() for n in self.loss_nodes}
        finally:
            values.clear()

    def check_losses_finite(self, before_step: bool = False) -> None:
        """Policy "raise": a non-finite loss leaves its epoch accumulator non-finite, so reading the
        accumulators every ``nonfinite_check_every`` optimizer steps and at epoch ends finds it
        without a host read per iteration. Raises NonFiniteLossError naming the LossNode and the
        steps between which it happened; every rank decides the same way."""
        hg = self.hypergraph
        now = hg.global_counters.steps.train + (1 if before_step else 0)
        values = self.cache._values
        nodes, checks = [], []
        for n in self.loss_nodes:  # this iteration's loss, not yet in the accumulator, and the accumulator
            parts = ([values[n._name].detach()] if before_step and n._name in values else []) + (
                [n.metric._sum] if n.metric is not None and n.metric._num_examples else [])
            if parts:
                nodes.append(n)
                checks.append(~torch.isfinite(torch.stack(parts).float()).all())
        flags = torch.stack(checks).cpu() if checks else torch.zeros(0, dtype=torch.bool)
        if not parallel.any_rank(bool(flags.any())):
            self._finite_until = now
            return
        bad = [n.uid for n, flag in zip(nodes, flags.tolist()) if flag] or ["a LossNode of another rank"]
        since = self._finite_until
        raise NonFiniteLossError(
            f"non-finite loss in {', '.join(bad)} of {self.task!r}, in an optimizer step after step {since} and up "
            f"to step {now}. {_NONFINITE_HINT}"
        )

    def _apply_nonfinite_policy(self) -> None:
        """At an optimizer step: act on a non-finite loss seen in this accumulation cycle, the same
        way on every rank."""
        flag, self._nonfinite = self._nonfinite, None
        if not parallel.any_rank(bool(flag)):
            return
        hg = self.hypergraph
        values = self.cache._values
        culprits = [f"{n.uid} = {values[n._name].item()}" for n in self.loss_nodes
                    if not torch.isfinite(values[n._name]).item()] or ["a loss of an earlier micro-batch of the cycle, "
                                                                       "or of another rank"]
        where = (f"in optimizer step {hg.global_counters.steps.train + 1} of {self.task!r}: "
                 f"{'; '.join(culprits)}")
        policy = hg.nonfinite_policy
        if policy == "raise":
            raise NonFiniteLossError(
                f"non-finite loss {where}. {_NONFINITE_HINT}"
            )
        logger.warning("non-finite loss %s: the optimizer step is skipped%s", where,
                       "; the run checkpoints and stops" if policy == "stop" else "")
        self.step_now = False  # no optimizer, scheduler or scaler step, and no step counted
        hg.skipped_steps += 1
        if policy == "stop":
            hg._stop_after_iteration = True

    def eval_iteration(self) -> dict[str, torch.Tensor]:
        """One eval iteration: forward every node, then ``update``."""
        cache = self.cache
        values = cache._values
        try:
            for name in self._names:
                if name not in values:
                    cache._compute(name)
            self.apply("update")
            return {n._name: values[n._name] for n in self.loss_nodes}
        finally:
            cache.clear()

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
