"""The schedule: ``Repeat``, the flattening that gives every schedule entry a position a
checkpoint can record, and ``ScheduleRunner``, which runs the entries and knows that position (B3)."""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from ice_ignite.errors import ScheduleError, StopAllTasks, StopTask
from ice_ignite.graph.task import Task

__all__ = [
    "Repeat",
    "ScheduleEntry",
    "ScheduleRunner",
    "flatten_schedule",
    "call_with_arity",
    "describe",
    "keyed_tasks",
    "end_of_repeat",
    "train_spans",
    "resume_point",
]

logger = logging.getLogger("ice_ignite")


#: a schedule: Tasks, Repeats and callables ``f()`` / ``f(g)`` / ``f(g, launcher)``, in (nested) lists
Schedule: TypeAlias = "Task | Repeat | Callable[..., object] | Sequence[Schedule]"


class Repeat:
    """Run ``tasks`` (Tasks, Repeats, callables) ``times`` times in a row.

    The same Task objects run on every repetition, so handlers attached to their engines fire
    each time; a train task's engine is one ignite run over all of them. ``engine.terminate()``
    on a train task's engine ends the innermost Repeat holding the task (at once when called
    mid-epoch; at the task's next turn when called at an epoch's end, as validations still run
    from a terminated ignite trainer's last EPOCH_COMPLETED).

    Examples:
        >>> import ice_ignite as ice
        >>> train = ice.Task(train=True, epochs=1, tags="train")
        >>> val = ice.Task(train=False, epochs=1, tags="val")
        >>> ice.Repeat([train, val, ice.SaveCheckpointTask()], times=10)
        Repeat([Task(train=True, epochs=1, tags='train'), Task(train=False, epochs=1, tags='val'), SaveCheckpointTask()], times=10)
    """

    def __init__(self, tasks: Schedule, times: int):
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


def describe(item: object) -> str:
    """A stable description of a schedule item, compared when a checkpoint is resumed."""
    if isinstance(item, (Task, Repeat)) or hasattr(type(item), "__ice_schedule_item__"):
        return repr(item)
    return f"callable {getattr(item, '__qualname__', type(item).__qualname__)}"


@dataclass
class ScheduleEntry:
    """One flattened step of a schedule: a Task or a callable, with its path in nested lists."""

    item: Task | Callable[..., object]
    path: tuple[int, ...]
    description: str
    #: the path of the innermost Repeat holding the entry (its entries' paths start with it), or None
    repeat: tuple[int, ...] | None = None


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


def call_with_arity(fn: Callable[..., object], hypergraph: object, launcher: object) -> object:
    """Call a schedule callable as ``f(g, launcher)``, ``f(g)`` or ``f()``, by its signature."""
    return fn(*(hypergraph, launcher)[: _arity(fn)])


def flatten_schedule(
    tasks: object, path: tuple[int, ...] = (), repeat: tuple[int, ...] | None = None
) -> list[ScheduleEntry]:
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
                entries.extend(flatten_schedule(item.tasks, path + (i, rep), repeat=path + (i,)))
        elif isinstance(item, Task):
            entries.append(ScheduleEntry(item, path + (i,), describe(item), repeat))
        elif isinstance(item, type):
            raise ScheduleError(
                f"{where} is the class {item.__name__}, not an instance: call it, e.g. {item.__name__}(...)"
            )
        elif isinstance(item, (list, tuple)):
            entries.extend(flatten_schedule(item, path + (i,), repeat))
        elif callable(item):
            if _arity(item) is None:
                raise ScheduleError(
                    f"{where} = {describe(item)} takes more than 2 arguments; schedule callables are "
                    "f(), f(g) or f(g, launcher)"
                )
            entries.append(ScheduleEntry(item, path + (i,), describe(item), repeat))
        else:
            raise ScheduleError(
                f"{where} is {type(item).__name__} {item!r}, which is not a Task, Repeat or callable; "
                "remove it or wrap the action in a function f(g)"
            )
    return entries


def keyed_tasks(entries: list[ScheduleEntry]) -> dict[str, Task]:
    """``{"task<i>": task}``: the distinct Tasks of a schedule numbered in order of first
    appearance, the stable keys under which checkpoints hold their engines and handlers."""
    tasks: dict[str, Task] = {}
    seen: set[int] = set()
    for entry in entries:
        if isinstance(entry.item, Task) and id(entry.item) not in seen:
            seen.add(id(entry.item))
            tasks[f"task{len(tasks)}"] = entry.item
    return tasks


