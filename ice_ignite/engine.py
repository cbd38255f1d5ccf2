"""``TaskEngine``: the ignite ``Engine`` of a Task. Every override of ignite internals lives here.

Written against pytorch-ignite 0.5.5. It differs from a plain ``Engine`` in four ways, each
needed for a Task to behave like an ignite engine to the handlers users attach:

* ice_ignite's own handlers (node hooks, metrics, counters, policies) are added inside
  ``internal()`` and run *before* user handlers of the same event, whenever they were added, so
  a user's ``EPOCH_COMPLETED`` handler sees this epoch's metrics;
* ``StopTask`` / ``StopAllTasks`` raised by any handler end the run like ``terminate()`` called
  mid-iteration (TERMINATE and COMPLETED fire, the epoch does not complete);
* the objects users attach as handlers are remembered in attachment order, so that the stateful
  ones (``ParamScheduler``, ``EarlyStopping``, ``Checkpoint``, metrics) can be checkpointed;
* no debug message is formatted per event unless debug logging was on when the run started.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections import defaultdict
from typing import Any, Callable, Iterator, Mapping, Protocol

from ignite.engine import Engine, Events, EventsList, RemovableEventHandle

# ignite raises this private exception to leave a run through TERMINATE -> COMPLETED without
# EPOCH_COMPLETED; raising it ourselves is the only way to end a run mid-iteration that way.
from ignite.engine.engine import _EngineTerminateException

from ice_ignite.errors import IceError, StopAllTasks, StopTask
from ice_ignite.events import STEP_EVENT_ATTRS, StepEvents

__all__ = ["TaskEngine", "HandlerView", "StepListening", "stateful_object", "EngineTerminate"]

EngineTerminate = _EngineTerminateException


class HandlerView(Protocol):
    """What the handlers added in ``TaskEngine.internal(view)`` see of the engine state."""

    def output(self, output: Any) -> Any:
        """``engine.state.output`` as these handlers see it."""

    def merge(self, written: dict, metrics: dict) -> None:
        """Put the entries these handlers wrote to ``engine.state.metrics`` (``written``) into
        the engine's ``metrics``."""


def stateful_object(handler: Any) -> Any:
    """The object behind ``handler`` that has ``state_dict`` / ``load_state_dict``, or None:
    the handler itself (``EarlyStopping``, a ``ParamScheduler``) or the object of a bound method
    (a metric's ``iteration_completed``)."""
    for obj in (handler, getattr(handler, "__self__", None)):
        if obj is not None and callable(getattr(obj, "state_dict", None)) \
                and callable(getattr(obj, "load_state_dict", None)) and not isinstance(obj, Engine):
            return obj
    return None


