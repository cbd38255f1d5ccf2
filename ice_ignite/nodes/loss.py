"""``LossNode``: a weighted loss term, reported like ignite's ``Loss`` metric (B2, B5)."""

from __future__ import annotations

import enum
import math
from array import array
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import torch
from ignite.engine import Engine
from ignite.metrics import Loss
from ignite.metrics.metric import reinit__is_reduced

from ice_ignite.engine.engine import TaskEngine
from ice_ignite.engine.roles import NodeGraphView, name_of
from ice_ignite.errors import GraphError
from ice_ignite.nodes.node import Node, OutputCache, check_callable

__all__ = ["LossMode", "LossNode", "LossAverage", "batch_length"]


_UNKNOWN = object()


class LossMode(enum.Enum):
    """How the LossNodes of a train task are combined. ``MANUAL``: ``sum(weight * loss)``."""

    MANUAL = "manual"


def _passthrough(loss: torch.Tensor, n: int) -> torch.Tensor:
    return loss


def _count(n: int) -> int:
    return n


def _fold32(total: float, products: list[float]) -> float:
    """``total + products[0] + products[1] + ...`` in float32 arithmetic, in order: each product (a
    float32 loss times a batch size below 2**24, exact in a double) and each sum rounded to float32,
    as float32 tensor operations round them. A double sum of two float32 numbers rounded to float32
    is their correctly rounded float32 sum, so the result is the tensor's bit for bit (IEEE
    conversion: what overflows the float32 range becomes infinity)."""
    cell = array("f", [total])
    for product in array("f", products):  # each product rounded to float32
        cell[0] += product  # the double sum, rounded to float32 when stored
    return cell[0]


