"""``Task``: one step of a schedule, an ignite Engine that runs one selected graph (B3)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from ignite.engine import Events

from ice_ignite.engine.engine import EngineTerminate, TaskEngine
from ice_ignite.errors import CheckpointError, ResumeTaskFailed, ScheduleError, StopAllTasks, StopTask
from ice_ignite.graph.graph import ExecutableGraph
from ice_ignite.graph.tags import DEFAULT_TAG, normalize_tags

__all__ = ["Task"]


class Task:
    """One step of a schedule: train or evaluate the nodes selected by ``tags`` for a number of
    epochs or steps, as a run of ``task.engine``, an ignite ``Engine``.

    Each time the schedule reaches the task it runs ``epochs`` more epochs (or, counting ``steps``,
    one more epoch of ``steps × k`` iterations, k the gradient accumulation). A train task's engine
    behaves as the trainer of the ignite script that does the same training: one ignite run over
    all of its repetitions in the schedule (STARTED once, ``max_epochs`` their total, COMPLETED once;
    between repetitions the run is interrupted with ``engine.interrupt()``, which fires INTERRUPT,
    and continued). An eval task's engine behaves as an evaluator: a fresh run at every repetition.
    ``engine.terminate()`` on a train task's engine ends its run and the innermost Repeat holding
    it. Handlers attached to ``task.engine`` run after ice_ignite's own handlers of the same event.
    ``engine.state.batch`` is the iteration's batches and ``engine.state.output`` its node outputs,
    by name (detached in train tasks).

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

    def __init__(self, *, train: bool, epochs: int = 0, steps: int = 0, tags: str | Iterable[str] = DEFAULT_TAG):
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
        self.engine = TaskEngine(self._process)
        self.engine.task_label = repr(self)
        self.engine.task = self
        self._graph: ExecutableGraph | None = None  # the graph of the running repetition
        self._open_graph: ExecutableGraph | None = None  # the graph whose handlers the engine's run holds
        self._open_handles: tuple = ((), (), ())
        self._stop_at = 0  # the engine epoch at which the running repetition ends
        self._hold = False  # interrupt after the last repetition too (finish() completes the run)
        #: the engine epoch at which the schedule running the task started it (checkpointed): its
        #: repetitions end at ``base_epoch`` + the epochs of the repetitions so far
        self.base_epoch = 0
        self._fetched = False  # the engine fetched this iteration's batches and the iteration has not run
        self._epoch_iter = 0
        self._closed_epoch = 0  # the last engine epoch whose EPOCH_COMPLETED work began
        self._close_epoch_on_start = False
        self._from_checkpoint = False  # the engine's state was loaded from a checkpoint, not run here

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
    def graph(self) -> ExecutableGraph | None:
        """The ExecutableGraph of the current run, or None when not running."""
        return self._graph

    @property
    def running(self) -> bool:
        """Whether the task's engine is running."""
        return self._graph is not None

    # -- running ------------------------------------------------------------------------------
    def epoch_length(self, graph: ExecutableGraph, grad_acc_steps: int) -> int:
        """Iterations per engine epoch of this task on ``graph``."""
        if self.step_mode:
            return self.steps * (grad_acc_steps if self.train else 1)
        sizes = {str(n.uid): n.batches_per_pass() for n in graph.dataset_nodes}
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
            raise ScheduleError(
                f"{self!r}: DatasetNode {', '.join(empty)} yields no batch (empty, or drop_last "
                "with fewer samples than batch_size)"
            )
        return min(size for size in sizes.values() if size is not None)  # all of them (checked above)

    def run(
        self,
        graph: ExecutableGraph,
        attach: Callable[[Task], None] | None = None,
        user_handlers: Callable[[Task], list] | None = None,
        resume: dict | None = None,
        reload_epoch: Callable[[], None] | None = None,
        span: tuple[int, int] | None = None,
        hold: bool = False,
    ) -> bool:
        """Run one repetition of the task on ``graph``: ``epochs`` more epochs (or one epoch of
        ``steps × k`` iterations) of its engine.

        A train task's engine is one ignite run over all of its repetitions: ``span = (end, total)``
        are the engine epochs at which this repetition and the whole run end (``train_spans`` of
        the schedule; default: one repetition more); the first repetition starts the run with
        ``max_epochs=total``, each ends with ``engine.interrupt()`` at epoch ``end``, and the next
        continues the run; a repetition whose ``end`` the engine already reached is skipped. An eval
        task's engine is an evaluator: a fresh run at every repetition.

        ``attach(task)`` attaches the run's own handlers (before user handlers, when an ignite run
        starts); ``user_handlers(task)`` attaches user-level ones and returns their handles;
        ``resume`` is the position of a checkpoint taken inside this task (its engine state is
        loaded); ``reload_epoch()`` restores a checkpointed mid-epoch state after the resumed
        epoch's EPOCH_STARTED handlers ran (they reset metrics, as in ignite).

        Returns:
            True when the task's run was terminated (``engine.terminate()``): the schedule then
            ends the innermost Repeat holding the task.
        """
        engine = self.engine
        length = self.epoch_length(graph, graph.context.grad_acc_steps)
        engine.stop_all = engine.stopped = False
        if resume is None and self.train and engine.should_terminate:
            self._finish_suspended(graph, terminate=False)  # terminated while suspended (e.g. by EarlyStopping)
            return True
        if self.train and span is None:
            start = engine.state.epoch if engine.state.max_epochs is not None else 0
            span = (start + self._per_repetition, start + self._per_repetition)
        if resume is None:
            self._check_epoch_length(length)
            if span is not None and engine.state.max_epochs is not None and engine.state.epoch >= span[0]:
                return False  # its engine ran this repetition already (before a resume, or a raised amount)
        elif not self._check_resume(resume, length):
            return False  # checkpointed after this repetition ended
        self._from_checkpoint, self._hold = False, hold
        self._bind(graph, attach, user_handlers, new_run=resume is not None)
        data = _Batches(self, graph.dataset_nodes) if graph.dataset_nodes else None
        one_shot = None
        try:
            with torch.set_grad_enabled(self.train):
                if resume is None:
                    self._start_repetition(data, length, span)
                else:
                    one_shot = self._resume_repetition(data, resume, length, span, reload_epoch)
        except BaseException:
            self._graph = None
            self._close()
            raise
        finally:
            if one_shot is not None:
                one_shot.remove()
        return self._end_repetition(graph, length)

    @property
    def _per_repetition(self) -> int:
        """Engine epochs one repetition runs."""
        return 1 if self.step_mode else self.epochs

    def _check_epoch_length(self, length: int) -> None:
        """A train task's engine continues over its repetitions: its epoch length cannot change."""
        state = self.engine.state
        if not self.train or state.max_epochs is None or state.epoch_length == length:
            return
        if self._from_checkpoint:
            raise ResumeTaskFailed(
                f"{self!r} ran with {state.epoch_length} iterations per epoch in the run that wrote the checkpoint "
                f"and now has {length} (its DatasetNodes' settings or the gradient accumulation changed); its "
                "engine continues from the checkpoint, so resume with the settings of that run, or start a new "
                "run that loads the checkpoint's weights with g.load_checkpoint(path)"
            )
        raise ScheduleError(
            f"{self!r} ran with {state.epoch_length} iterations per epoch and now has {length} (its data or the "
            "gradient accumulation changed between repetitions); its engine continues across repetitions, so "
            "use a new Task for the new setting"
        )

    def _check_resume(self, resume: dict, length: int) -> bool:
        """Whether the checkpointed position ``resume`` inside this task has anything left to run."""
        if resume["epoch_length"] != length:
            raise ResumeTaskFailed(
                f"{self!r} was checkpointed with {resume['epoch_length']} iterations per epoch and now has "
                f"{length}: the data or the gradient accumulation changed; resume with the same settings"
            )
        iteration, stop_at = resume["iteration"], resume.get("stop_at", resume["max_epochs"])
        return iteration < length * stop_at or _pending_epoch_end(resume, length)

    def _bind(
        self,
        graph: ExecutableGraph,
        attach: Callable[[Task], None] | None,
        user_handlers: Callable[[Task], list] | None,
        new_run: bool,
    ) -> None:
        """Make ``graph`` the running one: continue the suspended ignite run, or open a new one."""
        if self.engine.suspended and (new_run or graph is not self._open_graph):
            self.abandon()  # a resume, or the graph changed between repetitions (nodes added or removed)
        self._graph, self._epoch_iter = graph, 0
        if self.engine.suspended:
            graph.bind(self)
        else:
            self._open(graph, attach, user_handlers)

    def _start_repetition(self, data: Any, length: int, span: tuple[int, int] | None) -> None:
        """Run the next repetition: a train task's run continues to epoch ``span[0]`` (or starts,
        with ``max_epochs=span[1]``); an evaluator's run starts afresh."""
        state = self.engine.state
        if not self.train:
            state.max_epochs = None  # an evaluator: a fresh run every time (ignite's reset)
            span = (self._per_repetition, self._per_repetition)
        assert span is not None  # run() gives a train task its span
        self._closed_epoch = state.epoch if state.max_epochs is not None else 0
        self._stop_at = span[0]
        self.engine.run_task(data, max_epochs=span[1], epoch_length=length)

    def _resume_repetition(
        self,
        data: Any,
        resume: dict,
        length: int,
        span: tuple[int, int] | None,
        reload_epoch: Callable[[], None] | None,
    ) -> Any:
        """Continue the repetition a checkpoint was taken in; returns the handle of the one-shot
        ``reload_epoch`` handler (None without one)."""
        engine, iteration = self.engine, resume["iteration"]
        stop_at = resume.get("stop_at", resume["max_epochs"])
        assert span is not None or not self.train  # run() gives a train task its span
        target = max(span[1], stop_at) if span is not None and self.train else resume["max_epochs"]
        pending = _pending_epoch_end(resume, length)
        engine.load_state_dict(
            {"iteration": iteration, "epoch_length": length, "max_epochs": target, **self._user_state(resume)}
        )
        self._epoch_iter = iteration % length
        self._closed_epoch = iteration // length - (1 if pending else 0)
        self._stop_at = stop_at
        one_shot = None
        if self._epoch_iter and reload_epoch is not None:
            one_shot = engine.add_event_handler(Events.EPOCH_STARTED, _once(reload_epoch))
        if pending and iteration >= length * target:
            self._finish_last_epoch(engine)
        else:
            self._close_epoch_on_start = pending
            engine.run_task(data)
        return one_shot

    def _end_repetition(self, graph: ExecutableGraph, length: int) -> bool:
        """After a repetition: keep a suspended run's handlers, close a finished one; see ``run``."""
        engine, state = self.engine, self.engine.state
        terminated = self.train and engine.should_terminate and not engine.stopped
        if engine.stopped:  # StopTask: the unfinished epoch does not count, and the schedule goes on
            state.epoch = self._closed_epoch
            state.iteration = self._closed_epoch * length
            engine.should_terminate = False
        self._graph = None
        if engine.suspended:
            graph.suspend()
        else:
            self._close()
        if engine.stop_all:
            raise StopAllTasks()
        # terminated at an epoch's end, the rest of the round runs (as the validation a terminated
        # ignite trainer still runs from its EPOCH_COMPLETED); mid-epoch, the Repeat ends now
        return bool(terminated and self._closed_epoch != state.epoch)

    def _open(
        self,
        graph: ExecutableGraph,
        attach: Callable[[Task], None] | None,
        user_handlers: Callable[[Task], list] | None,
    ) -> None:
        """Attach the handlers of a new ignite run of the engine: the task's, the graph's, the
        run's (``attach``), then user-level ones."""
        engine = self.engine
        graph.bind(self)
        with engine.internal() as before:
            engine.add_event_handler(Events.STARTED, self._on_started)
            engine.add_event_handler(Events.EPOCH_STARTED, self._on_epoch_started)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch_completed)
        graph.attach(engine)
        with engine.internal() as after:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration_completed)
            if attach is not None:
                attach(self)
        handles = user_handlers(self) if user_handlers is not None else []
        self._open_graph, self._open_handles = graph, (before, after, handles)

    def _close(self) -> None:
        """Remove what ``_open`` attached and end the graph's run (``clean_up`` if COMPLETED did not fire)."""
        graph, self._open_graph = self._open_graph, None
        if graph is None:
            return
        before, after, handles = self._open_handles
        for handle in handles:
            handle.remove()
        self.engine.remove_internal(before)
        self.engine.remove_internal(after)
        graph.finish(self.engine)

    def _finish_suspended(self, graph: ExecutableGraph | None, terminate: bool) -> None:
        """End a suspended run: TERMINATE, then COMPLETED, as a terminated ignite run ends."""
        engine = self.engine
        if not engine.suspended:
            return
        graph = self._open_graph if graph is None or graph is not self._open_graph else graph
        assert graph is not None  # a suspended run has its open graph
        if terminate or engine.should_terminate:
            engine.terminate()
        self._graph = graph
        graph.bind(self)
        try:
            with torch.set_grad_enabled(self.train):
                if engine.should_terminate:
                    engine.fire_event(Events.TERMINATE)
                engine.run_task(None)  # the interrupted run continues, sees should_terminate and completes
        finally:
            self._graph = None
            self._close()

    def finish(self) -> None:
        """Complete the task's suspended run: COMPLETED after its last repetition (held), or
        TERMINATE and COMPLETED when the schedule ended before its other repetitions."""
        state = self.engine.state
        self._finish_suspended(None, terminate=not (state.max_epochs and state.epoch >= state.max_epochs))

    def abandon(self) -> None:
        """Drop a suspended run without firing its events (after an error, or when its graph
        changed): the next repetition starts a new ignite run that continues the engine's state."""
        if self.engine.suspended:
            self.engine.abandon()
        self._graph = None
        self._close()

    def _process(self, engine: TaskEngine, batch: Any) -> Any:
        graph = self._graph
        assert graph is not None  # the engine runs only between _bind and _end_repetition
        graph.batch = batch
        try:
            out = graph.train_step(engine, batch) if self.train else graph.eval_step(engine, batch)
        except (StopTask, StopAllTasks) as e:
            engine.stop_all |= isinstance(e, StopAllTasks)
            engine.stopped = True
            engine.should_terminate = True
            raise EngineTerminate() from None
        finally:
            self._fetched = False
        return out

    def _finish_last_epoch(self, engine: TaskEngine) -> None:
        """Resuming after the last iteration of the task but before its epoch ended: fire the
        rest of the run's events (ignite would start a new run on a finished state)."""
        try:
            for event in (Events.STARTED, Events.EPOCH_COMPLETED, Events.COMPLETED):
                engine.fire_event(event)
        except EngineTerminate:
            engine.fire_event(Events.TERMINATE)
            engine.fire_event(Events.COMPLETED)

    # ice_ignite's handlers are fired from ``engine.inner`` (their engine argument): act on ``self.engine``
    def _on_started(self) -> None:
        if self._close_epoch_on_start:  # see run(): the checkpointed epoch still has to end
            self._close_epoch_on_start = False
            self.engine.fire_event(Events.EPOCH_COMPLETED)

    def _on_epoch_started(self) -> None:
        state = self.engine.state
        if state.iteration % (state.epoch_length or 1) == 0:  # not a resumed mid-epoch start (set in a run)
            self._epoch_iter = 0

    def _on_iteration_completed(self) -> None:
        self._epoch_iter += 1
        graph = self._graph
        assert graph is not None  # a handler of the running repetition
        steps = graph.context.counters.steps
        if not self.train:
            steps.eval += 1
        elif graph.step_now:
            steps.train += 1

    def _on_epoch_completed(self) -> None:
        engine, state = self.engine, self.engine.state
        self._closed_epoch = state.epoch
        if self.train and self._stop_at <= state.epoch and (state.epoch < (state.max_epochs or 0) or self._hold):
            engine.interrupt()  # this repetition ends here; the next one continues the run (ignite's resume)
        if not self.step_mode:
            assert self._graph is not None  # a handler of the running repetition
            epochs = self._graph.context.counters.epochs
            if self.train:
                epochs.train += 1
            else:
                epochs.eval += 1

    # -- checkpoints --------------------------------------------------------------------------
    def position(self) -> dict:
        """Where a checkpoint taken now continues this running task (at an iteration, epoch or
        run boundary of its engine).

        Raises:
            CheckpointError: called inside an iteration (a forward, a hook of ``StepEvents``).
        """
        state = self.engine.state
        if self._graph is not None and self._graph.in_step:
            raise CheckpointError(
                f"a checkpoint was asked for inside an iteration of {self!r} (from a forward or a StepEvents "
                "handler), where half of the iteration has run; take it at an iteration boundary: a handler of "
                "ITERATION_COMPLETED / GET_BATCH_STARTED / EPOCH_* events, or between tasks"
            )
        if self._fetched:
            raise CheckpointError(
                f"a checkpoint was asked for after the engine of {self!r} fetched the batches of its next "
                "iteration and before that iteration ran (at GET_BATCH_COMPLETED or ITERATION_STARTED): the "
                "checkpoint could not say whether they were used; take it at an iteration boundary: a handler of "
                "ITERATION_COMPLETED / GET_BATCH_STARTED / EPOCH_* events, or between tasks"
            )
        # without DatasetNodes nothing is fetched: at ITERATION_STARTED the iteration has not run yet
        offset = -1 if self.engine.last_event_name == Events.ITERATION_STARTED else 0
        iteration, length = int(state.iteration) + offset, int(state.epoch_length or 0)  # set in a run
        done = iteration % length != 0 or iteration // length <= self._closed_epoch
        return {
            "iteration": iteration,
            "epoch_length": length,
            "max_epochs": int(state.max_epochs or 0),  # set in a run
            "epoch_done": done,
            "stop_at": self._stop_at,
            **self._user_keys(),
        }

    def _user_keys(self) -> dict:
        """``{"user": {key: value}}`` of ``engine.state_dict_user_keys`` (none: ``{}``)."""
        keys = self.engine.state_dict_user_keys
        return {"user": {key: getattr(self.engine.state, key) for key in keys}} if keys else {}

    def _user_state(self, saved: dict) -> dict:
        """The saved values of ``engine.state_dict_user_keys``, for ``Engine.load_state_dict``."""
        missing = [key for key in self.engine.state_dict_user_keys if key not in saved.get("user", {})]
        if missing:
            raise ResumeTaskFailed(
                f"the engine of {self!r} lists {', '.join(map(repr, missing))} in state_dict_user_keys, and the "
                "checkpoint holds no value for them (it was written by a run without these keys); append the keys "
                "after resuming, or resume from a checkpoint of a run that had them"
            )
        return dict(saved.get("user", {}))

    def engine_state(self) -> dict | None:
        """The engine's progress over the run, as checkpoints hold it (None before its first run)."""
        state = self.engine.state
        if state.max_epochs is None:
            return None
        out = {
            "iteration": int(state.iteration),
            "epoch": int(state.epoch),
            "epoch_length": int(state.epoch_length or 0),  # set by the first run
            "max_epochs": int(state.max_epochs),
            "optim_step": int(state.optim_step),  # type: ignore[attr-defined]  # ignite's State: attributes of register_events
            "terminate": bool(self.engine.should_terminate and not self.running),
            "base": self.base_epoch,
            **self._user_keys(),
        }
        if self.running:
            position = self.position()
            out["iteration"], out["epoch"] = position["iteration"], position["iteration"] // position["epoch_length"]
        return out

    def load_engine_state(self, saved: dict | None) -> None:
        """Restore what ``engine_state`` returned."""
        engine = self.engine
        self.abandon()
        self._from_checkpoint = saved is not None
        self.base_epoch = int(saved.get("base", 0)) if saved is not None else 0
        if saved is None:
            engine.state.max_epochs = None
            engine.state.iteration = engine.state.epoch = engine.state.optim_step = 0  # type: ignore[attr-defined]  # (as above)
            return
        engine.load_state_dict(
            {
                "iteration": saved["iteration"],
                "epoch_length": saved["epoch_length"],
                "max_epochs": saved["max_epochs"],
                **self._user_state(saved),
            }
        )
        engine.state.optim_step = saved["optim_step"]  # type: ignore[attr-defined]  # ignite's State: attributes of register_events
        engine.should_terminate = bool(saved["terminate"])


class _Batches:
    """The data of a task's engine: each item is ``{DatasetNode name: batch}``, the next batch of
    every DatasetNode the task selected, without end (the engine's ``epoch_length`` makes the
    epochs; each DatasetNode starts its passes itself)."""

    def __init__(self, task: Task, nodes: list):
        self.task = task
        self._fetchers = [(node.name, node.next_batch) for node in nodes]
        self._only = self._fetchers[0] if len(self._fetchers) == 1 else None

    def __iter__(self) -> _Batches:
        return self

    def __next__(self) -> dict:
        self.task._fetched = True
        only = self._only
        if only is not None:  # one DatasetNode, the usual task: no comprehension (a frame of its own)
            return {only[0]: only[1]()}
        return {name: fetch() for name, fetch in self._fetchers}


def _pending_epoch_end(resume: dict, length: int) -> bool:
    """Whether a checkpoint was taken after an epoch's last iteration but before its EPOCH_COMPLETED work."""
    iteration = resume["iteration"]
    return iteration > 0 and iteration % length == 0 and not resume["epoch_done"]


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` as a handler that acts only the first time it fires."""
    pending = [True]

    def handler() -> None:
        if pending[0]:
            pending[0] = False
            fn()

    return handler
