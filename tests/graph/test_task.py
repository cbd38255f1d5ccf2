"""Tasks on ignite Engines, Repeat, callables, StopTask / StopAllTasks, counters (API.md B3, B4)."""

import pytest
import torch
from conftest import linear_graph
from ignite.engine import Events

import ice_ignite as ice
from ice_ignite import ScheduleError


def index_set(n):
    return torch.utils.data.TensorDataset(torch.arange(n))


def batches_seen(g, name, tags):
    """Record the first index of every batch of DatasetNode ``name`` seen by tasks with ``tags``."""
    seen = []
    g.add(f"rec_{name}", ice.Node(forward=lambda n, x: seen.append(int(x[name][0][0]))), tags=tags)
    return seen


def test_task_arguments_are_checked():
    with pytest.raises(ValueError, match="exactly one of epochs / steps"):
        ice.Task(train=True)
    with pytest.raises(ValueError, match="exactly one of epochs / steps"):
        ice.Task(train=True, epochs=1, steps=2)
    with pytest.raises(TypeError, match="train must be True or False"):
        ice.Task(train="yes", epochs=1)
    with pytest.raises(ValueError, match="steps must be a non-negative int"):
        ice.Task(train=True, steps=-1)
    with pytest.raises(TypeError):
        ice.Task(True, 1)  # keyword-only


def test_each_task_owns_an_engine_from_construction():
    t1, t2 = ice.Task(train=True, epochs=1), ice.Task(train=True, epochs=1)
    assert t1.engine is not t2.engine
    assert all(t1.engine.has_registered_events(e) for e in ice.StepEvents)


def test_epoch_ends_on_the_shortest_dataset_and_each_epoch_is_a_fresh_pass():
    g = ice.HyperGraph()
    g.add("long", ice.DatasetNode(index_set(10), batch_size=2))  # 5 batches
    g.add("short", ice.DatasetNode(index_set(6), batch_size=2))  # 3 batches
    long_seen, short_seen = batches_seen(g, "long", "*"), batches_seen(g, "short", "*")
    task = ice.Task(train=False, epochs=2)
    g.exec_tasks([task], ice.Launcher())
    assert task.engine.state.epoch_length == 3
    assert long_seen == [0, 2, 4, 0, 2, 4] and short_seen == [0, 2, 4, 0, 2, 4]


def test_step_mode_cycles_and_positions_carry_over_to_the_next_step_task():
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(index_set(6), batch_size=2))  # batches start at 0, 2, 4
    seen = batches_seen(g, "data", "*")
    g.exec_tasks([ice.Task(train=False, steps=4), ice.Task(train=False, steps=3)], ice.Launcher())
    assert seen == [0, 2, 4, 0, 2, 4, 0]


def test_an_epoch_task_after_a_step_task_starts_a_fresh_pass():
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(index_set(6), batch_size=2))
    seen = batches_seen(g, "data", "*")
    g.exec_tasks(
        [ice.Task(train=False, steps=2), ice.Task(train=False, epochs=1), ice.Task(train=False, steps=1)],
        ice.Launcher(),
    )
    assert seen == [0, 2, 0, 2, 4, 0]


def test_engine_state_continues_across_repetitions_like_global_counters():
    g = linear_graph()
    train = ice.Task(train=True, epochs=2, tags="train")
    iterations = []
    for event in (Events.INTERRUPT, Events.COMPLETED):
        train.engine.add_event_handler(
            event, lambda e, ev=event: iterations.append((ev.name, e.state.epoch, e.state.iteration))
        )
    g.exec_tasks([ice.Repeat([train], times=3)], ice.Launcher())
    # B3 (turn 3): one ignite run of 6 epochs, suspended after each repetition's 2 epochs
    assert iterations == [("INTERRUPT", 2, 10), ("INTERRUPT", 4, 20), ("COMPLETED", 6, 30)]
    assert train.engine.state.max_epochs == 6
    assert g.global_counters.steps.train == 30 and g.global_counters.epochs.train == 6


def test_one_run_over_every_repetition_and_the_same_task_may_appear_twice():
    g = linear_graph()
    train = ice.Task(train=True, epochs=1, tags="train")
    events = []
    for event in (Events.STARTED, Events.EPOCH_STARTED, Events.EPOCH_COMPLETED, Events.COMPLETED):
        train.engine.add_event_handler(event, lambda e, ev=event: events.append(ev.name))
    g.exec_tasks([ice.Repeat([train, ice.Repeat([train], times=2)], times=2), train], ice.Launcher())
    assert events.count("EPOCH_COMPLETED") == 7 and train.engine.state.max_epochs == 7
    assert events.count("STARTED") == events.count("COMPLETED") == 1 and events[0] == "STARTED"


