"""The schedule: ``Task`` (an ignite Engine running one selected graph), ``Repeat``, and the
flattening that gives every schedule entry a position a checkpoint can record (B3)."""

from __future__ import annotations

import inspect
import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from ignite.engine import Engine, Events

# ignite raises this private exception to leave a run through TERMINATE -> COMPLETED without
# EPOCH_COMPLETED; raising it ourselves is the only way to end a run mid-iteration that way.
from ignite.engine.engine import _EngineTerminateException

from ice_ignite.errors import IceError, ResumeTaskFailed, ScheduleError, StopAllTasks, StopTask
from ice_ignite.tags import DEFAULT_TAG, normalize_tags

if TYPE_CHECKING:
    from ice_ignite.graph import ExecutableGraph
    from ice_ignite.hypergraph import HyperGraph

__all__ = ["Task", "Repeat", "ScheduleEntry", "flatten_schedule", "call_with_arity"]


class _TaskEngine(Engine):
    """An ignite Engine in which ``StopTask`` / ``StopAllTasks`` raised by any handler end the
    run like ``terminate()`` called mid-iteration: TERMINATE and COMPLETED fire, the epoch does
    not complete."""

    def __init__(self, task: "Task"):
        super().__init__(task._process)
        self._task_stop_all = False
        self.task = task

    @property
    def hypergraph(self) -> "HyperGraph | None":
        """The HyperGraph that runs (or last ran) this engine's task."""
        return self.task._hypergraph

    def _fire_event(self, event_name: Any, *event_args: Any, **event_kwargs: Any) -> None:
        # Engine._fire_event formats its debug message on every event, debug logging on or off: over
        # half of ignite's dispatch cost per iteration. The same handler loop, formatting only when on.
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(f"{self.state.epoch} | {self.state.iteration}, Firing handlers for event {event_name}")
        self.last_event_name = event_name
        try:
            for func, args, kwargs in self._event_handlers[event_name]:
                kwargs.update(event_kwargs)
                if args and isinstance(args[0], weakref.ref):  # handlers that take the engine hold a weakref
                    engine = args[0]()
                    if engine is None:
                        raise RuntimeError("Engine reference not resolved. Cannot execute event handler.")
                    func(engine, *event_args, *args[1:], **kwargs)
                else:  # metrics' handlers do not take the engine
                    func(*event_args, *args, **kwargs)
        except (StopTask, StopAllTasks) as e:
            self._task_stop_all |= isinstance(e, StopAllTasks)
            if event_name in (Events.TERMINATE, Events.COMPLETED):
                return
            self.should_terminate = True
            raise _EngineTerminateException() from None
        except Exception as e:
            if not isinstance(e, (_EngineTerminateException, IceError)) and not getattr(e, "_ice_noted", False):
                name = getattr(event_name, "name", event_name)
                e.add_note(f"raised by a handler of {name} on the engine of {self.task!r}")
                e._ice_noted = True  # once, though events nest (a handler that fires another)
            raise


