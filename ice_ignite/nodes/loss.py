"""``LossNode``: a weighted loss term, reported like ignite's ``Loss`` metric (B2, B5)."""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, Any, Callable

import torch
from ignite.metrics import Loss

from ice_ignite.errors import GraphError
from ice_ignite.nodes.node import Node, check_callable

if TYPE_CHECKING:
    from ice_ignite.graph import GraphOutputCache

__all__ = ["LossMode", "LossNode", "batch_length"]


class LossMode(enum.Enum):
    """How the LossNodes of a train task are combined. ``MANUAL``: ``sum(weight * loss)``."""

    MANUAL = "manual"


def _passthrough(loss: torch.Tensor, n: int) -> torch.Tensor:
    return loss


def _count(n: int) -> int:
    return n


def _accumulate(metric: Loss, loss: torch.Tensor, n: int) -> None:
    """What ``Loss.update((loss, n))`` does here, in one in-place add: its per-call argument checks
    and wrappers cost more than the addition (``reset`` and ``compute`` stay ignite's)."""
    metric._sum.add_(loss.detach(), alpha=n)
    metric._num_examples += n


def batch_length(batch: Any) -> int:
    """The length of the first tensor in a (nested) batch, or 1 when it holds none."""
    if type(batch) in (list, tuple) and batch and type(batch[0]) is torch.Tensor and batch[0].dim():
        return batch[0].shape[0]  # the usual (inputs, targets) batch, without the general walk
    while True:
        if isinstance(batch, torch.Tensor):
            return int(batch.shape[0]) if batch.dim() > 0 else 1
        if isinstance(batch, (list, tuple)) and batch:
            batch = batch[0]
        elif isinstance(batch, dict) and batch:
            batch = next(iter(batch.values()))
        else:
            return 1


class LossNode(Node):
    """A loss term. In train tasks the selected LossNodes are summed as ``sum(weight * loss)``
    and differentiated once per iteration (by the graph, before the ``backward`` hooks); in eval
    tasks they are computed (validation loss).

    ``forward(n, x)`` returns a scalar tensor, or ``(loss, aux)`` with ``aux`` a dict of tensors
    computed in the same forward and never differentiated. Each LossNode reports like
    ``ignite.metrics.Loss``: ``task.engine.state.metrics[name]`` is the epoch average of the
    unweighted loss, weighted by batch size (the length of the first tensor of the first
    DatasetNode the loss depends on), and ``metrics[f"{name}/{key}"]`` the same per aux value.

    Args:
        forward: ``forward(n, x) -> loss`` or ``(loss, {key: tensor})``.
        weight: the loss's weight in the sum.
        loss_mode: ``LossMode.MANUAL``.
        resources: extra attributes or hooks (see ``Node``).

    Examples:
        >>> import torch.nn.functional as F, ice_ignite as ice
        >>> ce = ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1]), weight=0.5)
        >>> ce.weight
        0.5
    """

    def __init__(
        self,
        forward: Callable[["LossNode", "GraphOutputCache"], Any],
        weight: float = 1.0,
        loss_mode: LossMode = LossMode.MANUAL,
        **resources: Any,
    ):
        if forward is None:
            raise TypeError("LossNode needs a forward, e.g. forward=lambda n, x: F.cross_entropy(x['net'], y)")
        check_callable(forward, 2, "forward of LossNode", "forward=lambda n, x: F.mse_loss(x['net'], x['data'][1])")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise TypeError(f"LossNode weight must be a finite number, got {weight!r}")
        if not isinstance(loss_mode, LossMode):
            raise TypeError(f"loss_mode must be a LossMode (e.g. ice.LossMode.MANUAL), got {loss_mode!r}")
        self.weight = float(weight)
        self.loss_mode = loss_mode
        #: the aux values of the current iteration (detached), or an empty dict
        self.aux: dict[str, torch.Tensor] = {}
        self.metric: Loss | None = None
        self.aux_metrics: dict[str, Loss] = {}
        super().__init__(forward=forward, **resources)

    def forward_impl(self, x: "GraphOutputCache") -> torch.Tensor:
        autocast = self.egraph.autocast if self.egraph is not None else None
        if autocast is None:
            out = self._forward_fn(self, x)
        else:
            with torch.autocast(autocast[0], dtype=autocast[1]):
                out = self._forward_fn(self, x)
        if type(out) is tuple and len(out) == 2 and isinstance(out[1], dict):
            loss, aux = out
            self.aux = self._check_aux(aux)
        else:
            loss = out
            if self.aux:
                self.aux = {}
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise GraphError(
                f"LossNode {self.uid!r} must return a scalar tensor (or (loss, aux_dict)), got {shape}; "
                "reduce it, e.g. with .mean()"
            )
        return loss

    def _check_aux(self, aux: dict) -> dict[str, torch.Tensor]:
        out = {}
        for key, value in aux.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor) or value.dim() != 0:
                raise GraphError(
                    f"LossNode {self.uid!r} returned aux[{key!r}] = {type(value).__name__}; aux must map str keys "
                    "to scalar tensors"
                )
            out[key] = value.detach()
        return out

    # -- graph behaviour ----------------------------------------------------------------------
    def _new_metric(self) -> Loss:
        device = self.device if self.hypergraph is not None else torch.device("cpu")
        return Loss(_passthrough, batch_size=_count, device=device)

    def _on_update(self) -> None:
        egraph = self.egraph
        values = egraph.cache._values
        source = egraph.batch_source(self._name)
        n = batch_length(values[source._name]) if source is not None else 1
        if self.metric is None:
            self.metric = self._new_metric()
        _accumulate(self.metric, values[self._name], n)
        for key, value in self.aux.items():
            metric = self.aux_metrics.get(key)
            if metric is None:
                metric = self.aux_metrics[key] = self._new_metric()
            _accumulate(metric, value, n)

    def _on_epoch_start(self) -> None:
        for metric in (self.metric, *self.aux_metrics.values()):
            if metric is not None:
                metric.reset()

    def _on_epoch_end(self) -> None:
        engine = self.task.engine
        if self.metric is not None and self.metric._num_examples:
            self.metric.completed(engine, self._name)
        for key, metric in self.aux_metrics.items():
            if metric._num_examples:
                metric.completed(engine, f"{self._name}/{key}")

    # -- checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The epoch accumulators of the loss and of each aux value."""
        state = {"aux": {k: m.state_dict() for k, m in self.aux_metrics.items()}}
        if self.metric is not None:
            state["loss"] = self.metric.state_dict()
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Restore the accumulators."""
        if "loss" in state:
            self.metric = self.metric or self._new_metric()
            self.metric.load_state_dict(state["loss"])
        for key, sub in state.get("aux", {}).items():
            metric = self.aux_metrics.get(key) or self._new_metric()
            metric.load_state_dict(sub)
            self.aux_metrics[key] = metric
