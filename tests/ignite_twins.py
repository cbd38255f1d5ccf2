"""Twins for the ignite-equivalence tests (API.md B3, turn 3): the same training written once as an
ice_ignite graph and schedule, once as the canonical plain-ignite script, over the same data, the
same model initialisation and the same optimizer, plus a recorder of the events both fire.

* ``Trace`` records, for every event fired on a watched engine, ``(label, event, state.epoch,
  state.iteration, state.max_epochs, state.epoch_length)``. INTERRUPT and DATALOADER_STOP_ITERATION
  go to side lists (``interrupts``, ``stops``): ice_ignite suspends a train task's run with
  ``interrupt()`` between repetitions where the canonical script has no interrupt at all, and when a
  DataLoader's iterator runs dry is a data detail ice_ignite does differently on purpose (it resumes
  mid-epoch exactly; a plain Engine re-reads the loader from its start). EXCEPTION_RAISED is not
  watched: a handler on it changes what ignite does with an error.
* ``ice_twin`` / ``ignite_twin`` build a ``Twin``: its ``trainer`` / ``evaluator`` engines, ``model``,
  ``optimizer`` and a ``run()`` that runs the schedule; ``schedule`` describes it the same way for both.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.metrics import Loss

import ice_ignite as ice

TRAIN_N, VAL_N, BATCH, VAL_BATCH, LR = 48, 20, 8, 10, 0.1  # 6 train iterations an epoch, 2 val ones
SEED = 0
SIDE = (Events.INTERRUPT, Events.DATALOADER_STOP_ITERATION)
TRACED = [e for e in Events if e is not Events.EXCEPTION_RAISED]


# -- data and model ----------------------------------------------------------------------------------
def dataset(n: int = TRAIN_N, seed: int = 0, nan_at: int | None = None) -> torch.utils.data.TensorDataset:
    """``n`` samples of 4 features, 3 classes; sample ``nan_at`` (if given) is all NaN."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    y = torch.randint(0, 3, (n,), generator=gen)
    if nan_at is not None:
        x[nan_at] = float("nan")
    return torch.utils.data.TensorDataset(x, y)


def make_model(dropout: bool = False) -> torch.nn.Module:
    """A tiny MLP, initialised from ``torch.manual_seed(SEED)`` (both twins get the same weights)."""
    torch.manual_seed(SEED)
    layers = [torch.nn.Linear(4, 8), torch.nn.ReLU()] + ([torch.nn.Dropout(0.5)] if dropout else [])
    return torch.nn.Sequential(*layers, torch.nn.Linear(8, 3))


def loader(ds: torch.utils.data.Dataset, batch: int) -> torch.utils.data.DataLoader:
    """The canonical loader. Its own generator: a DataLoader without one draws its workers' base seed
    from the global stream at every ``iter()``, which ice_ignite's DatasetNodes never do (B7), and
    dropout would then see other random numbers."""
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False, generator=torch.Generator())


def cycle(data: Any):
    """A loader that never ends (ignite's canonical data for ``epoch_length=`` epochs)."""
    while True:
        yield from data


# -- the trace -----------------------------------------------------------------------------------------
class Trace:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.interrupts: list[tuple] = []
        self.stops: list[tuple] = []

    def watch(self, engine: Engine, label: str) -> Trace:
        """Record every event of ``engine`` under ``label``. Attach it first, before other handlers."""
        for event in TRACED:
            engine.add_event_handler(event, self._recorder(label, event))
        return self

    def _recorder(self, label: str, event: Any) -> Callable:
        target = {Events.INTERRUPT: self.interrupts, Events.DATALOADER_STOP_ITERATION: self.stops}.get(
            event, self.events
        )

        def record(engine: Engine, *args: Any, **kwargs: Any) -> None:
            s = engine.state
            target.append((label, event.name, s.epoch, s.iteration, s.max_epochs, s.epoch_length))

        return record

    def note(self, label: str, what: str, engine: Engine) -> None:
        """Record something that is not an engine event (an exception handler's call) in the trace."""
        s = engine.state
        self.events.append((label, what, s.epoch, s.iteration, s.max_epochs, s.epoch_length))

    def of(self, label: str) -> list[tuple]:
        return [e for e in self.events if e[0] == label]

    def names(self, label: str | None = None) -> list[str]:
        return [e[1] for e in self.events if label is None or e[0] == label]