class Task:
    """One step of a schedule: train or evaluate the nodes selected by ``tags`` for a number of
    epochs or steps, as one ``Engine.run`` of ``task.engine``.

    Each time the schedule reaches the task, ``engine.run`` starts afresh (``state.iteration``
    and ``state.epoch`` restart at 0; the HyperGraph's global counters do not). Handlers attached
    to ``task.engine`` fire on every run, after ice_ignite's own handlers of the same event.

    Args:
        train: train (forward, backward, optimizer steps) or evaluate (forward under no_grad).
        epochs: epochs to run; an epoch ends when the shortest selected DatasetNode is exhausted.
        steps: optimizer steps (train) or iterations (eval) to run, cycling the data.
        tags: which nodes to select (see ``HyperGraph.select_nodes``); ``"*"`` selects only
            default nodes.

    Raises:
        ValueError: not exactly one of ``epochs`` / ``steps`` is positive.

    Examples:
        >>> from ignite.engine import Events
        >>> import ice_ignite as ice
        >>> train = ice.Task(train=True, epochs=2, tags="train")
        >>> _ = train.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: print(e.state.metrics))
        >>> train
        Task(train=True, epochs=2, tags='train')
    """

    def __init__(self, *, train: bool, epochs: int = 0, steps: int = 0, tags: "str | Iterable[str]" = DEFAULT_TAG):
        if not isinstance(train, bool):
            raise TypeError(f"Task train must be True or False, got {train!r}")
        for name, value in (("epochs", epochs), ("steps", steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Task {name} must be a non-negative int, got {value!r}")
        if (epochs > 0) == (steps > 0):
            raise ValueError(
                f"Task needs exactly one of epochs / steps positive, got epochs={epochs}, steps={steps}: "
                "e.g. Task(train=True, epochs=1, tags='train') or Task(train=True, steps=100, tags='train')"
            )
        self.train = train
        self.epochs = epochs
        self.steps = steps
        self.tags = normalize_tags(tags, what="Task tags")
        self.step_mode = steps > 0
        self.engine: Engine = _TaskEngine(self)
        # Registered now, before any user handler, so that ice_ignite's run first (B3).
        self.engine.add_event_handler(Events.STARTED, self._on_started)
        self.engine.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
        self.engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration_completed)
        self.engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch_completed)
        self._graph: ExecutableGraph | None = None
        self._hypergraph: HyperGraph | None = None
        self._resuming = False
        self._epoch_iter = 0
        self._in_engine = False
        self._engine_done = False
        self._closed_epoch = 0  # the last engine epoch whose EPOCH_COMPLETED work began
        self._close_epoch_on_start = False

    @property
    def label(self) -> str:
        """``train[train]`` / ``eval[val]``: the task's kind and tags, as progress and timing show them."""
        return f"{'train' if self.train else 'eval'}[{','.join(self.tags)}]"

    def __repr__(self) -> str:
        amount = f"steps={self.steps}" if self.step_mode else f"epochs={self.epochs}"
        return f"Task(train={self.train}, {amount}, tags={','.join(self.tags)!r})"

    # -- what nodes see -----------------------------------------------------------------------
    @property
    def epoch_steps(self) -> int:
        """Iterations completed in the current engine epoch before the running one."""
        return self._epoch_iter

    @property
    def epoch_size(self) -> int:
        """Iterations in an engine epoch of the current run (0 when not running)."""
        return self.engine.state.epoch_length or 0 if self._graph is not None else 0

    @property
    def graph(self) -> "ExecutableGraph | None":
        """The ExecutableGraph of the current run, or None when not running."""
        return self._graph

    # -- running ------------------------------------------------------------------------------
    def epoch_length(self, graph: "ExecutableGraph", grad_acc_steps: int) -> int:
        """Iterations per engine epoch of this task on ``graph``."""
        if self.step_mode:
            return self.steps * (grad_acc_steps if self.train else 1)
        sizes = {n.uid: n.batches_per_pass() for n in graph.dataset_nodes}
        if not sizes:
            raise ScheduleError(
                f"{self!r} selects no DatasetNode, so its epochs have no length; add a DatasetNode with these "
                "tags, or count steps: Task(..., steps=N)"
            )
        unsized = [uid for uid, size in sizes.items() if size is None]
        if unsized:
            raise ScheduleError(
                f"{self!r}: DatasetNode {', '.join(unsized)} has no length (an IterableDataset without __len__); "
                "epochs need one: run the task in step mode (steps=N) or give the dataset a __len__"
            )
        empty = [uid for uid, size in sizes.items() if size == 0]
        if empty:
            raise ScheduleError(f"{self!r}: DatasetNode {', '.join(empty)} yields no batch (empty, or drop_last "
                                "with fewer samples than batch_size)")
        return min(sizes.values())

    def run(self, hypergraph: "HyperGraph", resume: dict | None = None) -> None:
        """Run the task once on ``hypergraph`` (``resume``: engine state to continue from)."""
        graph = hypergraph.select_egraph(self.tags)
        length = self.epoch_length(graph, hypergraph.grad_acc_steps)
        max_epochs = 1 if self.step_mode else self.epochs
        engine = self.engine
        engine._task_stop_all = False
        self._in_engine = self._engine_done = False
        iteration = pending_epoch_end = 0
        if resume is not None:
            if resume["epoch_length"] != length:
                raise ResumeTaskFailed(
                    f"{self!r} was checkpointed with {resume['epoch_length']} iterations per epoch and now has "
                    f"{length}: the data or the gradient accumulation changed; resume with the same settings"
                )
            iteration = resume["iteration"]
            # checkpointed after an epoch's last iteration but before its EPOCH_COMPLETED work
            pending_epoch_end = iteration > 0 and iteration % length == 0 and not resume["epoch_done"]
            if iteration >= length * max_epochs and not pending_epoch_end:
                self._engine_done = True
                return
        if engine.should_terminate:
            # terminate() was called while the task was not running (e.g. by ignite's EarlyStopping
            # attached to an evaluation task): as in ignite, training ends, here with the schedule.
            engine.should_terminate = False
            raise StopAllTasks()
        self._graph, self._hypergraph = graph, hypergraph
        self._resuming, self._epoch_iter = False, 0
        handles = hypergraph._observe(self)
        try:
            graph.start(self)
            self._in_engine = True
            with torch.set_grad_enabled(self.train):
                if resume is not None:
                    engine.load_state_dict({"iteration": iteration, "epoch_length": length, "max_epochs": max_epochs})
                    self._epoch_iter = iteration % length
                    self._resuming = self._epoch_iter != 0
                    self._closed_epoch = iteration // length - (1 if pending_epoch_end else 0)
                    if pending_epoch_end and iteration >= length * max_epochs:
                        self._finish_last_epoch(engine)
                    else:
                        self._close_epoch_on_start = pending_epoch_end
                        engine.run(None)
                else:
                    self._closed_epoch = 0
                    engine.state.max_epochs = None  # forces a fresh run, also after a StopTask
                    engine.state.max_iters = None
                    engine.run(None, max_epochs=max_epochs, epoch_length=length)
            self._engine_done = True
        finally:
            self._in_engine = False
            self._graph = None
            for handle in handles:
                handle.remove()
            engine.should_terminate = False  # what terminated this run does not reach the next one
            graph.finish()
        if engine._task_stop_all:
            raise StopAllTasks()

    def _process(self, engine: Engine, batch: None) -> dict:
        try:
            if self.train:
                length = engine.state.epoch_length
                return self._graph.train_iteration((engine.state.iteration - 1) % length, length)
            return self._graph.eval_iteration()
        except (StopTask, StopAllTasks) as e:
            engine._task_stop_all |= isinstance(e, StopAllTasks)
            engine.should_terminate = True
            raise _EngineTerminateException() from None

    def _finish_last_epoch(self, engine: Engine) -> None:
        """Resuming after the last iteration of the task but before its epoch ended: fire the
        rest of the run's events (ignite would start a new run on a finished state)."""
        try:
            for event in (Events.STARTED, Events.EPOCH_COMPLETED, Events.COMPLETED):
                engine.fire_event(event)
        except _EngineTerminateException:
            engine.fire_event(Events.TERMINATE)
            engine.fire_event(Events.COMPLETED)

    def _on_started(self, engine: Engine) -> None:
        if self._close_epoch_on_start:  # see run(): the checkpointed epoch still has to end
            self._close_epoch_on_start = False
            engine.fire_event(Events.EPOCH_COMPLETED)

    def progress(self, iteration_offset: int = 0) -> dict:
        """The position of the running engine, as a checkpoint records it."""
        state = self.engine.state
        iteration = int(state.iteration) + iteration_offset
        length = int(state.epoch_length)
        done = iteration % length != 0 or iteration // length <= self._closed_epoch
        return {"iteration": iteration, "epoch_length": length, "epoch_done": done}

    def _on_epoch_started(self, engine: Engine) -> None:
        if self._resuming:  # continuing a checkpointed epoch: its data position and metrics are loaded
            self._resuming = False
            self._graph.apply_hooks("epoch_start")
            return
        self._epoch_iter = 0
        self._graph.apply("epoch_start")

    def on_iteration_started(self, engine: Engine) -> None:
        """Checkpoint and stop at this iteration boundary if the run was asked to (SIGTERM /
        SIGINT); attached for runs that watch for preemption."""
        self._hypergraph._check_preemption(-1)

    def _on_iteration_completed(self, engine: Engine) -> None:
        self._epoch_iter += 1
        hg = self._hypergraph
        steps = hg.global_counters.steps
        if not self.train:
            steps.eval += 1
        elif self._graph.step_now:
            steps.train += 1
        if hg._stop_after_iteration:  # the non-finite policy "stop"
            hg._stop_after_iteration = False
            if hg._rundir is not None:  # in a run: a directory to write to
                hg.save_checkpoint()
            raise StopAllTasks()

    def _on_epoch_completed(self, engine: Engine) -> None:
        self._closed_epoch = engine.state.epoch
        if self.train and self._hypergraph.nonfinite_policy == "raise":
            self._graph.check_losses_finite()
        if not self.step_mode:
            epochs = self._hypergraph.global_counters.epochs
            if self.train:
                epochs.train += 1
            else:
                epochs.eval += 1
        self._graph.apply("epoch_end")