def train_spans(entries: list[ScheduleEntry]) -> list[tuple[int, int] | None]:
    """For each entry that is a train Task, ``(end, total)``: the engine epoch at which that
    repetition ends and the one at which the task's run over the schedule ends, counted from the
    task's ``base_epoch`` (the epoch its engine had when the schedule started); None for the others.

    Examples:
        >>> train, val = Task(train=True, epochs=2), Task(train=False, epochs=1)
        >>> train_spans(flatten_schedule([Repeat([train, val], times=2)]))
        [(2, 4), None, (4, 4), None]
    """
    totals: dict[int, int] = {}
    counts: dict[int, int] = {}
    for entry in entries:
        if isinstance(entry.item, Task) and entry.item.train:
            totals[id(entry.item)] = totals.get(id(entry.item), 0) + 1
    spans: list[tuple[int, int] | None] = []
    for entry in entries:
        task = entry.item
        if not (isinstance(task, Task) and task.train):
            spans.append(None)
            continue
        counts[id(task)] = k = counts.get(id(task), 0) + 1
        per = 1 if task.step_mode else task.epochs
        spans.append((task.base_epoch + k * per, task.base_epoch + totals[id(task)] * per))
    return spans


def _amountless(description: str) -> str:
    """A Task's description without its epochs / steps (which a resume may raise)."""
    return re.sub(r"\b(epochs|steps)=\d+", "\\1=N", description)


def resume_point(
    saved: list[tuple[tuple[int, ...], str]], progress: dict, engines: dict[str, Any], entries: list[ScheduleEntry]
) -> tuple[int, dict | None] | None:
    """Where a checkpoint taken in a schedule continues in ``entries``, a new flattening of it in
    which ``Repeat(times=)`` or a train Task's ``epochs`` / ``steps`` may have been raised:
    ``(entry index, position inside its task or None)``, or None when the schedules differ.

    ``saved`` is the checkpoint's ``(path, description)`` of every entry, ``progress`` its position
    and ``engines`` its task engine states by task key. The first entry of ``entries`` that is not
    done is where the run continues: a train task's repetition is done when its engine reached the
    epoch at which that repetition ends in the new schedule (see ``train_spans``) or was terminated,
    another entry when the checkpoint's run had passed it. The entries before it must be the checkpoint's, in
    order (Task amounts aside). Entries after it run whatever the checkpoint's run did, but a train
    task's repetitions that its engine already ran are skipped by the task.
    """
    keys = {id(task): key for key, task in keyed_tasks(entries).items()}
    index = progress["entry"]
    done = dict(saved[:index])
    current = saved[index] if index < len(saved) else None
    spans = train_spans(entries)
    point = len(entries)
    for j, (entry, span) in enumerate(zip(entries, spans)):
        if span is not None:  # the checkpoint's own task decides itself (a pending epoch end, say)
            inside = progress["task"] is not None and current is not None and current[0] == entry.path
            engine = engines.get(keys[id(entry.item)]) or {"epoch": 0}
            if not inside and (engine["epoch"] >= span[0] or engine.get("terminate")):
                continue  # ran, or terminated (as ignite's trainer, it stays stopped)
        elif done.get(entry.path) == entry.description:
            continue
        point = j
        break
    known = {e.path: _amountless(e.description) for e in entries}
    if any(known.get(path) != _amountless(desc) for path, desc in done.items()):
        return None
    if point == len(entries):
        return point, None
    entry = entries[point]
    position = (
        dict(progress["task"])
        if progress["task"] is not None
        and current is not None
        and current[0] == entry.path
        and _amountless(current[1]) == _amountless(entry.description)
        else None
    )
    span = spans[point]
    if span is not None and isinstance(
        entry.item, Task
    ):  # a train task: its repetition ends where the new schedule says
        engine = engines.get(keys[id(entry.item)])
        if (
            position is None
            and engine is not None
            and engine["epoch"] > span[0] - (1 if entry.item.step_mode else entry.item.epochs)
        ):  # raised: part of this repetition ran
            position = {
                "iteration": engine["iteration"],
                "epoch_length": engine["epoch_length"],
                "max_epochs": span[1],
                "epoch_done": True,
            }
        if position is not None:
            position["stop_at"] = span[0]
    return point, position


def end_of_repeat(entries: list[ScheduleEntry], i: int) -> int:
    """The index of the first entry after the innermost Repeat holding ``entries[i]`` (``i + 1``
    when no Repeat holds it)."""
    repeat = entries[i].repeat
    if repeat is None:
        return i + 1
    end = i + 1
    while end < len(entries) and entries[end].path[: len(repeat)] == repeat:
        end += 1
    return end


def _validations_follow(entries: list[ScheduleEntry], i: int) -> bool:
    """Whether entries follow ``entries[i]`` in its top-level schedule item and none trains: the
    validations (and saves) an ignite trainer would run from its last EPOCH_COMPLETED, before its
    COMPLETED."""
    top = entries[i].path[0]
    rest = [e.item for e in entries[i + 1 :] if e.path[0] == top]
    return bool(rest) and not any(isinstance(item, Task) and item.train for item in rest)