def first_difference(a: list, b: list) -> str:
    """Where two traces part, for assertion messages."""
    for i, (x, y) in enumerate(itertools.zip_longest(a, b)):
        if x != y:
            return f"event {i}: ice {x} vs ignite {y}; ice before: {a[max(0, i - 3) : i]}"
    return "equal"


def assert_same_trace(ice_trace: Trace, ignite_trace: Trace, interrupts: bool = False) -> None:
    assert ice_trace.events == ignite_trace.events, first_difference(ice_trace.events, ignite_trace.events)
    if interrupts:
        assert ice_trace.interrupts == ignite_trace.interrupts, first_difference(
            ice_trace.interrupts, ignite_trace.interrupts
        )


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=lambda m: f"{name}: {m}")


# -- the schedule, described once for both twins -------------------------------------------------------
@dataclasses.dataclass
class Schedule:
    """``[Repeat([train, val], times=n)]``; ``epochs`` or ``steps`` per train repetition; ``val``
    False leaves the evaluator out; ``every`` validations per ``every`` repetitions (nested Repeats:
    ``Repeat([Repeat([train], times=every), val], times=n)``, n counting outer rounds)."""

    n: int = 3
    epochs: int = 1
    steps: int = 0
    k: int = 1
    val: bool = True
    every: int = 1

    @property
    def train_epochs(self) -> int:
        """Engine epochs of the train task over the whole schedule."""
        return self.n * self.every * (1 if self.steps else self.epochs)


@dataclasses.dataclass
class Twin:
    kind: str  # "ice" or "ignite"
    trainer: Engine
    evaluator: Engine | None
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    run: Callable[..., Any]
    steps: Callable[[], int]  # optimizer steps so far
    graph: Any = None  # the HyperGraph (ice) or None
    train_task: Any = None
    val_task: Any = None
    extra: dict = dataclasses.field(default_factory=dict)


def ice_graph(
    model: torch.nn.Module,
    train_set=None,
    lr: float = LR,
    k: int = 1,
    tags: str = "train",
    name: str = "net",
    g: ice.HyperGraph | None = None,
    val: bool = True,
) -> ice.HyperGraph:
    """data(train/val) -> net (SGD) -> ce; with ``tags`` other than "train" (a second train task
    of a GAN-like schedule), every node is tagged ``tags``."""
    g = g if g is not None else ice.HyperGraph()
    node_tags = "*" if tags == "train" else tags
    g.add(
        "data",
        ice.DatasetNode(train_set if train_set is not None else dataset(), batch_size=BATCH, shuffle=False),
        tags=tags,
    )
    if val and tags == "train":
        g.add("data", ice.DatasetNode(dataset(VAL_N, seed=1), batch_size=VAL_BATCH), tags="val")
    g.add(
        name,
        ice.ModuleNode(
            model, forward=lambda n, x: n.module(x["data"][0]), optimizers=ice.Optimizer(torch.optim.SGD, lr=lr)
        ),
        tags=node_tags,
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x[name], x["data"][1])), tags=node_tags)
    if k > 1:
        g.set_gradient_accumulate(k)
    return g


def ice_twin(
    tmp_path: Path,
    sched: Schedule = Schedule(),
    *,
    dropout: bool = False,
    train_set=None,
    lr: float = LR,
    run_id: str = "ice",
    **run_kwargs: Any,
) -> Twin:
    """The ice_ignite side: a graph, ``train`` / ``val`` Tasks and ``run(**more)`` = ``g.run`` of
    ``[Repeat([train, val], times=n)]`` (nested as ``sched`` says) in ``tmp_path/run_id``."""
    model = make_model(dropout)
    g = ice_graph(model, train_set, lr=lr, k=sched.k)
    amount = {"steps": sched.steps} if sched.steps else {"epochs": sched.epochs}
    train = ice.Task(train=True, tags="train", **amount)
    val = ice.Task(train=False, epochs=1, tags="val")
    inner = train if sched.every == 1 else ice.Repeat([train], times=sched.every)
    schedule = [ice.Repeat([inner, val] if sched.val else [inner], times=sched.n)]

    def run(tasks: Any = None, **more: Any) -> Any:
        kwargs = {"devices": "cpu", "out_dir": tmp_path, "run_id": run_id, "progress": False}
        kwargs.update(run_kwargs)
        kwargs.update(more)
        return g.run(schedule if tasks is None else tasks, **kwargs)

    twin = Twin(
        "ice",
        train.engine,
        val.engine if sched.val else None,
        model,
        g["*/net"].optimizers[".*"],
        run,
        lambda: g.global_counters.steps.train,
        graph=g,
        train_task=train,
        val_task=val,
    )
    twin.extra["schedule"] = schedule
    return twin