def test_exact_counters_after_a_mixed_schedule():
    # ice-learn bug 5 counted the StopIteration iteration of every epoch as a step.
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(index_set(8), batch_size=2), tags="train")  # 4 batches
    g.add("data", ice.DatasetNode(index_set(4), batch_size=2), tags="val")  # 2 batches
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(1, 1),
            forward=lambda n, x: n.module(x["data"][0].float()[:, None]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.01),
        ),
    )
    g.add("loss", ice.LossNode(forward=lambda n, x: x["net"].pow(2).mean()))
    train_e = ice.Task(train=True, epochs=2, tags="train")
    val_e = ice.Task(train=False, epochs=1, tags="val")
    schedule = [
        ice.Repeat([train_e, val_e], times=2),
        ice.Task(train=True, steps=3, tags="train"),
        ice.Task(train=False, steps=5, tags="val"),
    ]
    g.exec_tasks(schedule, ice.Launcher())
    c = g.global_counters
    assert (c.steps.train, c.steps.eval, c.epochs.train, c.epochs.eval) == (2 * 2 * 4 + 3, 2 * 2 + 5, 4, 2)
    assert c.steps.total == 19 + 9 and c.epochs.total == 6


def _event_recorder(task):
    events = []
    for event in (Events.STARTED, Events.EPOCH_COMPLETED, Events.TERMINATE, Events.COMPLETED):
        task.engine.add_event_handler(event, lambda e, ev=event: events.append(ev.name))
    return events


@pytest.mark.parametrize("where", ["forward", "handler"])
def test_stop_task_ends_the_task_without_counting_and_the_schedule_goes_on(where):
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(index_set(8), batch_size=2))  # 4 iterations per epoch

    def forward(n, x):
        if where == "forward" and n.global_auto_steps == 6:
            raise ice.StopTask()

    node = g.add("stopper", ice.Node(forward=forward))
    task = ice.Task(train=False, epochs=3)
    if where == "handler":
        task.engine.add_event_handler(
            Events.ITERATION_COMPLETED(once=7), lambda e: (_ for _ in ()).throw(ice.StopTask())
        )
    events = _event_recorder(task)
    after = []
    g.exec_tasks([task, lambda: after.append("next")], ice.Launcher())
    assert events == ["STARTED", "EPOCH_COMPLETED", "TERMINATE", "COMPLETED"]
    assert after == ["next"]
    assert g.global_counters.epochs.eval == 1  # the unfinished second epoch does not count
    assert g.global_counters.steps.eval == (6 if where == "forward" else 7)
    assert node.task is None


def test_stop_all_tasks_ends_the_run_cleanly():
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(index_set(8), batch_size=2))
    g.add(
        "stopper",
        ice.Node(forward=lambda n, x: (_ for _ in ()).throw(ice.StopAllTasks()) if n.epoch_steps == 2 else None),
    )
    task = ice.Task(train=False, epochs=2)
    events = _event_recorder(task)
    later = []
    g.exec_tasks([task, lambda: later.append(1), ice.Task(train=False, epochs=1)], ice.Launcher())
    assert events == ["STARTED", "TERMINATE", "COMPLETED"] and later == []
    assert g.global_counters.steps.eval == 2


def test_callables_receive_nothing_the_graph_or_graph_and_launcher():
    g = ice.HyperGraph()
    got = []
    launcher = ice.Launcher()
    g.exec_tasks([lambda: got.append(0), lambda gg: got.append(gg), lambda gg, ll: got.append((gg, ll))], launcher)
    assert got == [0, g, (g, launcher)]


@pytest.mark.parametrize(
    "schedule, words",
    [
        ([42], r"schedule\[1\] is int 42"),
        ([ice.Repeat([ice.Task(train=True, steps=1)], 2), "x"], r"schedule\[2\] is str"),
        ([ice.SaveCheckpointTask], "not an instance: call it"),
        ([lambda a, b, c: 0], "takes more than 2 arguments"),
    ],
)
def test_a_bad_schedule_is_refused_before_anything_runs(schedule, words):
    g = ice.HyperGraph()
    ran = []
    with pytest.raises(ScheduleError, match=words):
        g.exec_tasks([lambda: ran.append(1)] + schedule, ice.Launcher())
    assert ran == []


def test_repeat_arguments_are_checked():
    with pytest.raises(ValueError, match="times must be an int >= 1"):
        ice.Repeat([ice.Task(train=True, steps=1)], times=0)
    with pytest.raises(ScheduleError, match=r"schedule\[1\] is int 3"):
        ice.Repeat([ice.Task(train=True, steps=1), 3], times=2)