class TaskEngine(Engine):
    """An ignite ``Engine`` whose process function runs a task's graph (see the module doc).

    ``engine.state.output`` is the read-only mapping of the iteration's node outputs;
    ``engine.hypergraph`` is the HyperGraph running (or that last ran) the task.
    """

    def __init__(self, process_function: Callable[[Engine, Any], Any]):
        super().__init__(process_function)
        self.register_events(*StepEvents, event_to_attr=STEP_EVENT_ATTRS)
        #: set when a handler raised StopAllTasks: the schedule ends after this run
        self.stop_all = False
        #: the HyperGraph that runs (or last ran) this engine's task
        self.hypergraph: Any = None
        self._n_internal: dict[Any, int] = defaultdict(int)
        self._session: list | None = None
        self._view: HandlerView | None = None
        self._user: list[tuple[Any, Any]] = []  # (event, handler) users attached, in order
        #: which ``StepEvents`` have handlers (kept up to date by add/remove): the train step
        #: fires only those, so an unhandled step event costs an attribute read
        self.listening = StepListening()
        self._lists: dict[int, list] = {}
        self._handlers_changed()

    # -- handlers ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def internal(self, view: HandlerView | None = None) -> Iterator[list]:
        """Handlers added inside this block run before user handlers of the same event. Yields
        the list of what was added, for ``remove_internal``. With a ``view``, those handlers see
        ``engine.state.output`` / ``metrics`` through it (a MetricNode's own output)."""
        outer = (self._session, self._view)
        self._session, self._view = [], view
        try:
            yield self._session
        finally:
            self._session, self._view = outer

    def add_event_handler(self, event_name: Any, handler: Callable, *args: Any, **kwargs: Any) -> RemovableEventHandle:
        if isinstance(event_name, EventsList) or self._session is None:
            handle = super().add_event_handler(event_name, handler, *args, **kwargs)
            if self._session is None and not isinstance(event_name, EventsList):
                self._user.append((event_name, handler))
            self._handlers_changed()
            return handle
        if self._view is not None:
            handler = _viewed(self, handler, self._view)
        handle = super().add_event_handler(event_name, handler, *args, **kwargs)
        handlers = self._event_handlers[event_name]
        entry = handlers.pop()  # ignite appended it; move it behind ice_ignite's earlier handlers
        handlers.insert(self._n_internal[event_name], entry)
        self._n_internal[event_name] += 1
        self._session.append((event_name, entry))
        self._handlers_changed()
        return handle

    def _handlers_changed(self) -> None:
        # ignite looks an event's handler list up by the event, hashing it in Python on every fire;
        # keep the lists by the identity of the registered events too (ignite replaces a list when
        # it removes a handler, so this runs after every add and remove). No key is added to
        # _event_handlers: ignite reads "EXCEPTION_RAISED in _event_handlers" as "someone handles it".
        self.listening.update(self._event_handlers)
        handlers = self._event_handlers
        self._lists = {id(event): handlers.get(event, ()) for event in self._allowed_events}

    def remove_internal(self, added: list) -> None:
        """Remove what an ``internal()`` block added."""
        for event_name, entry in added:
            handlers = self._event_handlers[event_name]
            for i in range(self._n_internal[event_name]):
                # ignite's remove_event_handler rebuilds the list's tuples: compare what they hold
                if handlers[i][0] is entry[0] and handlers[i][1] is entry[1]:
                    del handlers[i]
                    self._n_internal[event_name] -= 1
                    break
        added.clear()
        self._handlers_changed()

    def remove_event_handler(self, handler: Callable, event_name: Any) -> None:
        n = self._n_internal[event_name]
        hits = sum(1 for h, _, _ in self._event_handlers.get(event_name, [])[:n] if self._compare_handlers(handler, h))
        super().remove_event_handler(handler, event_name)
        self._n_internal[event_name] = n - hits
        self._user = [(e, h) for e, h in self._user if not (e == event_name and self._compare_handlers(handler, h))]
        self._handlers_changed()

    def stateful_handlers(self) -> list[Any]:
        """Objects users attached as handlers that have ``state_dict`` / ``load_state_dict``,
        once each, in the order they were first attached."""
        seen: dict[int, Any] = {}
        for _, handler in self._user:
            obj = stateful_object(handler)
            if obj is not None and id(obj) not in seen:
                seen[id(obj)] = obj
        return list(seen.values())

    def run(self, *args: Any, **kwargs: Any) -> Any:
        self._debug = self.logger.isEnabledFor(logging.DEBUG)  # read once a run, not once an event
        try:
            return super().run(*args, **kwargs)
        except BaseException:
            # ignite 0.5.5 keeps the generator of a run that raised, and the next run() of the engine
            # then returns at once without running; a task's next repetition must run
            self._internal_run_generator = None
            raise

    # -- dispatch ---------------------------------------------------------------------------
    def _fire_event(self, event_name: Any, *event_args: Any, **event_kwargs: Any) -> None:
        # Engine._fire_event formats its debug message on every event, debug logging on or off: over
        # half of ignite's dispatch cost per iteration. The same handler loop, formatting only when on.
        if self._debug:
            self.logger.debug(f"{self.state.epoch} | {self.state.iteration}, Firing handlers for event {event_name}")
        self.last_event_name = event_name
        handlers = self._lists.get(id(event_name))
        if handlers is None:  # an event given by an equal object (a string, a filtered event)
            handlers = self._event_handlers[event_name]
        try:
            for func, args, kwargs in handlers:
                kwargs.update(event_kwargs)
                if args and isinstance(args[0], weakref.ref):  # handlers that take the engine hold a weakref
                    engine = args[0]()
                    if engine is None:
                        raise RuntimeError("Engine reference not resolved. Cannot execute event handler.")
                    func(engine, *event_args, *args[1:], **kwargs)
                else:  # metrics' handlers do not take the engine
                    func(*event_args, *args, **kwargs)
        except (StopTask, StopAllTasks) as e:
            self.stop_all |= isinstance(e, StopAllTasks)
            if event_name in (Events.TERMINATE, Events.COMPLETED):
                return
            self.should_terminate = True
            raise _EngineTerminateException() from None
        except Exception as e:
            if not isinstance(e, (_EngineTerminateException, IceError)) and not getattr(e, "_ice_noted", False):
                name = getattr(event_name, "name", event_name)
                e.add_note(f"raised by a handler of {name} on the engine of {self.task_label}")
                e._ice_noted = True  # once, though events nest (a handler that fires another)
            raise

    #: ``fire(event)``: fire a registered event (e.g. a ``StepEvents``) from the process function;
    #: ``fire_event`` without its check that the event is registered, which compares the event with
    #: every registered one on each call. Test ``engine.listening`` first to skip unhandled ones.
    fire = _fire_event

    #: whether debug logging was on when the current run started (ignite's per-event debug message)
    _debug = False

    #: how errors name the engine's task (set by the Task)
    task_label = "a task"


class StepListening:
    """Whether each ``StepEvents`` member has a handler on an engine, as plain attributes (reading
    one costs no hashing of the event), e.g. ``engine.listening.backward_completed``."""

    __slots__ = ("backward_started", "backward_completed", "optim_step_started", "optim_step_completed")

    def __init__(self) -> None:
        self.update({})

    def update(self, handlers: Mapping) -> None:
        """Re-read which step events have handlers in ``handlers`` (event -> handler list)."""
        for event in StepEvents:
            setattr(self, event.value, bool(handlers.get(event)))


def _viewed(engine: TaskEngine, handler: Callable, view: HandlerView) -> Callable:
    """``handler`` seeing ``engine.state.output`` and ``metrics`` through ``view``."""

    @functools.wraps(handler)  # keeps the signature ignite inspects to pass the engine
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = engine.state
        output, metrics = state.output, state.metrics
        state.output, state.metrics = view.output(output), {}
        try:
            return handler(*args, **kwargs)
        finally:
            written, state.output, state.metrics = state.metrics, output, metrics
            if written:
                view.merge(written, metrics)

    wrapper._parent = lambda: handler  # has_event_handler / remove_event_handler find the original
    return wrapper