def plain_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    k: int = 1,
    fault_at: int | None = None,
    counter: list | None = None,
) -> Callable:
    """The canonical train step: ``{"data": batch, "net": logits, "ce": loss}`` as ice_ignite's
    ``state.output``; gradient accumulation as ignite's supervised step (loss / k, step every k)."""

    def step(engine: Engine, batch: Any) -> dict:
        if fault_at is not None and engine.state.iteration == fault_at:
            raise ZeroDivisionError("division by zero")
        model.train()
        if (engine.state.iteration - 1) % k == 0:
            optimizer.zero_grad()
        x, y = batch
        out = model(x)
        loss = F.cross_entropy(out, y)
        (loss / k).backward()
        if engine.state.iteration % k == 0:
            optimizer.step()
            if counter is not None:
                counter[0] += 1
        return {"data": batch, "net": out.detach(), "ce": loss.detach()}

    return step


def plain_evaluator(model: torch.nn.Module) -> Engine:
    def step(engine: Engine, batch: Any) -> dict:
        model.eval()
        with torch.no_grad():
            out = model(batch[0])
            return {"data": batch, "net": out, "ce": F.cross_entropy(out, batch[1])}

    evaluator = Engine(step)
    Loss(F.cross_entropy, output_transform=lambda o: (o["net"], o["data"][1])).attach(evaluator, "ce")
    return evaluator


def ignite_twin(
    sched: Schedule = Schedule(),
    *,
    dropout: bool = False,
    train_set=None,
    lr: float = LR,
    fault_at: int | None = None,
    trace: Trace | None = None,
) -> Twin:
    """The canonical script: ``trainer.run(train_loader, max_epochs=n * epochs)`` (or, counting
    steps, ``trainer.run(cycle(train_loader), max_epochs=n, epoch_length=steps * k)``) with
    ``evaluator.run(val_loader)`` from the trainer's ``EPOCH_COMPLETED(every=...)``, attached last:
    by ``run()``, after the test attached its handlers. ``trace`` (if given) watches both engines
    first. ``run(max_epochs=..., before=...)``: ``before(twin)`` runs just before ``trainer.run``."""
    model = make_model(dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    counter = [0]
    trainer = Engine(plain_step(model, optimizer, sched.k, fault_at, counter))
    evaluator = plain_evaluator(model) if sched.val else None
    if trace is not None:
        trace.watch(trainer, "train")
        if evaluator is not None:
            trace.watch(evaluator, "val")
    train_loader = loader(train_set if train_set is not None else dataset(), BATCH)
    val_loader = loader(dataset(VAL_N, seed=1), VAL_BATCH)
    every = sched.every * (1 if sched.steps else sched.epochs)

    def run(max_epochs: int | None = None, seed: int | None = None) -> Any:
        if evaluator is not None and not twin.extra.get("attached"):
            trainer.add_event_handler(Events.EPOCH_COMPLETED(every=every), lambda: evaluator.run(val_loader))
            twin.extra["attached"] = True
        if seed is not None:
            torch.manual_seed(seed)
        total = max_epochs if max_epochs is not None else sched.train_epochs
        if sched.steps:
            return trainer.run(cycle(train_loader), max_epochs=total, epoch_length=sched.steps * sched.k)
        return trainer.run(train_loader, max_epochs=total)

    twin = Twin("ignite", trainer, evaluator, model, optimizer, run, lambda: counter[0])
    twin.extra["val_loader"] = val_loader
    twin.extra["train_loader"] = train_loader
    return twin


def twins(
    tmp_path: Path, sched: Schedule = Schedule(), trace: bool = True, **kwargs: Any
) -> tuple[Twin, Twin, Trace | None, Trace | None]:
    """Both twins of ``sched``, each with its own Trace watching its engines first (if ``trace``)."""
    ice_trace, ignite_trace = (Trace(), Trace()) if trace else (None, None)
    ice_side = ice_twin(tmp_path, sched, **{k: v for k, v in kwargs.items() if k != "fault_at"})
    if ice_trace is not None:
        ice_trace.watch(ice_side.trainer, "train")
        if ice_side.evaluator is not None:
            ice_trace.watch(ice_side.evaluator, "val")
    ignite_side = ignite_twin(
        sched,
        trace=ignite_trace,
        **{k: v for k, v in kwargs.items() if k in ("dropout", "train_set", "lr", "fault_at")},
    )
    return ice_side, ignite_side, ice_trace, ignite_trace
