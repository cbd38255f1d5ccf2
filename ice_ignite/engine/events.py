"""``StepEvents``: the events a task engine fires inside a train step, after ignite's documented
``BackpropEvents`` pattern (``register_events`` + ``fire_event`` from the process function)."""

from __future__ import annotations

from ignite.engine import EventEnum

__all__ = ["StepEvents", "STEP_EVENT_ATTRS"]


class StepEvents(EventEnum):
    """Events fired by every train step of a task engine, in this order.

    * ``BACKWARD_STARTED`` / ``BACKWARD_COMPLETED``: around the backward of the summed loss (every
      train iteration); node ``backward`` hooks run at ``BACKWARD_COMPLETED``.
    * ``OPTIM_STEP_STARTED`` / ``OPTIM_STEP_COMPLETED``: around the optimizer steps, only on the
      iterations that step (the end of an accumulation cycle, not skipped by the non-finite policy).

    Filters work: ``BACKWARD_*`` count iterations, ``OPTIM_STEP_*`` count the engine's optimizer
    steps (``engine.state.optim_step``).

    Examples:
        >>> from ignite.engine import Engine
        >>> import ice_ignite as ice
        >>> task = ice.Task(train=True, epochs=1)
        >>> task.engine.has_registered_events(ice.StepEvents.OPTIM_STEP_COMPLETED)
        True
        >>> _ = task.engine.add_event_handler(ice.StepEvents.OPTIM_STEP_COMPLETED(every=100), lambda e: None)
    """

    BACKWARD_STARTED = "backward_started"
    BACKWARD_COMPLETED = "backward_completed"
    OPTIM_STEP_STARTED = "optim_step_started"
    OPTIM_STEP_COMPLETED = "optim_step_completed"


#: the ``engine.state`` attribute each StepEvent's filters count
STEP_EVENT_ATTRS = {
    StepEvents.BACKWARD_STARTED: "iteration",
    StepEvents.BACKWARD_COMPLETED: "iteration",
    StepEvents.OPTIM_STEP_STARTED: "optim_step",
    StepEvents.OPTIM_STEP_COMPLETED: "optim_step",
}
