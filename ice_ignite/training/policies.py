"""``NonFinitePolicy``: what a NaN or infinite train loss does, as handlers of a task engine's
events (like ignite's ``TerminateOnNan``, decided the same way on every rank)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError

from ice_ignite.distributed import parallel
from ice_ignite.engine.events import StepEvents
from ice_ignite.engine.roles import ContextView, GraphView, TaskView, name_of, running_graph
from ice_ignite.errors import NonFiniteLossError, StopAllTasks

__all__ = ["NonFinitePolicy", "POLICIES"]

logger = logging.getLogger("ice_ignite")

POLICIES = ("raise", "skip", "stop", "ignore")
_HINT = (
    "Lower the learning rate, clip gradients (grad_clip_norm=), or choose g.set_nonfinite_policy('skip') to "
    "skip such steps or 'stop' to checkpoint and stop"
)


class NonFinitePolicy:
    """What a non-finite train loss does (see ``HyperGraph.set_nonfinite_policy``).

    * ``"raise"``: reads the LossNodes' epoch averages (ignite ``Loss.compute``) every
      ``check_every`` optimizer steps and at every train epoch end: no host read per iteration;
    * ``"skip"`` / ``"stop"``: at ``BACKWARD_COMPLETED`` of the iteration that ends an
      accumulation cycle, skips the optimizer step when a loss of the cycle was not finite (one
      host read per step); ``"stop"`` then checkpoints at ITERATION_COMPLETED and ends the run;
    * ``"ignore"``: no check.

    Examples:
        >>> NonFinitePolicy("skip").policy
        'skip'
    """

    def __init__(self, policy: str = "raise", check_every: int = 50):
        if policy not in POLICIES:
            raise ValueError(f"non-finite policy must be 'raise', 'skip', 'stop' or 'ignore', got {policy!r}")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"non-finite check_every must be an int >= 1, got {check_every!r}")
        self.policy = policy
        self.check_every = check_every
        #: optimizer steps skipped for a non-finite loss
        self.skipped_steps = 0
        self._bad: torch.Tensor | None = None
        self._stop = False
        self._finite_until = 0

    def attach(self, task: TaskView, context: ContextView, checkpoint: Callable[[], object] | None) -> None:
        """Attach to a starting train task (inside its engine's ``internal()`` block);
        ``checkpoint()`` saves a checkpoint before policy "stop" ends the run."""
        if not task.train or self.policy == "ignore":
            return
        engine, graph = task.engine, running_graph(task)
        self._finite_until = context.counters.steps.train
        if self.policy == "raise":
            engine.add_event_handler(StepEvents.BACKWARD_COMPLETED, self._periodic_check, task, graph, context)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._check, task, context)
            return
        self._bad, self._stop = None, False  # a cycle cut short by StopTask does not reach the next run
        engine.add_event_handler(StepEvents.BACKWARD_COMPLETED, self._track, task, graph, context)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop_if_asked, checkpoint)

    # -- "raise" ----------------------------------------------------------------------------
    def _periodic_check(self, engine: Engine, task: TaskView, graph: GraphView, context: ContextView) -> None:
        if graph.step_now and (context.counters.steps.train + 1) % self.check_every == 0:
            self._check(engine, task, context, before_step=True)

    def _check(self, engine: Engine, task: TaskView, context: ContextView, before_step: bool = False) -> None:
        """A non-finite loss leaves its epoch average non-finite; every rank computes the same
        average (``Loss.compute`` all-reduces), so every rank decides the same way. Before a step,
        this iteration's losses (not yet in the averages) are read too, on every rank."""
        now = context.counters.steps.train + (1 if before_step else 0)
        graph, bad = running_graph(task), []
        current = (
            torch.stack([graph.cache.value(name_of(n)).detach().float() for n in graph.loss_nodes])
            if before_step and graph.loss_nodes
            else None
        )
        flags = (~torch.isfinite(current)).tolist() if current is not None else [False] * len(graph.loss_nodes)
        for node, flag in zip(graph.loss_nodes, flags):
            try:
                value = node.metric.compute()
            except NotComputableError:  # no batch yet in this epoch
                value = 0.0
            finite = math.isfinite(value) if type(value) is float else torch.isfinite(torch.as_tensor(value)).all()
            if flag or not finite:  # Loss.compute returns a float: no tensor built to test it
                bad.append(str(node.uid))
        if current is not None and parallel.any_rank(bool(bad)) and not bad:
            bad.append("a LossNode of another rank")
        if not bad:
            self._finite_until = now
            return
        raise NonFiniteLossError(
            f"non-finite loss in {', '.join(bad)} of {task!r}, in an optimizer step after step {self._finite_until} "
            f"and up to step {now}. {_HINT}"
        )

    # -- "skip" and "stop" --------------------------------------------------------------------
    def _track(self, engine: Engine, task: TaskView, graph: GraphView, context: ContextView) -> None:
        if graph.loss is not None:
            bad = ~torch.isfinite(graph.loss.detach())
            self._bad = bad if self._bad is None else self._bad | bad
        if not graph.step_now:
            return
        flag, self._bad = self._bad, None
        if not parallel.any_rank(bool(flag) if flag is not None else False):
            return
        culprits = [
            f"{n.uid} = {graph.cache.value(name_of(n)).item()}"
            for n in graph.loss_nodes
            if not torch.isfinite(graph.cache.value(name_of(n))).item()
        ] or ["a loss of an earlier micro-batch of the cycle, or of another rank"]
        where = f"in optimizer step {context.counters.steps.train + 1} of {task!r}: {'; '.join(culprits)}"
        logger.warning(
            "non-finite loss %s: the optimizer step is skipped%s",
            where,
            "; the run checkpoints and stops" if self.policy == "stop" else "",
        )
        graph.step_now = False  # no optimizer, scheduler or scaler step, and no step counted
        self.skipped_steps += 1
        self._stop = self.policy == "stop"

    def _stop_if_asked(self, engine: Engine, checkpoint: Callable[[], object] | None) -> None:
        if self._stop:
            self._stop = False
            if checkpoint is not None:
                checkpoint()
            raise StopAllTasks()
