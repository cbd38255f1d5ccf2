"""The roles the upper floors play for the lower ones, as Protocols: what a running task, its graph
and the run's context look like from ``engine/``, ``observe/``, ``training/`` and ``distributed/``,
which may not import ``graph/`` or ``nodes/``. ``ice.Task``, ``ice.ExecutableGraph`` and the
``RunContext`` satisfy them (mypy checks it where they are passed down).

Examples:
    >>> import ice_ignite as ice
    >>> task: TaskView = ice.Task(train=False, epochs=1)
    >>> task.label
    'eval[*]'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from ignite.engine import Engine
from ignite.metrics import Metric

from ice_ignite.engine.counters import GlobalCounters

__all__ = [
    "Named",
    "OutputsView",
    "LossNodeView",
    "ModuleNodeView",
    "GraphView",
    "TaskView",
    "PrecisionView",
    "ContextView",
    "NodeCacheView",
    "NodeGraphView",
    "running_graph",
    "name_of",
]


class Named(Protocol):
    """A node: named once added to a HyperGraph."""

    @property
    def name(self) -> str | None: ...


class OutputsView(Protocol):
    """The iteration's output cache (``ice.GraphOutputCache``)."""

    def value(self, name: str) -> Any:  # a node's output: any value a forward returns
        """The output node ``name`` computed this iteration."""
        ...


class LossNodeView(Protocol):
    """A LossNode, as the board and the non-finite policy read it."""

    @property
    def name(self) -> str | None: ...

    @property
    def uid(self) -> str | None: ...

    @property
    def aux(self) -> dict[str, torch.Tensor]: ...

    @property
    def metric(self) -> Metric: ...


class ModuleNodeView(Protocol):
    """A ModuleNode, as the board reads it."""

    @property
    def name(self) -> str | None: ...

    def learning_rates(self) -> dict[str, list[float]]:
        """Learning rate of every parameter group, by optimizer key."""
        ...


class GraphView(Protocol):
    """The ExecutableGraph of a running task."""

    #: whether this iteration steps the optimizers (a BACKWARD_COMPLETED handler may clear it)
    step_now: bool

    @property
    def cache(self) -> OutputsView: ...

    @property
    def loss(self) -> torch.Tensor | None: ...

    @property
    def loss_nodes(self) -> Sequence[LossNodeView]: ...

    @property
    def module_nodes(self) -> Sequence[ModuleNodeView]: ...

    @property
    def dataset_nodes(self) -> Sequence[object]: ...


class TaskView(Protocol):
    """A task (``ice.Task``), as the handlers attached to its engine see it."""

    train: bool
    step_mode: bool
    tags: tuple[str, ...]

    @property
    def engine(self) -> Engine: ...

    @property
    def label(self) -> str: ...

    @property
    def graph(self) -> GraphView | None: ...

    @property
    def epoch_steps(self) -> int: ...

    @property
    def epoch_size(self) -> int: ...


class PrecisionView(Protocol):
    """The run's precision settings (``training.precision.Precision``)."""

    @property
    def grad_scaler(self) -> torch.amp.GradScaler | None: ...


class ContextView(Protocol):
    """The run's context (``nodes.context.RunContext``), as the board and the policies read it."""

    @property
    def counters(self) -> GlobalCounters: ...

    @property
    def precision(self) -> PrecisionView: ...

    @property
    def board(self) -> Any:  # tensorboardX's SummaryWriter (untyped) or a NullWriter
        ...

    @property
    def run_dir(self) -> Path | None: ...


def running_graph(task: TaskView) -> GraphView:
    """``task.graph`` of a running task; a RuntimeError naming the task outside its run."""
    graph = task.graph
    if graph is None:
        raise RuntimeError(f"{task!r} is not running: its graph exists only while its engine runs")
    return graph


def name_of(node: Named) -> str:
    """The name of a node of a graph (set by ``HyperGraph.add``, before any graph holds it)."""
    name = node.name
    if name is None:
        raise RuntimeError(f"{node!r} is in a graph but has no name: add it with HyperGraph.add")
    return name


class NodeCacheView(Protocol):
    """The output cache, as a node's own code reads it."""

    @property
    def outputs(self) -> dict[str, Any]: ...  # node outputs: any value a forward returns

    def __getitem__(self, name: str) -> Any: ...


class NodeGraphView(Protocol):
    """The ExecutableGraph running a node (``node.egraph``), as the node kinds read it."""

    @property
    def task(self) -> TaskView | None: ...

    @property
    def cache(self) -> NodeCacheView: ...

    @property
    def training(self) -> bool: ...

    @property
    def autocast(self) -> tuple[str, torch.dtype] | None: ...

    @property
    def batch(self) -> dict | None: ...

    def batch_source(self, name: str) -> Named | None:
        """The first DatasetNode node ``name`` depends on."""
        ...