class Repeat:
    """Run ``tasks`` (Tasks, Repeats, callables) ``times`` times in a row.

    The same Task objects run on every repetition, so handlers attached to their engines fire
    each time.

    Examples:
        >>> import ice_ignite as ice
        >>> train = ice.Task(train=True, epochs=1, tags="train")
        >>> val = ice.Task(train=False, epochs=1, tags="val")
        >>> ice.Repeat([train, val, ice.SaveCheckpointTask()], times=10)
        Repeat([Task(train=True, epochs=1, tags='train'), Task(train=False, epochs=1, tags='val'), SaveCheckpointTask()], times=10)
    """

    def __init__(self, tasks: Sequence[Any], times: int):
        if isinstance(tasks, (Task, Repeat)) or callable(tasks):
            tasks = [tasks]
        if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence):
            raise TypeError(f"Repeat takes a list of tasks, got {type(tasks).__name__} {tasks!r}")
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ValueError(f"Repeat times must be an int >= 1, got {times!r}")
        self.tasks = list(tasks)
        self.times = times
        flatten_schedule(self.tasks)  # validates the items now, where the mistake was made

    def __repr__(self) -> str:
        return f"Repeat([{', '.join(map(describe, self.tasks))}], times={self.times})"


def describe(item: Any) -> str:
    """A stable description of a schedule item, compared when a checkpoint is resumed."""
    if isinstance(item, (Task, Repeat)) or hasattr(type(item), "__ice_schedule_item__"):
        return repr(item)
    return f"callable {getattr(item, '__qualname__', type(item).__qualname__)}"


