"""``TaskEngine``: the ignite ``Engine`` of a Task. Every use of ignite internals lives here.

Written against pytorch-ignite 0.5.5. To the handlers users attach it is a plain ``Engine``; it
differs in four ways:

* ice_ignite's own handlers (node hooks, metrics, counters, policies, the board) live on a second
  ignite Engine, ``engine.inner``, which shares the task engine's ``state``. The task engine
  registers one forwarding handler per event when it is built, before any user handler can be
  added, so ignite (which calls handlers in insertion order) runs ice_ignite's handlers first —
  a user's ``EPOCH_COMPLETED`` handler sees this epoch's metrics — and nothing edits ignite's
  handler lists (time profilers that insert into them cannot disturb ice_ignite's);
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
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ignite.engine import Engine, Events, EventsList, RemovableEventHandle

# ignite raises this private exception to leave a run through TERMINATE -> COMPLETED without
# EPOCH_COMPLETED; raising it ourselves is the only way to end a run mid-iteration that way.
from ignite.engine.engine import _EngineTerminateException

from ice_ignite.engine.events import STEP_EVENT_ATTRS, StepEvents
from ice_ignite.engine.roles import TaskView
from ice_ignite.errors import IceError, ScheduleError, StopAllTasks, StopTask

__all__ = [
    "TaskEngine",
    "HandlerEngine",
    "HandlerView",
    "StepListening",
    "stateful_object",
    "EngineTerminate",
    "FORWARDED_EVENTS",
]

EngineTerminate = _EngineTerminateException

#: the events whose ice_ignite handlers run first, through ``engine.inner``
FORWARDED_EVENTS = (
    Events.STARTED,
    Events.EPOCH_STARTED,
    Events.GET_BATCH_STARTED,
    Events.ITERATION_STARTED,
    Events.ITERATION_COMPLETED,
    Events.EPOCH_COMPLETED,
    Events.COMPLETED,
    Events.TERMINATE,
    Events.INTERRUPT,
    *StepEvents,
)


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
        if (
            obj is not None
            and callable(getattr(obj, "state_dict", None))
            and callable(getattr(obj, "load_state_dict", None))
            and not isinstance(obj, Engine)
        ):
            return obj
    return None


class _Dispatching(Engine):
    """An Engine whose event dispatch formats no debug message unless debug logging is on.

    ignite's ``Engine._fire_event`` formats its debug message on every event, debug logging on or
    off: over half of its dispatch cost per iteration. ``_fire_event`` is private, but it is the
    only place dispatch can be changed; the handler loop below is ignite 0.5.5's.
    """

    #: whether debug logging was on when the current run started
    _debug = False

    def _handlers_changed(self) -> None:
        # ignite looks an event's handler list up by the event, hashing it in Python on every fire;
        # keep the existing lists by the identity of the registered events too (ignite replaces a list
        # when it removes a handler, so this runs after every add and remove). No key is added to
        # _event_handlers: ignite reads "EXCEPTION_RAISED in _event_handlers" as "someone handles it".
        handlers = self._event_handlers
        self._lists = {id(event): handlers[event] for event in self._allowed_events if event in handlers}

    def add_event_handler(self, event_name: Any, handler: Callable, *args: Any, **kwargs: Any) -> RemovableEventHandle:
        handle = super().add_event_handler(event_name, handler, *args, **kwargs)
        self._handlers_changed()
        return handle

    def remove_event_handler(self, handler: Callable, event_name: Any) -> None:
        super().remove_event_handler(handler, event_name)
        self._handlers_changed()

    def _dispatch(self, event_name: Any, event_args: tuple, event_kwargs: dict) -> None:
        if self._debug:
            self.logger.debug(f"{self.state.epoch} | {self.state.iteration}, Firing handlers for event {event_name}")
        self.last_event_name = event_name
        handlers: Sequence[tuple[Callable, tuple, dict]] | None = self._lists.get(id(event_name))
        if handlers is None:  # an event given by an equal object (a string, a filtered event), or a new list
            handlers = self._event_handlers.get(event_name, ())
        for func, args, kwargs in handlers:
            if event_kwargs:
                kwargs.update(event_kwargs)
            if args and isinstance(args[0], weakref.ref):  # handlers that take the engine hold a weakref
                engine = args[0]()
                if engine is None:
                    raise RuntimeError("Engine reference not resolved. Cannot execute event handler.")
                func(engine, *event_args, *args[1:], **kwargs)
            else:  # metrics' handlers do not take the engine
                func(*event_args, *args, **kwargs)


def _never_run(engine: Engine, batch: Any) -> None:
    raise RuntimeError("a HandlerEngine only holds handlers; it never runs")


class HandlerEngine(_Dispatching):
    """ice_ignite's own handlers of one task engine: an ignite Engine that never runs, shares the
    task engine's ``state`` and is fired by it, first, at every event of ``FORWARDED_EVENTS``.

    Handlers added here behave as on the task engine (filters, ``engine.state``, metrics'
    ``attach``), and run before every handler a user attached to the task engine.
    """

    def __init__(self, owner: TaskEngine):
        super().__init__(_never_run)
        self.register_events(*StepEvents, event_to_attr=STEP_EVENT_ATTRS)
        self.state = owner.state
        self.logger = owner.logger
        self._owner = weakref.ref(owner)
        self._handlers_changed()

    def _handlers_changed(self) -> None:
        super()._handlers_changed()
        owner = self._owner() if hasattr(self, "_owner") else None
        if owner is not None:
            owner.listening.update(owner)

    def _fire_event(self, event_name: Any, *event_args: Any, **event_kwargs: Any) -> None:
        self._dispatch(event_name, event_args, event_kwargs)  # errors are named by the task engine

    def add_event_handler(self, event_name: Any, handler: Callable, *args: Any, **kwargs: Any) -> RemovableEventHandle:
        if not isinstance(event_name, EventsList) and event_name not in FORWARDED_EVENTS:
            raise RuntimeError(
                f"ice_ignite's own handlers cannot listen to {event_name}: the task engine does not "
                "forward it (add it to FORWARDED_EVENTS)"
            )
        return super().add_event_handler(event_name, handler, *args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a HandlerEngine only holds handlers; it never runs")

    @property
    def task_label(self) -> str:
        """How errors name the task (its task engine's label)."""
        owner = self._owner()
        return owner.task_label if owner is not None else "a task"


class TaskEngine(_Dispatching):
    """An ignite ``Engine`` whose process function runs a task's graph (see the module doc).

    ``engine.state.output`` is a dict of the iteration's node outputs by name;
    ``engine.state.batch`` the iteration's batches by DatasetNode name;
    ``engine.hypergraph`` is the HyperGraph running (or that last ran) the task;
    ``engine.inner`` holds ice_ignite's own handlers. Run it with ``g.run`` / ``g.exec_tasks``.
    """

    #: the Task whose engine this is (set by the Task)
    task: TaskView

    def __init__(self, process_function: Callable[[TaskEngine, Any], Any]):
        super().__init__(process_function)  # type: ignore[arg-type]  # ignite calls it with this engine, typed Engine
        self.register_events(*StepEvents, event_to_attr=STEP_EVENT_ATTRS)
        #: set when a handler raised StopAllTasks: the schedule ends after this run
        self.stop_all = False
        #: set when a handler raised StopTask or StopAllTasks (not a user's ``terminate()``)
        self.stopped = False
        #: the HyperGraph that runs (or last ran) this engine's task
        self.hypergraph: Any = None  # the HyperGraph (the front door, above engine/): users read any of it
        #: which ``StepEvents`` have handlers (kept up to date by add/remove): the train step
        #: fires only those, so an unhandled step event costs an attribute read
        self.listening = StepListening()
        self._session: list | None = None
        self._view: HandlerView | None = None
        self._user: list[tuple[Any, Any]] = []  # (event, handler) users attached, in order
        self._running_by_task = False
        self._lists: dict[int, list] = {}
        #: ice_ignite's own handlers, fired first at each forwarded event
        self.inner = HandlerEngine(self)
        #: each forwarder -> the key of its event's list on ``inner``: ``_fire_event`` runs that list itself
        self._forwarded: dict[int, int] = {}  # by id: a user's handler may be unhashable
        for event in FORWARDED_EVENTS:  # registered before any user handler: ignite keeps insertion order
            forward = _forwarder(self.inner, event)
            self._forwarded[id(forward)] = id(event)
            super(_Dispatching, self).add_event_handler(event, forward)
        self._handlers_changed()

    # -- handlers ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def internal(self, view: HandlerView | None = None) -> Iterator[list]:
        """Handlers added inside this block are ice_ignite's: they go to ``engine.inner`` and run
        before user handlers of the same event. Yields the list of their handles, for
        ``remove_internal``. With a ``view``, those handlers see ``engine.state.output`` /
        ``metrics`` through it (a MetricNode's own output)."""
        outer = (self._session, self._view)
        self._session, self._view = [], view
        try:
            yield self._session
        finally:
            self._session, self._view = outer

    def add_event_handler(self, event_name: Any, handler: Callable, *args: Any, **kwargs: Any) -> RemovableEventHandle:
        if self._session is None:
            handle = super().add_event_handler(event_name, handler, *args, **kwargs)
            if not isinstance(event_name, EventsList):
                self._user.append((event_name, handler))
            return handle
        if self._view is not None:
            handler = _viewed(self, handler, self._view)
        handle = self.inner.add_event_handler(event_name, handler, *args, **kwargs)
        self._session.append(handle)
        return handle

    def has_event_handler(self, handler: Callable, event_name: Any | None = None) -> bool:
        if self._session is not None:  # a metric's attach asks whether its handlers are there yet
            return self.inner.has_event_handler(handler, event_name)
        return super().has_event_handler(handler, event_name)

    def remove_internal(self, added: list) -> None:
        """Remove what an ``internal()`` block added."""
        for handle in added:
            handle.remove()
        added.clear()

    def remove_event_handler(self, handler: Callable, event_name: Any) -> None:
        super().remove_event_handler(handler, event_name)
        # ignite's own test of "this entry is that handler" (it sees through wrappers); no public one
        self._user = [(e, h) for e, h in self._user if not (e == event_name and self._compare_handlers(handler, h))]

    def _handlers_changed(self) -> None:
        super()._handlers_changed()
        self.listening.update(self)

    def stateful_handlers(self) -> list[Any]:
        """Objects users attached as handlers that have ``state_dict`` / ``load_state_dict``,
        once each, in the order they were first attached."""
        seen: dict[int, Any] = {}
        for _, handler in self._user:
            obj = stateful_object(handler)
            if obj is not None and id(obj) not in seen:
                seen[id(obj)] = obj
        return list(seen.values())

    # -- running ------------------------------------------------------------------------------
    def run(self, *args: Any, **kwargs: Any) -> Any:
        if not self._running_by_task:
            raise ScheduleError(
                f"the engine of {self.task_label} runs its task's graph, which only the HyperGraph can start: "
                "run the task with g.run([task], ...) or g.exec_tasks([task], launcher) instead of task.engine.run()"
            )
        self._debug = self.logger.isEnabledFor(logging.DEBUG)  # read once a run, not once an event
        try:
            return super().run(*args, **kwargs)
        except BaseException:
            # ignite 0.5.5 keeps the generator of a run that raised, and the next run() of the engine
            # then returns at once without running; a task's next repetition must run
            self.abandon()
            raise

    def run_task(self, data: Any, max_epochs: int | None = None, epoch_length: int | None = None) -> Any:
        """``Engine.run``, called by the engine's Task."""
        self._running_by_task = True
        try:
            return self.run(data, max_epochs=max_epochs, epoch_length=epoch_length)
        finally:
            self._running_by_task = False

    def abandon(self) -> None:
        """Forget a suspended (interrupted) run: the next ``run`` starts a new ignite run from the
        state (STARTED fires again) instead of continuing the old one. ignite has no public way to
        drop the generator of an interrupted run."""
        self._internal_run_generator = None

    @property
    def suspended(self) -> bool:
        """Whether a run was interrupted and not finished: the next ``run`` continues it."""
        return self._internal_run_generator is not None  # ignite's only record of an interrupted run

    # -- dispatch ---------------------------------------------------------------------------
    def _fire_event(self, event_name: Any, *event_args: Any, **event_kwargs: Any) -> None:
        # _dispatch's loop, inlined: this runs several times an iteration, and a call is its largest cost
        if self._debug:
            self.logger.debug(f"{self.state.epoch} | {self.state.iteration}, Firing handlers for event {event_name}")
        self.last_event_name = event_name
        handlers: Sequence[tuple[Callable, tuple, dict]] | None = self._lists.get(id(event_name))
        if handlers is None:  # an event given by an equal object (a string, a filtered event), or a new list
            handlers = self._event_handlers.get(event_name, ())
        forwarded = self._forwarded
        try:
            for func, args, kwargs in handlers:
                key = forwarded.get(id(func))
                if key is not None and not event_args and not event_kwargs:
                    # what the forwarder would do, without its call: this runs several times an iteration
                    inner = self.inner
                    own = inner._lists.get(key)
                    if own:
                        inner.last_event_name = event_name
                        for f, a, kw in own:
                            if a and isinstance(a[0], weakref.ref):  # ``inner`` lives as long as this engine
                                if kw or len(a) != 1:
                                    f(a[0](), *a[1:], **kw)
                                else:
                                    f(a[0]())
                            elif kw:
                                f(*a, **kw)
                            else:
                                f(*a)
                    continue
                if event_kwargs:
                    kwargs.update(event_kwargs)
                if args and isinstance(args[0], weakref.ref):  # handlers that take the engine hold a weakref
                    engine = args[0]()
                    if engine is None:
                        raise RuntimeError("Engine reference not resolved. Cannot execute event handler.")
                    if event_args or kwargs or len(args) != 1:
                        func(engine, *event_args, *args[1:], **kwargs)
                    else:  # the usual handler(engine): no argument tuple or dict built
                        func(engine)
                elif event_args or kwargs:
                    func(*event_args, *args, **kwargs)
                else:  # the forwarders, and handlers that take no engine
                    func(*args)
        except (StopTask, StopAllTasks) as e:
            self.stop_all |= isinstance(e, StopAllTasks)
            self.stopped = True
            if event_name in (Events.TERMINATE, Events.COMPLETED):
                return
            self.should_terminate = True
            raise _EngineTerminateException() from None
        except Exception as e:
            # exceptions take notes from Python 3.11; on 3.10 add_note raised AttributeError, hiding the error
            if sys.version_info >= (3, 11):
                if not isinstance(e, (_EngineTerminateException, IceError)) and not getattr(e, "_ice_noted", False):
                    name = getattr(event_name, "name", event_name)
                    e.add_note(f"raised by a handler of {name} on the engine of {self.task_label}")
                    setattr(e, "_ice_noted", True)  # noqa: B010  # once, though events nest (a handler that fires another)
            raise

    #: ``fire(event)``: fire a registered event (e.g. a ``StepEvents``) from the process function;
    #: ``fire_event`` without its check that the event is registered, which compares the event with
    #: every registered one on each call. Test ``engine.listening`` first to skip unhandled ones.
    fire = _fire_event

    #: how errors name the engine's task (set by the Task)
    task_label = "a task"


def _forwarder(inner: HandlerEngine, event: Any) -> Callable[[], None]:
    """The task engine's first handler of ``event``, which keeps ice_ignite's handlers first:
    ``TaskEngine._fire_event`` runs ``inner``'s handlers of ``event`` in its place (without the
    call); called directly, it fires them through ``inner``'s own dispatch."""

    def forward() -> None:
        inner._fire_event(event)

    return forward


class StepListening:
    """Whether each ``StepEvents`` member has a handler on an engine (its own or ice_ignite's), as
    plain attributes (reading one costs no hashing of the event), e.g.
    ``engine.listening.backward_completed``."""

    __slots__ = ("backward_completed", "backward_started", "optim_step_completed", "optim_step_started")
    backward_completed: bool
    backward_started: bool
    optim_step_completed: bool
    optim_step_started: bool

    def __init__(self) -> None:
        for event in StepEvents:
            setattr(self, event.value, False)

    def update(self, engine: TaskEngine) -> None:
        """Re-read which step events have handlers on ``engine`` and its ``inner`` engine (the
        forwarding handler the task engine registers itself does not count)."""
        inner = getattr(engine, "inner", None)
        # ignite has no public count of an event's handlers: read the lists (never write them)
        for event in StepEvents:
            mine = len(engine._event_handlers.get(event, ())) > 1  # more than the forwarder
            theirs = inner is not None and bool(inner._event_handlers.get(event))
            setattr(self, event.value, mine or theirs)


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

    wrapper._parent = lambda: handler  # type: ignore[attr-defined]  # ignite's mark of a wrapped handler: has_event_handler / remove_event_handler find the original
    return wrapper
