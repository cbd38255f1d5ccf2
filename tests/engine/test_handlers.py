"""Handlers from scripts: g.on, and ignite's own handlers on ice_ignite task engines."""

import pytest
from conftest import linear_graph
from ignite.engine import Events
from ignite.handlers import EarlyStopping, TensorboardLogger, TerminateOnNan, Timer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ice_ignite as ice


def test_on_attaches_to_every_matching_task_with_filters():
    g = linear_graph()
    seen = []
    g.on(
        Events.ITERATION_COMPLETED(every=2),
        lambda e: seen.append(("every2", e.task.tags, e.state.iteration)),
        tags="train",
    )
    g.on(Events.EPOCH_COMPLETED, lambda e: seen.append(("eval", e.hypergraph.global_counters.epochs.eval)), train=False)
    g.on(Events.STARTED, lambda e: seen.append(("all", e.task.train)))
    g.exec_tasks(
        [ice.Task(train=True, epochs=1, tags="train"), ice.Task(train=False, epochs=1, tags="val")], ice.Launcher()
    )
    assert seen == [("all", True), ("every2", ("train",), 2), ("every2", ("train",), 4), ("all", False), ("eval", 1)]
    with pytest.raises(TypeError, match="callable handler"):
        g.on(Events.STARTED, 42)


def test_handlers_attached_by_on_are_detached_after_each_run():
    g = linear_graph()
    calls = []
    g.on(Events.STARTED, lambda e: calls.append(1))
    task = ice.Task(train=True, epochs=1, tags="train")
    g.exec_tasks([task, task], ice.Launcher())  # one ignite run over both repetitions
    g.exec_tasks([task], ice.Launcher())  # a new schedule continues the engine in a new run
    assert calls == [1, 1]  # once per ignite run, not accumulating


def test_ignite_early_stopping_ends_the_schedule():
    g = linear_graph(lr=0.0)  # nothing improves
    train = ice.Task(train=True, epochs=1, tags="train")
    val = ice.Task(train=False, epochs=1, tags="val")
    stopper = EarlyStopping(patience=2, score_function=lambda e: -e.state.metrics["mse"], trainer=train.engine)
    val.engine.add_event_handler(Events.COMPLETED, stopper)
    g.exec_tasks([ice.Repeat([train, val], times=10)], ice.Launcher())
    assert g.global_counters.epochs.train == 3  # score set, then 2 epochs without improvement


def test_ignite_terminate_on_nan_ends_the_task():
    g = linear_graph()
    g.set_nonfinite_policy("ignore")  # leave non-finite losses to ignite's handler
    g.remove("*/mse")
    g.add("mse", ice.LossNode(forward=lambda n, x: x["net"].sum() * float("nan")))
    train = ice.Task(train=True, epochs=2, tags="train")
    train.engine.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan(lambda out: out["mse"]))
    after = []
    g.exec_tasks([train, lambda: after.append(1)], ice.Launcher())
    assert g.global_counters.steps.train == 1 and after == [1]
    assert train.engine.state.iteration == 1  # as ignite's trainer: terminate() keeps where the run ended


def test_ignite_timer_and_tensorboard_logger(tmp_path):
    g = linear_graph()
    train = ice.Task(train=True, epochs=2, tags="train")
    timer = Timer(average=True).attach(
        train.engine,
        start=Events.STARTED,
        resume=Events.ITERATION_STARTED,
        pause=Events.ITERATION_COMPLETED,
        step=Events.ITERATION_COMPLETED,
    )
    tb = TensorboardLogger(log_dir=str(tmp_path))
    tb.attach_output_handler(
        train.engine,
        Events.ITERATION_COMPLETED,
        tag="mine",
        output_transform=lambda out: {"mse": out["mse"].item()},
        global_step_transform=lambda *_: g.global_counters.steps.train,
    )
    g.exec_tasks([train], ice.Launcher())
    tb.close()
    assert 0 < timer.value() < 1
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("mine/mse")] == list(range(1, 11))


def test_a_failing_prepare_hook_leaves_no_handler_behind():
    g = linear_graph()
    calls = []
    g.on(Events.STARTED, lambda e: calls.append(1))
    g.add(
        "flaky",
        ice.Node(prepare=lambda n: (_ for _ in ()).throw(OSError("disk gone")) if not calls else None),
        tags="train",
    )
    task = ice.Task(train=True, epochs=1, tags="train")
    with pytest.raises(ice.NodeError, match="raised OSError in prepare"):
        g.exec_tasks([task], ice.Launcher())
    calls.append("retry")
    g.exec_tasks([task], ice.Launcher())
    assert calls == ["retry", 1]  # the handler of the failed run was detached