def handler_label(key: str, kind: str, task_labels: dict[str, str]) -> str:
    """``"Checkpoint #0 of Task(...)"``: the stateful handler a checkpoint holds under ``key``
    (``"task<i>/<j>"``), for messages; ``task_labels`` names the tasks by key.

    Examples:
        >>> handler_label("task0/1", "Accuracy", {"task0": "Task(train=False, epochs=1, tags='val')"})
        "Accuracy #1 of Task(train=False, epochs=1, tags='val')"
    """
    task, index = key.split("/")
    return f"{kind} #{index} of {task_labels.get(task, task)}"


class ScheduleRunner:
    """Runs flattened schedule entries in order and knows where a checkpoint taken now continues.

    ``run_task(task, resume, span, hold)`` runs a Task (``span``: for a train task, the engine epochs
    at which this repetition and the task's run end, see ``train_spans``; ``hold``: keep a train
    task's run suspended after this last
    repetition, to be completed when the top-level schedule item holding it ends, after the
    validations that follow it there) and returns True when the task's run was terminated, which ends the
    innermost Repeat holding it; ``call(item)`` runs a callable; ``boundary()`` is called before
    each entry (the run's preemption check). A nested run (``exec_tasks`` from a schedule callable)
    does not move the position: a checkpoint taken inside it resumes after the callable. When the
    entries end, train tasks whose runs are still suspended (repetitions skipped) are finished.
    """

    def __init__(self) -> None:
        #: the entries of the running schedule, or None
        self.entries: list[ScheduleEntry] | None = None
        self.index = 0
        self.task: Task | None = None
        self._in_callable = False

    def run(
        self,
        entries: list[ScheduleEntry],
        run_task: Callable[[Task, dict | None, tuple[int, int] | None, bool], bool],
        call: Callable[[Callable[..., object]], object],
        start: int = 0,
        resume: dict | None = None,
        boundary: Callable[[], None] | None = None,
    ) -> None:
        """Run ``entries[start:]`` (``resume``: the position inside the first one)."""
        if self.entries is not None:  # nested, from a schedule callable: progress stays the outer one
            self._guarded(entries, run_task, call, 0, None, None, track=False)
            return
        self.entries = entries
        try:
            self._guarded(entries, run_task, call, start, resume, boundary, track=True)
        finally:
            self.entries, self.task, self._in_callable = None, None, False

    def _guarded(
        self,
        entries: list[ScheduleEntry],
        run_task: Callable,
        call: Callable,
        start: int,
        resume: dict | None,
        boundary: Callable[[], None] | None,
        track: bool,
    ) -> None:
        tasks = keyed_tasks(entries).values()
        try:
            self._loop(entries, run_task, call, start, resume, boundary, track)
        except BaseException:
            for task in tasks:  # an error: nothing more fires; the next run of a task starts a new ignite run
                task.abandon()
            raise
        for task in tasks:
            task.finish()

    def _loop(
        self,
        entries: list[ScheduleEntry],
        run_task: Callable,
        call: Callable,
        start: int,
        resume: dict | None,
        boundary: Callable[[], None] | None,
        track: bool,
    ) -> None:
        held: dict[int, tuple[Task, int]] = {}  # train runs held after their last repetition, by the item ending them
        spans = train_spans(entries)
        i = start
        while i < len(entries):
            for key in [k for k, (_, top) in held.items() if entries[i].path[0] != top]:
                held.pop(key)[0].finish()  # the top-level item of its last repetition ended
            item = entries[i].item
            if track:
                self.index = i
                if boundary is not None:
                    boundary()
            ended = False
            try:
                if isinstance(item, Task):
                    outer, self.task = self.task, item
                    try:
                        span = spans[i]
                        hold = span is not None and span[0] == span[1] and _validations_follow(entries, i)
                        ended = run_task(item, resume if i == start else None, span, hold)
                        if hold:
                            held[id(item)] = (item, entries[i].path[0])
                    finally:
                        self.task = outer
                else:
                    outer_call, self._in_callable = self._in_callable, True
                    try:
                        call(item)
                    finally:
                        self._in_callable = outer_call
            except StopAllTasks:
                logger.info("StopAllTasks raised in %s: the schedule ends here", entries[i].description)
                if track:
                    self.index = len(entries)
                return
            except StopTask:
                logger.info("StopTask raised in %s, outside a task: ignored", entries[i].description)
            if ended:
                end = end_of_repeat(entries, i)
                logger.info(
                    "the engine of %s was terminated: %s",
                    entries[i].description,
                    "the Repeat holding it ends" if entries[i].repeat is not None else "it does not run again",
                )
                i = end
            else:
                i += 1
        if track:
            self.index = len(entries)

    def progress(self) -> dict:
        """``{"entry": i, "task": position in it or None}``: where the schedule continues if
        resumed from a checkpoint taken now."""
        if self.entries is None:
            return {"entry": 0, "task": None}
        if self._in_callable:  # a checkpoint inside a callable resumes after it
            return {"entry": self.index + 1, "task": None}
        task = self.task
        if task is not None and task.running:
            return {"entry": self.index, "task": task.position()}
        return {"entry": self.index, "task": None}
