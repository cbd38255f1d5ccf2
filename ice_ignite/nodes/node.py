"""``Node``: the unit of a HyperGraph (API.md, A "Nodes", B2, B4)."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ice_ignite.distributed.launcher_record import Launcher
from ice_ignite.engine.engine import TaskEngine
from ice_ignite.engine.roles import NodeGraphView, TaskView
from ice_ignite.nodes.context import RunContext
from ice_ignite.observe.board import BoardWriter, NullWriter

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

# x in forward(n, x): the iteration's output cache (ice_ignite.graph.graph.GraphOutputCache); nodes do not
# import the graph, which imports them, and a forward may annotate x with that class: Any, not a Protocol.
OutputCache = Any

__all__ = ["Node", "HOOKS"]

#: Hook names a callable resource may replace. Each is called with the node only.
HOOKS = ("epoch_start", "epoch_end", "prepare", "clean_up", "backward", "update")


def _accepts_positional(fn: Callable, n: int) -> bool | None:
    """Whether ``fn`` can be called with ``n`` positional arguments (None when unknown)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*range(n))
    except TypeError:
        return False
    return True


def check_callable(fn: object, n_args: int, what: str, example: str) -> None:
    """Raise a clear error when ``fn`` is not callable with ``n_args`` positional arguments."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__} {fn!r}; e.g. {example}")
    if _accepts_positional(fn, n_args) is False:
        raise TypeError(
            f"{what} must accept {n_args} positional argument{'s' if n_args != 1 else ''}, "
            f"but its signature is {inspect.signature(fn)}; e.g. {example}"
        )


class Node:
    """A named unit of computation in a HyperGraph.

    ``forward(n, x)`` returns the node's output for the current iteration; inside it,
    ``x["other"]`` returns another node's output, computed on first use and cached until the
    iteration ends. Keyword ``resources`` become attributes; a callable resource named after a
    hook (``epoch_start``, ``epoch_end``, ``prepare``, ``clean_up``, ``backward``, ``update``) is
    that hook, called as ``hook(n)``. Subclasses override ``forward_impl(x)`` and the hooks.

    Hooks are handlers of the task engine's events, run after the built-in behaviour of the node
    kinds (a DatasetNode's new pass, a MetricNode's ``compute``) and before user handlers of the
    same event, so a user hook can never switch that behaviour off:

    * ``prepare`` / ``clean_up``: ``STARTED`` / ``COMPLETED`` of every task run that selects the node;
    * ``epoch_start`` / ``epoch_end``: ``EPOCH_STARTED`` / ``EPOCH_COMPLETED`` (step-mode tasks included);
    * ``backward``: ``StepEvents.BACKWARD_COMPLETED`` in train iterations (gradients exist);
    * ``update``: ``ITERATION_COMPLETED``, after the optimizers stepped.

    The run a node is in is read from ``n.context`` (a ``RunContext``, the same object as the
    graph's ``g.context``): ``n.context.run_dir``, ``.run_id``, ``.seed``, ``.launcher``,
    ``.device``, ``.rank``, ``.counters``, ``.board``, ``.grad_acc_steps``, ``.grad_scaler``.
    The properties ``launcher``, ``device``, ``board``, ``out_dir``, ``run_id``, ``grad_scaler``,
    ``grad_acc_steps`` and ``global_*`` are one-line shorthands of those (API.md names them); the
    running task's are ``task``, ``training``, ``step_mode``, ``epoch_steps``, ``epoch_size``.

    Args:
        forward: ``forward(n, x) -> output``; a node without one outputs ``None``.
        resources: attributes of the node, or hooks.

    Examples:
        >>> import ice_ignite as ice
        >>> g = ice.HyperGraph()
        >>> counter = g.add("count", ice.Node(forward=lambda n, x: n.scale * 2, scale=3))
        >>> counter.scale
        3
    """

    def __init__(self, forward: Callable[[Self, OutputCache], Any] | None = None, **resources: Any):
        self._name: str | None = None
        self._uid: str | None = None
        self._tags: tuple[str, ...] = ()
        #: the HyperGraph the node was added to (None before ``add``)
        self.hypergraph: Any = None  # the HyperGraph (the front door, above nodes/): users read any of it
        #: what the node sees of the run (set by ``HyperGraph.add``)
        self.context: RunContext | None = None
        #: the ExecutableGraph of the task that runs (or last ran) the node
        self.egraph: NodeGraphView | None = None
        if forward is not None:
            check_callable(forward, 2, f"forward of {type(self).__name__}", "forward=lambda n, x: x['data'][0]")
        self._forward_fn: Callable[..., Any] | None = forward
        for key, value in resources.items():
            self._set_resource(key, value)

    # -- construction -------------------------------------------------------------------------
    def _set_resource(self, key: str, value: Any) -> None:
        kind = type(self).__name__
        if key in HOOKS:
            if value is None:
                return
            check_callable(value, 1, f"the {key!r} hook of {kind}", f"{key}=lambda n: print(n.name)")
            setattr(self, key, types.MethodType(value, self))
            return
        if key.startswith("_") or hasattr(type(self), key) or key in self.__dict__:
            raise TypeError(
                f"{kind} resource {key!r} clashes with a property, method or attribute of {kind}; "
                f"rename the resource (hooks that may be replaced: {', '.join(HOOKS)})"
            )
        setattr(self, key, value)

    def _attach(self, hypergraph: object, context: RunContext, name: str, uid: str, tags: tuple[str, ...]) -> None:
        """Called by ``HyperGraph.add``."""
        if self.context is not None:
            raise ValueError(
                f"this {type(self).__name__} is already in a HyperGraph as {self._uid!r}; a node is added "
                "once: create another node (several ModuleNodes may share one nn.Module)"
            )
        self.hypergraph, self.context, self._name, self._uid, self._tags = hypergraph, context, name, uid, tags

    def _detach(self) -> None:
        self.hypergraph, self.context, self.egraph, self._name, self._uid, self._tags = None, None, None, None, None, ()

    # -- computation --------------------------------------------------------------------------
    def forward_impl(self, x: OutputCache) -> Any:
        """Compute this node's output for the current iteration. Override in subclasses."""
        if self._forward_fn is None:
            return None
        return self._forward_fn(self, x)

    def forward(self) -> Any:
        """This node's output for the current iteration (computed once, then cached)."""
        if self.egraph is None or self.egraph.task is None or self._name is None:
            raise RuntimeError(
                f"node {self._uid!r} is not part of a running task: forward() works inside one, "
                "from a forward, a hook or a handler of the task's engine"
            )
        return self.egraph.cache[self._name]

    # Hooks: no-ops here. The graph attaches only the ones a node defines (see ExecutableGraph).
    def prepare(self) -> None:
        """At the start of every task run that selects this node."""

    def clean_up(self) -> None:
        """At the end of every task run that selects this node."""

    def epoch_start(self) -> None:
        """At the start of every engine epoch."""

    def epoch_end(self) -> None:
        """At the end of every engine epoch (after metrics are computed)."""

    def backward(self) -> None:
        """In train iterations, after the summed loss's backward."""

    def update(self) -> None:
        """Every iteration, after the optimizers stepped."""

    # Built-in behaviour of node kinds, attached before the matching hooks. Not for users.
    _on_prepare: Callable[[], None] | None = None
    _on_clean_up: Callable[[], None] | None = None
    _on_epoch_start: Callable[[], None] | None = None
    _on_epoch_end: Callable[[], None] | None = None
    _on_backward: Callable[[], None] | None = None
    _on_update: Callable[[], None] | None = None

    def _attach_engine(self, engine: TaskEngine) -> None:
        """Attach the node kind's ignite handlers (metrics) to a starting task's engine. Not for users."""

    def _detach_engine(self, engine: TaskEngine) -> None:
        """Remove what ``_attach_engine`` attached, at the end of the task run. Not for users."""

    def state_dict(self) -> dict:
        """Checkpointable state: tensors, numbers, strings, lists and dicts only."""
        return {}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Restore what ``state_dict`` returned."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._uid or 'not added'})"

    # -- properties (API.md A "Nodes", B4) ------------------------------------------------------
    # Those of the run are shorthands of ``self.context``, the one place that holds them.
    @property
    def name(self) -> str | None:
        """The node's name in its HyperGraph."""
        return self._name

    @property
    def uid(self) -> str | None:
        """``"<sorted tags>/<name>"``, e.g. ``"train/data"``."""
        return self._uid

    @property
    def tags(self) -> tuple[str, ...]:
        """The node's tags, sorted."""
        return self._tags

    @property
    def task(self) -> TaskView | None:
        """The running task, or None outside one."""
        return self.egraph.task if self.egraph is not None else None

    @property
    def training(self) -> bool:
        """Whether the running task trains."""
        task = self.task
        return bool(task is not None and task.train)

    @property
    def step_mode(self) -> bool:
        """Whether the running task counts steps (True) or epochs (False)."""
        task = self.task
        return bool(task is not None and task.step_mode)

    @property
    def epoch_steps(self) -> int:
        """Iterations completed in the current engine epoch before this one."""
        task = self.task
        return task.epoch_steps if task is not None else 0

    @property
    def epoch_size(self) -> int:
        """Iterations in the current engine epoch."""
        task = self.task
        return task.epoch_size if task is not None else 0

    @property
    def global_auto_steps(self) -> int:
        """``steps.train`` in train tasks, ``steps.eval`` in eval tasks."""
        counters = self._ctx("global_auto_steps").counters
        return counters.steps.train if self.training else counters.steps.eval

    @property
    def global_train_steps(self) -> int:
        """Optimizer steps taken so far (``global_counters.steps.train``)."""
        return self._ctx("global_train_steps").counters.steps.train

    @property
    def global_train_epochs(self) -> int:
        """Completed train epochs (``global_counters.epochs.train``)."""
        return self._ctx("global_train_epochs").counters.epochs.train

    @property
    def grad_acc_steps(self) -> int:
        """Micro-batches per optimizer step (``HyperGraph.set_gradient_accumulate``)."""
        return self._ctx("grad_acc_steps").grad_acc_steps

    @property
    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """The run's GradScaler, or None when it is disabled."""
        return self._ctx("grad_scaler").grad_scaler

    @property
    def launcher(self) -> Launcher | None:
        """The process's launcher (rank, world size, device), or None outside a run."""
        return self._ctx("launcher").launcher

    @property
    def device(self) -> torch.device:
        """The device of this process (CPU outside a run)."""
        return self._ctx("device").device

    @property
    def board(self) -> BoardWriter | NullWriter:
        """A tensorboardX ``SummaryWriter`` into the run's ``logs/`` on global rank 0; a no-op
        writer on other ranks and outside a run."""
        return self._ctx("board").board

    @property
    def out_dir(self) -> Path | None:
        """The run directory ``out_dir/run_id`` (``context.run_dir``), or None outside a run."""
        return self._ctx("out_dir").run_dir

    @property
    def run_id(self) -> str | None:
        """The run's id (the run directory's name), or None outside a run."""
        return self._ctx("run_id").run_id

    def _ctx(self, what: str) -> RunContext:
        if self.context is None:
            raise RuntimeError(f"{type(self).__name__}.{what} needs the node to be added to a HyperGraph first")
        return self.context