def test_user_epoch_completed_handler_sees_this_epochs_metrics_and_output_is_detached_losses():
    g = linear_graph()
    train = ice.Task(train=True, epochs=2, tags="train")
    seen = []
    train.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(dict(e.state.metrics)))
    outputs = []
    train.engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: outputs.append((dict(e.state.output), e.state.batch))
    )
    losses = []
    g.add("rec", ice.Node(update=lambda n: losses.append(n.egraph.cache.outputs["mse"].item())), tags="train")
    g.exec_tasks([train], ice.Launcher())
    assert len(seen) == 2 and seen[0]["mse"] != seen[1]["mse"]
    assert seen[0]["mse"] == pytest.approx(sum(losses[:5]) / 5, rel=1e-6)  # equal batches of 8
    out, batch = outputs[0]
    assert set(out) == {"data", "net", "mse", "rec"}  # every node's output, by name
    assert set(batch) == {"data"} and all(torch.equal(a, b) for a, b in zip(batch["data"], out["data"]))
    assert not out["mse"].requires_grad and not out["net"].requires_grad  # detached in train tasks


def test_node_properties_describe_the_running_task():
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(index_set(6), batch_size=2))
    seen = []
    g.add(
        "probe",
        ice.Node(
            forward=lambda n, x: seen.append(
                (n.training, n.step_mode, n.epoch_steps, n.epoch_size, n.global_auto_steps, repr(n.task))
            )
        ),
    )
    g.exec_tasks([ice.Task(train=False, epochs=1), ice.Task(train=False, steps=2)], ice.Launcher())
    assert seen == [
        (False, False, 0, 3, 0, "Task(train=False, epochs=1, tags='*')"),
        (False, False, 1, 3, 1, "Task(train=False, epochs=1, tags='*')"),
        (False, False, 2, 3, 2, "Task(train=False, epochs=1, tags='*')"),
        (False, True, 0, 2, 3, "Task(train=False, steps=2, tags='*')"),
        (False, True, 1, 2, 4, "Task(train=False, steps=2, tags='*')"),
    ]


def test_epoch_hooks_run_around_every_engine_epoch_step_mode_included():
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(index_set(4), batch_size=2))
    calls = []
    g.add(
        "hooks",
        ice.Node(
            epoch_start=lambda n: calls.append("start"),
            epoch_end=lambda n: calls.append("end"),
            prepare=lambda n: calls.append("prepare"),
            clean_up=lambda n: calls.append("clean_up"),
        ),
    )
    g.exec_tasks([ice.Task(train=False, epochs=2), ice.Task(train=False, steps=3)], ice.Launcher())
    assert calls == ["prepare", "start", "end", "start", "end", "clean_up", "prepare", "start", "end", "clean_up"]


def test_epoch_task_without_dataset_or_with_unsized_data_is_a_clear_error():
    g = ice.HyperGraph()
    g.add("n", ice.Node())
    with pytest.raises(ScheduleError, match="selects no DatasetNode.*steps=N"):
        g.exec_tasks([ice.Task(train=False, epochs=1)], ice.Launcher())

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(100))

    g.add("data", ice.DatasetNode(Stream(), batch_size=4))
    with pytest.raises(ScheduleError, match="has no length"):
        g.exec_tasks([ice.Task(train=False, epochs=1)], ice.Launcher())
    seen = []
    g.add("rec", ice.Node(forward=lambda n, x: seen.append(x["data"][0].item())))
    g.exec_tasks([ice.Task(train=False, steps=3)], ice.Launcher())
    assert seen == [0, 4, 8]


def test_train_uses_gradients_and_eval_does_not():
    g = linear_graph()
    net = g["*/net"].module
    before = net.weight.detach().clone()
    g.exec_tasks([ice.Task(train=False, epochs=1, tags="val")], ice.Launcher())
    assert torch.equal(net.weight, before)
    g.exec_tasks([ice.Task(train=True, epochs=1, tags="train")], ice.Launcher())
    assert not torch.equal(net.weight, before)


def test_task_engines_dispatch_handlers_like_ignite_and_log_events_only_when_debug_is_on(caplog):
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(index_set(4), batch_size=2))
    task = ice.Task(train=False, epochs=1)
    calls = []
    task.engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e, a, k: calls.append((e, a, k)), "a", k=1)
    task.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda: calls.append("no engine"))
    g.exec_tasks([task], ice.Launcher())
    assert calls == [(task.engine, "a", 1), (task.engine, "a", 1), "no engine"]
    assert "Firing handlers" not in caplog.text
    with caplog.at_level("DEBUG", logger=task.engine.logger.name):
        g.exec_tasks([task], ice.Launcher())
    # an eval task's engine is an evaluator: the second run starts afresh
    assert "1 | 2, Firing handlers for event Events.ITERATION_COMPLETED" in caplog.text
    assert "| 3, Firing" not in caplog.text
