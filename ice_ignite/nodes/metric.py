"""``MetricNode``: any ignite ``Metric``, fed by a forward, computed at every epoch end (B5)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from ignite.metrics import Metric

from ice_ignite.nodes.node import Node, check_callable

if TYPE_CHECKING:
    from ice_ignite.graph import GraphOutputCache

__all__ = ["MetricNode"]

_NO_GRAD = torch.no_grad()  # reusable; saves building a context manager every iteration


def _plain(value: Any) -> Any:
    """0-dim tensors become Python numbers, other tensors move to the CPU (as ignite does)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.dim() == 0 else value.cpu()
    return value


class MetricNode(Node):
    """An ignite ``Metric`` in the graph.

    ``forward(n, x)`` returns what ``metric.update`` takes, e.g. ``(y_pred, y)``; a dict is turned
    into a tuple by the metric's ``required_output_keys`` as ignite does. The metric is reset at
    every epoch start; at epoch end ``task.engine.state.metrics[name]`` holds ``metric.compute()``
    (dict results flattened as ``name/key``), then ``epoch_end(n)`` is called.

    Args:
        metric: any ``ignite.metrics.Metric``.
        forward: ``forward(n, x) -> update arguments``.
        epoch_end: ``epoch_end(n)``, called after the metric is computed.
        resources: extra attributes or hooks (see ``Node``).

    Examples:
        >>> from ignite.metrics import Accuracy
        >>> import ice_ignite as ice
        >>> acc = ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"], x["data"][1]),
        ...                      epoch_end=lambda n: print(n.value))
    """

    def __init__(
        self,
        metric: Metric,
        forward: Callable[["MetricNode", "GraphOutputCache"], Any],
        epoch_end: Callable[["MetricNode"], Any] | None = None,
        **resources: Any,
    ):
        if isinstance(metric, type):
            raise TypeError(f"MetricNode needs an ignite.metrics.Metric instance, got the class {metric.__name__}: "
                            f"instantiate it, e.g. {metric.__name__}()")
        if not isinstance(metric, Metric):
            raise TypeError(
                f"MetricNode needs an ignite.metrics.Metric instance, got {type(metric).__name__} {metric!r}; "
                "e.g. MetricNode(Accuracy(), forward=lambda n, x: (x['net'], x['data'][1]))"
            )
        if forward is None:
            raise TypeError("MetricNode needs a forward returning the metric's update arguments")
        check_callable(forward, 2, "forward of MetricNode", "forward=lambda n, x: (x['net'], x['data'][1])")
        self.metric = metric
        #: best records of ``save_best``: a list of ``(value, checkpoint file name)``
        self.best_records: list[tuple[float, str]] = []
        super().__init__(forward=forward, epoch_end=epoch_end, **resources)

    @property
    def value(self) -> Any:
        """The metric's value computed at the last epoch end (``state.metrics[name]``)."""
        task = self.task
        if task is None:
            return None
        return task.engine.state.metrics.get(self._name)

    def _on_update(self) -> None:
        out = self.egraph.cache._values[self._name]
        metric = self.metric
        if type(out) is not tuple and isinstance(out, Mapping):
            keys = metric.required_output_keys
            if keys is None:
                raise TypeError(f"MetricNode {self.uid!r} returned a dict, but its metric takes no keys: return a tuple")
            missing = [k for k in keys if k not in out]
            if missing:
                raise ValueError(f"MetricNode {self.uid!r} returned a dict without key(s) {missing}: return {keys}")
            out = tuple(out[k] for k in keys)
        if torch.is_grad_enabled():
            with _NO_GRAD:
                metric.update(out)
        else:
            metric.update(out)

    def _on_epoch_start(self) -> None:
        self.metric.reset()

    def _on_epoch_end(self) -> None:
        # Like Metric.completed, except that dict results are flattened as "name/key" (ignite
        # writes bare keys, which collide between MetricNodes).
        metrics = self.task.engine.state.metrics
        result = self.metric.compute()
        if isinstance(result, Mapping):
            result = {key: _plain(value) for key, value in result.items()}
            for key, value in result.items():
                metrics[f"{self._name}/{key}"] = value
        else:
            result = _plain(result)
        metrics[self._name] = result

    def save_best(self, value: Any, higher_better: bool = True, max_keep: int = 3) -> "Path | None":
        """Save a checkpoint when ``value`` is among the ``max_keep`` best seen so far, and delete
        the one that drops out. Call it on every rank, typically from ``epoch_end``:
        ``MetricNode(Accuracy(), forward, epoch_end=lambda n: n.save_best(n.value))``.

        The files are ``ckpts/best-<seq>-E<e>S<s>-<name>=<value>.pt``; the records travel in
        checkpoints, so the best ``max_keep`` are kept across resumes. Returns the file written
        (None when ``value`` does not qualify, and on ranks other than 0).
        """
        if self.hypergraph is None:
            raise RuntimeError("MetricNode.save_best needs the node to be added to a HyperGraph first")
        if isinstance(value, torch.Tensor):
            value = value.item()
        return self.hypergraph._save_best(self, value, higher_better, max_keep)

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