class LossAverage(Loss):
    """ignite's ``Loss`` of a loss already computed: ``output_transform`` gives ``(loss, batch_size)``
    and the epoch value is the batch-size weighted mean, exactly as ``Loss(lambda loss, n: loss,
    batch_size=lambda n: n)`` computes it (same arithmetic, same ``state_dict``).

    Leaner per iteration than the general ``Loss``, which the train step pays on every
    iteration: no loss function call, no ``torch.no_grad`` context (the loss is detached before
    it is accumulated, so nothing is recorded), no unrolling of list outputs. A float32 loss on
    the CPU is read at once and kept as ``loss * batch_size`` (exact in a Python float); every
    ``FOLD_EVERY`` of them are summed on the host in float32 arithmetic, in order (``_fold32``):
    the float32 tensor's sum bit for bit, for a fraction of the two tensor operations per
    iteration it replaces. ``_sum`` is brought up to date before ``compute`` and ``state_dict``.
    On other devices (where reading a value would wait for the device) a float32 loss is
    multiplied by a cached tensor holding the batch size rather than by a Python int (which costs
    a fresh wrapped-number tensor each time; the product is the same float32 one).

    Examples:
        >>> m = LossAverage(output_transform=lambda out: out)
        >>> m.reset(); m.update((torch.tensor(1.0), 2)); m.update((torch.tensor(4.0), 1)); m.compute()
        2.0
    """

    #: how many CPU losses wait before they are summed
    FOLD_EVERY = 128
    #: sum CPU losses on the host: a ``.item()`` per iteration, which on the CPU waits for no device
    #: (tests turn it off to run, on the CPU, the path of the other devices, which reads nothing)
    SUM_ON_HOST = True

    def __init__(self, output_transform: Callable, device: torch.device | str = torch.device("cpu")):
        self._pending: list[float] = []  # loss * batch size of CPU float32 losses not summed yet (_sum is behind)
        super().__init__(_passthrough, output_transform=output_transform, batch_size=_count, device=device)
        self._sizes: dict[int, torch.Tensor] = {}  # batch size -> float32 tensor of it on the device
        self._on_host = self.SUM_ON_HOST and self._device.type == "cpu"

    @reinit__is_reduced
    def reset(self) -> None:
        super().reset()
        self._pending.clear()

    def _settle(self) -> None:
        """Add the pending losses to ``_sum``."""
        pending = self._pending
        if not pending:
            return
        if self._sum.dtype is torch.float32:
            self._sum = torch.tensor(_fold32(self._sum.item(), pending), dtype=torch.float32, device=self._device)
        else:  # a sum of another dtype (loaded from a state dict): as the tensor operations would
            for product in array("f", pending):
                self._sum += torch.tensor(product, dtype=torch.float32)
        pending.clear()

    def compute(self) -> float:
        self._settle()
        return super().compute()

    def state_dict(self) -> OrderedDict:
        self._settle()
        return super().state_dict()

    def load_state_dict(self, state_dict: Mapping) -> None:
        self._pending.clear()
        super().load_state_dict(state_dict)

    def iteration_completed(self, engine: Engine) -> None:
        # update() without its decorator's call (it sets _is_reduced after update): this runs every iteration
        self._add(*self._output_transform(engine.state.output))
        self._is_reduced = False

    @reinit__is_reduced
    def update(self, output: tuple[torch.Tensor, int]) -> None:
        self._add(*output)

    def _add(self, loss: torch.Tensor, n: int) -> None:
        if loss.dim() != 0:
            raise ValueError(f"a loss must be a scalar (0-dim) tensor, got shape {tuple(loss.shape)}")
        if loss.dtype is torch.float32 and 0 < n < 2**24:  # n is exact in float32
            if self._on_host and loss.is_cpu:
                pending = self._pending
                pending.append(loss.item() * n)
                self._num_examples += n
                if len(pending) >= self.FOLD_EVERY:
                    self._settle()
                return
            self._settle()
            loss = self._on_device(loss)
            size = self._sizes.get(n)
            if size is None:
                size = self._sizes[n] = torch.full((), n, dtype=torch.float32, device=self._device)
            self._sum += loss * size
        else:
            self._settle()
            self._sum += self._on_device(loss) * n
        self._num_examples += n

    def _on_device(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` detached, on the metric's device."""
        if loss.requires_grad:
            loss = loss.detach()
        return loss if loss.device == self._device else loss.to(self._device)


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
    computed in the same forward and never differentiated. Each LossNode *is* an
    ``ignite.metrics.Loss`` (``n.metric``) attached to the task engine, whose ``output_transform``
    picks the node's value from ``engine.state.output`` and the batch size (the length of the first
    tensor of the first DatasetNode the loss depends on): ``task.engine.state.metrics[name]`` is
    the epoch average of the unweighted loss, weighted by batch size, and
    ``metrics[f"{name}/{key}"]`` the same per aux value.

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

    _forward_fn: Callable[[LossNode, OutputCache], Any]  # required here (Node's may be None)

    def __init__(
        self,
        forward: Callable[[LossNode, OutputCache], Any],
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
        #: the ignite ``Loss`` that averages the loss over an epoch
        self._metric_device = torch.device("cpu")
        self.metric: Loss = self._new_metric(self._metric_device)
        #: an ignite ``Loss`` per aux key
        self.aux_metrics: dict[str, Loss] = {}
        self._engine: TaskEngine | None = None
        self._late: list = []  # handlers of aux metrics attached during a run
        self._source: Any = _UNKNOWN  # the name of the DatasetNode giving the batch size, per task
        super().__init__(forward=forward, **resources)

    def forward_impl(self, x: OutputCache) -> torch.Tensor:
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
            if key not in self.aux_metrics and self._engine is not None:
                self._attach_aux(key, self._engine)
        return out

    # -- ignite metrics ---------------------------------------------------------------------
    def _new_metric(self, device: torch.device, key: str | None = None) -> LossAverage:
        pick = self._loss_input if key is None else (lambda output: self._aux_input(key))
        return LossAverage(output_transform=pick, device=device)

    def _aux_input(self, key: str) -> tuple[torch.Tensor, int]:
        if key not in self.aux:
            raise GraphError(
                f"LossNode {self.uid!r} returned aux[{key!r}] before but not in this iteration; "
                "return the same aux keys in every iteration"
            )
        return self.aux[key], self._batch_size()

    def _loss_input(self, output: Mapping) -> tuple[torch.Tensor, int]:
        # this node's entry of ``output`` (detached in train tasks: update need not detach again) and the
        # batch size, read from the cache (this iteration's outputs, whatever handlers did to ``output``)
        egraph, name = self.egraph, self._name
        assert egraph is not None and name is not None  # the metric updates inside a task
        outputs = egraph.cache.outputs
        source = self._source
        if source is _UNKNOWN:
            source = self._find_source()
        loss = output.get(name) if type(output) is dict else None
        if loss is None:
            loss = outputs[name]
        return loss, (batch_length(outputs[source]) if source is not None else 1)

    def _batch_size(self) -> int:
        source = self._source
        if source is _UNKNOWN:
            source = self._find_source()
        return batch_length(self._graph().cache.outputs[source]) if source is not None else 1

    def _find_source(self) -> str | None:
        # once per task, after the first forward recorded the dependencies
        found = self._graph().batch_source(name_of(self))
        self._source = found.name if found is not None else None
        return self._source

    def _moved(self, metric: Loss, device: torch.device, key: str | None = None) -> Loss:
        moved = self._new_metric(device, key)
        moved.load_state_dict(
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in metric.state_dict().items()}
        )
        return moved

    def _graph(self) -> NodeGraphView:
        """The running graph (the loss's metric reads the cache inside a task only)."""
        egraph = self.egraph
        if egraph is None:
            raise RuntimeError(f"LossNode {self.uid!r} is not part of a running task")
        return egraph

    def _attach_engine(self, engine: TaskEngine) -> None:
        """Attach the loss (and aux) metrics to a starting task's engine (ice_ignite's handlers)."""
        device = self.device
        if device != self._metric_device:  # accumulate where the loss is: no copy per iteration
            self.metric = self._moved(self.metric, device)
            self.aux_metrics = {k: self._moved(m, device, k) for k, m in self.aux_metrics.items()}
            self._metric_device = device
        self._source = _UNKNOWN
        self.metric.attach(engine, name_of(self))
        for key, metric in self.aux_metrics.items():
            metric.attach(engine, f"{self._name}/{key}")
        self._engine = engine

    def _attach_aux(self, key: str, engine: TaskEngine) -> None:
        # an aux value seen for the first time, mid-run: attach its metric now and start its epoch
        metric = self.aux_metrics[key] = self._new_metric(self._metric_device, key)
        with engine.internal() as added:
            metric.attach(engine, f"{self._name}/{key}")
        self._late.extend(added)
        metric.started(engine)

    def _detach_engine(self, engine: TaskEngine) -> None:
        engine.remove_internal(self._late)
        self._engine = None

    # -- checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The epoch accumulators of the loss and of each aux value."""
        return {"loss": self.metric.state_dict(), "aux": {k: m.state_dict() for k, m in self.aux_metrics.items()}}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Restore the accumulators."""
        if "loss" in state:
            self.metric.load_state_dict(state["loss"])
        for key, sub in state.get("aux", {}).items():
            metric = self.aux_metrics.get(key) or self._new_metric(self._metric_device, key)
            metric.load_state_dict(sub)
            self.aux_metrics[key] = metric