@dataclass
class ScheduleEntry:
    """One flattened step of a schedule: a Task or a callable, with its path in nested lists."""

    item: Any
    path: tuple[int, ...]
    description: str


def _arity(fn: Callable) -> int | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return 1
    for n in (2, 1, 0):
        try:
            sig.bind(*range(n))
            return n
        except TypeError:
            continue
    return None


def call_with_arity(fn: Callable, hypergraph: "HyperGraph", launcher: Any) -> Any:
    """Call a schedule callable as ``f(g, launcher)``, ``f(g)`` or ``f()``, by its signature."""
    return fn(*(hypergraph, launcher)[: _arity(fn)])


def flatten_schedule(tasks: Any, path: tuple[int, ...] = ()) -> list[ScheduleEntry]:
    """Unroll Repeats into a flat list of entries; raise ``ScheduleError`` on a bad item."""
    if isinstance(tasks, (Task, Repeat)) or (callable(tasks) and not isinstance(tasks, type)):
        tasks = [tasks]
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence):
        raise ScheduleError(f"a schedule is a list of Tasks, Repeats and callables, got {type(tasks).__name__}")
    entries: list[ScheduleEntry] = []
    for i, item in enumerate(tasks):
        where = "schedule[" + "][".join(map(str, path + (i,))) + "]"
        if isinstance(item, Repeat):
            for rep in range(item.times):
                entries.extend(flatten_schedule(item.tasks, path + (i, rep)))
        elif isinstance(item, Task):
            entries.append(ScheduleEntry(item, path + (i,), describe(item)))
        elif isinstance(item, type):
            raise ScheduleError(
                f"{where} is the class {item.__name__}, not an instance: call it, e.g. {item.__name__}(...)"
            )
        elif isinstance(item, (list, tuple)):
            entries.extend(flatten_schedule(item, path + (i,)))
        elif callable(item):
            if _arity(item) is None:
                raise ScheduleError(
                    f"{where} = {describe(item)} takes more than 2 arguments; schedule callables are "
                    "f(), f(g) or f(g, launcher)"
                )
            entries.append(ScheduleEntry(item, path + (i,), describe(item)))
        else:
            raise ScheduleError(
                f"{where} is {type(item).__name__} {item!r}, which is not a Task, Repeat or callable; "
                "remove it or wrap the action in a function f(g)"
            )
    return entries
