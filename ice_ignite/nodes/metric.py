"""``MetricNode``: any ignite ``Metric``, attached to the task engine the ignite way and fed
by the node's forward (B5)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import MetricUsage

from ice_ignite.engine.engine import TaskEngine
from ice_ignite.engine.roles import name_of
from ice_ignite.errors import MetricNotComputableError
from ice_ignite.nodes.node import Node, OutputCache, check_callable

__all__ = ["MetricNode"]


def _plain(value: Any) -> Any:
    """0-dim tensors become Python numbers, other tensors move to the CPU (as ignite does)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.cpu()
    return value


def _name_uncomputable(node: MetricNode) -> None:
    """Make the metric's ``completed`` handler (where ignite computes its value) raise
    ``MetricNotComputableError`` naming ``node`` and the task for ignite's ``NotComputableError``
    (a metric that saw no sample), which names neither. Set on the metric instance, so ``attach``
    / ``detach`` / ``is_attached`` see the same handler."""
    metric = node.metric
    completed = type(metric).completed.__get__(metric)  # the class's, not an earlier wrapper

    @functools.wraps(completed)  # the signature ignite inspects: (engine, name)
    def named(engine: Engine, name: str) -> None:
        try:
            completed(engine, name)
        except NotComputableError as e:
            task = getattr(engine, "task_label", "a task")
            raise MetricNotComputableError(
                f"MetricNode {node.uid!r} of {task} could not compute {type(metric).__name__} at the end of epoch "
                f"{engine.state.epoch}: {e} Its forward gave the metric no sample: check that the task's "
                "DatasetNodes yield batches (not an empty dataset, nor drop_last=True with fewer samples than "
                "batch_size) and that the forward returns the metric's input for them, or leave the MetricNode out "
                "of this task's tags",
                str(node.uid),
                "compute",
            ) from e

    metric.completed = named  # type: ignore[method-assign]  # on purpose: this instance's handler (see above)


class MetricNode(Node):
    """An ignite ``Metric`` in the graph.

    ``forward(n, x)`` returns the metric's input *before* its ``output_transform``, e.g.
    ``(y_pred, y)`` or a dict for ``required_output_keys``. The metric is attached to the task
    engine with its own ``attach`` (its default usage: ``RunningAverage`` updates every
    iteration), and its handlers see the node's output as ``engine.state.output``, so
    ``output_transform``, ``required_output_keys``, ``device``, ``skip_unrolling``,
    ``MetricsLambda`` and metric arithmetic behave as in ignite; metrics that share a base metric
    (``cm``, ``IoU(cm)``, ``mIoU(cm)``) update it once per iteration. At epoch end
    ``task.engine.state.metrics[name]`` holds the value (dict results also flattened as
    ``name/key``), then ``epoch_end(n)`` is called.

    Args:
        metric: any ``ignite.metrics.Metric``.
        forward: ``forward(n, x) -> metric input``.
        epoch_end: ``epoch_end(n)``, called after the metric is computed.
        usage: ignite's ``Metric.attach`` usage (``EpochWise()``, ``BatchWise()``,
            ``RunningBatchWise()``, ... or its name): when the metric resets, updates and
            computes, as in ignite; None: the metric's own default (``EpochWise`` for most,
            ``RunningBatchWise`` for ``RunningAverage``).
        resources: extra attributes or hooks (see ``Node``).

    Examples:
        >>> from ignite.metrics import Accuracy
        >>> import ice_ignite as ice
        >>> acc = ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"], x["data"][1]),
        ...                      epoch_end=lambda n: print(n.value))
    """

    _forward_fn: Callable[[MetricNode, OutputCache], Any]  # required here (Node's may be None)

    def __init__(
        self,
        metric: Metric,
        forward: Callable[[MetricNode, OutputCache], Any],
        epoch_end: Callable[[MetricNode], Any] | None = None,
        *,
        usage: str | MetricUsage | None = None,
        **resources: Any,
    ):
        if isinstance(metric, type):
            raise TypeError(
                f"MetricNode needs an ignite.metrics.Metric instance, got the class {metric.__name__}: "
                f"instantiate it, e.g. {metric.__name__}()"
            )
        if not isinstance(metric, Metric):
            raise TypeError(
                f"MetricNode needs an ignite.metrics.Metric instance, got {type(metric).__name__} {metric!r}; "
                "e.g. MetricNode(Accuracy(), forward=lambda n, x: (x['net'], x['data'][1]))"
            )
        if forward is None:
            raise TypeError("MetricNode needs a forward returning the metric's input")
        check_callable(forward, 2, "forward of MetricNode", "forward=lambda n, x: (x['net'], x['data'][1])")
        self.metric = metric
        #: the usage given to ``metric.attach`` (ignite checks it when the metric is attached)
        self.usage = usage
        #: best records of ``save_best``: a list of ``(value, checkpoint file name)``
        self.best_records: list[tuple[float, str]] = []
        self._value: Any = None
        self._added: list = []
        super().__init__(forward=forward, epoch_end=epoch_end, **resources)

    @property
    def value(self) -> Any:
        """The metric's value computed last (``state.metrics[name]``); kept after the task ends."""
        return self._value

    # -- the ignite metric path ---------------------------------------------------------------
    def _attach_engine(self, engine: TaskEngine) -> None:
        """Attach the metric to a starting task's engine; its handlers see this node's output."""
        _name_uncomputable(self)
        name = name_of(self)
        with engine.internal(view=self) as added:
            if self.usage is None:
                self.metric.attach(engine, name)
            else:
                self.metric.attach(engine, name, usage=self.usage)
        self._added = added

    def _detach_engine(self, engine: TaskEngine) -> None:
        engine.remove_internal(self._added)

    def output(self, output: Any) -> Any:
        """What the metric's handlers see as ``engine.state.output``: this node's output."""
        try:
            return output[self._name]
        except (KeyError, TypeError):  # between iterations: no output (None), or none of this node yet
            return None

    def merge(self, written: dict, metrics: dict) -> None:
        """Put what the metric wrote into the engine's metrics: its value under the node's name,
        a dict result also as ``name/key`` (ignite would write bare keys, which collide)."""
        name = self._name
        result = written.get(name)
        if isinstance(result, Mapping):
            result = {key: _plain(value) for key, value in result.items()}
            for key, value in result.items():
                metrics[f"{name}/{key}"] = value
        for key, value in written.items():
            if key != name and not (isinstance(result, Mapping) and key in result):
                metrics[f"{name}/{key}"] = _plain(value)
        if name in written:
            metrics[name] = result
            self._value = result

    def save_best(self, value: Any, higher_better: bool = True, max_keep: int = 3) -> Path | None:
        """Save a checkpoint when ``value`` is among the ``max_keep`` best seen so far, and delete
        the one that drops out. Call it on every rank, typically from ``epoch_end``:
        ``MetricNode(Accuracy(), forward, epoch_end=lambda n: n.save_best(n.value))``.

        The files are ``ckpts/best-<seq>-E<e>S<s>-<name>=<value>.pt`` (``.dcp`` directories with FSDP); the records travel in
        checkpoints, so the best ``max_keep`` are kept across resumes. Returns the file written
        (None when ``value`` does not qualify, and on ranks other than 0).
        """
        save = self.context.save_best if self.context is not None else None
        if save is None:
            raise RuntimeError(
                f"MetricNode {self.uid!r}: save_best needs a run directory: call it during HyperGraph.run"
            )
        if isinstance(value, torch.Tensor):
            value = value.item()
        return save(self, value, higher_better, max_keep)

    def state_dict(self) -> dict:
        """The metric's accumulators and the best records."""
        return {
            "metric": self.metric.state_dict(),
            "best_records": [[float(v), str(f)] for v, f in self.best_records],
        }

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Restore the accumulators and the best records."""
        if "metric" in state:
            self.metric.load_state_dict(state["metric"])
        self.best_records = [(float(v), str(f)) for v, f in state.get("best_records", [])]
