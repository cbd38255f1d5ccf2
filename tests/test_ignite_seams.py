"""ignite at every seam (API.md B3, B5, B8 revised): engine.state.output, ignite metrics attached
the ignite way and through Loss/MetricNodes, StepEvents, engines that continue across repetitions,
ignite's Checkpoint holding a HyperGraph, and handler state that survives a resume."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import classification_set, linear_graph
from ignite.engine import Events
from ignite.handlers import Checkpoint, DiskSaver, EarlyStopping, PiecewiseLinear, global_step_from_engine
from ignite.metrics import Accuracy, ConfusionMatrix, IoU, Loss, RunningAverage, mIoU

import ice_ignite as ice


def classifier(train_n=60, val_n=45, batch=8, val_batch=7, lr=0.1):
    """data(train/val) -> net (Linear 4->3, SGD) -> ce."""
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(classification_set(train_n), batch_size=batch), tags="train")
    g.add("data", ice.DatasetNode(classification_set(val_n, seed=1), batch_size=val_batch), tags="val")
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(4, 3),
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=lr),
        ),
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    return g


def direct(g, val_n=45):
    """Accuracy and confusion counts of the net on the validation set, computed by hand."""
    x, y = classification_set(val_n, seed=1).tensors
    with torch.no_grad():
        pred = g["*/net"].module(x).argmax(1)
    return (pred == y).float().mean().item(), len(y)


# -- 1. engine.state.output ------------------------------------------------------------------------
def test_an_ignite_metric_attached_to_the_engine_sees_the_node_outputs():
    g = classifier()
    val = ice.Task(train=False, epochs=1, tags="val")
    Accuracy(output_transform=lambda o: (o["net"], o["data"][1])).attach(val.engine, "acc")
    g.exec_tasks([ice.Task(train=True, epochs=1, tags="train"), val], ice.Launcher())
    assert val.engine.state.metrics["acc"] == pytest.approx(direct(g)[0])


def test_output_is_a_new_detached_dict_each_iteration_and_the_last_is_kept_as_ignite_keeps_it():
    g = classifier()
    train = ice.Task(train=True, steps=2, tags="train")
    seen, dicts = [], []

    def look(e):
        out = e.state.output
        dicts.append(out)
        seen.append((type(out), sorted(out), out["net"].requires_grad, out["ce"].requires_grad))
        out["net"] = None  # a plain dict of this iteration: the graph does not read it back

    train.engine.add_event_handler(Events.ITERATION_COMPLETED, look)
    g.exec_tasks([train], ice.Launcher())
    assert seen == [(dict, ["ce", "data", "net"], False, False)] * 2
    assert dicts[0] is not dicts[1]
    assert train.engine.state.output is dicts[1]  # kept after the run, as ignite keeps the last output
    assert g.select_egraph("train").cache.outputs == {}  # the graph's own outputs are released


# -- 2. LossNode and MetricNode are ignite metrics -------------------------------------------------------
def test_metric_node_applies_the_metrics_output_transform_and_required_keys():
    g = classifier()
    calls = []

    def transform(out):
        calls.append(type(out).__name__)
        return out["logits"], out["target"]

    g.add(
        "acc",
        ice.MetricNode(
            Accuracy(output_transform=transform), forward=lambda n, x: {"logits": x["net"], "target": x["data"][1]}
        ),
        tags="val",
    )
    acc_keys = Accuracy()  # a dict forward: ignite's required_output_keys pick y_pred, y
    g.add("acc2", ice.MetricNode(acc_keys, forward=lambda n, x: {"y_pred": x["net"], "y": x["data"][1]}), tags="val")
    val = ice.Task(train=False, epochs=1, tags="val")
    g.exec_tasks([val], ice.Launcher())
    assert calls == ["dict"] * 7  # 45 samples in batches of 7
    assert val.engine.state.metrics["acc"] == val.engine.state.metrics["acc2"] == pytest.approx(direct(g)[0])
    assert g["val/acc"].value == pytest.approx(direct(g)[0])  # kept after the task


def test_running_average_metric_arithmetic_and_device_work_as_in_ignite():
    g = classifier()
    acc = Accuracy(device="cpu")
    g.add("acc100", ice.MetricNode(acc * 100, forward=lambda n, x: (x["net"], x["data"][1])), tags="val")
    g.add(
        "avg",
        ice.MetricNode(RunningAverage(output_transform=lambda loss: loss, alpha=0.5), forward=lambda n, x: x["ce"]),
        tags="val",
    )
    val = ice.Task(train=False, epochs=1, tags="val")
    losses, running = [], []
    val.engine.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: (losses.append(e.state.output["ce"].item()), running.append(e.state.metrics["avg"])),
    )
    g.exec_tasks([val], ice.Launcher())
    assert val.engine.state.metrics["acc100"] == pytest.approx(100 * direct(g)[0])
    expected = losses[0]
    for i, loss in enumerate(losses):  # RunningAverage updates every iteration, as attached in ignite
        expected = loss if i == 0 else 0.5 * expected + 0.5 * loss
        assert running[i] == pytest.approx(expected, rel=1e-6)


def test_metrics_sharing_a_base_metric_update_it_once_per_iteration():
    g = classifier(val_n=360, val_batch=40)
    cm = ConfusionMatrix(num_classes=3)
    pair = lambda n, x: (x["net"], x["data"][1])
    g.add("cm", ice.MetricNode(cm, forward=pair), tags="val")
    g.add("iou", ice.MetricNode(IoU(cm), forward=pair), tags="val")
    g.add("miou", ice.MetricNode(mIoU(cm), forward=pair), tags="val")
    val = ice.Task(train=False, epochs=1, tags="val")
    g.exec_tasks([val], ice.Launcher())
    assert int(cm.confusion_matrix.sum()) == 360  # not 3 x 360
    m = val.engine.state.metrics
    counts = m["cm"].double()
    iou = counts.diag() / (counts.sum(0) + counts.sum(1) - counts.diag())
    assert m["iou"].tolist() == pytest.approx(iou.tolist())
    assert m["miou"] == pytest.approx(iou.mean().item())


def test_a_loss_node_is_an_ignite_loss_equal_to_a_direct_computation():
    g = classifier(train_n=60, batch=8)  # uneven batches: 7 of 8 and one of 4
    train = ice.Task(train=True, epochs=1, tags="train")
    seen = []
    train.engine.add_event_handler(
        Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.output["ce"].item(), len(e.state.output["data"][1])))
    )
    g.exec_tasks([train], ice.Launcher())
    assert isinstance(g["*/ce"].metric, Loss)
    weighted = sum(loss * n for loss, n in seen) / sum(n for _, n in seen)
    assert train.engine.state.metrics["ce"] == pytest.approx(weighted, rel=1e-6)


# -- 3. StepEvents -----------------------------------------------------------------------------
def test_step_events_fire_around_backward_and_only_on_iterations_that_step():
    g = linear_graph()  # 5 iterations per epoch
    g.set_gradient_accumulate(2)  # cycles of 2, 2, 1: steps at iterations 2, 4, 5
    train = ice.Task(train=True, epochs=1, tags="train")
    events = []
    for ev in ice.StepEvents:
        train.engine.add_event_handler(ev, lambda e, ev=ev: events.append((e.state.iteration, ev.name)))
    every2 = []
    train.engine.add_event_handler(
        ice.StepEvents.OPTIM_STEP_COMPLETED(every=2), lambda e: every2.append(e.state.optim_step)
    )
    g.add("rec", ice.Node(backward=lambda n: events.append(("hook", n.task.engine.state.iteration))))
    g.exec_tasks([train], ice.Launcher())
    steps = [i for i, name in events if name == "OPTIM_STEP_COMPLETED"]
    assert steps == [2, 4, 5] and [i for i, name in events if name == "OPTIM_STEP_STARTED"] == [2, 4, 5]
    assert [i for i, name in events if name == "BACKWARD_STARTED"] == [1, 2, 3, 4, 5]
    assert events[:3] == [(1, "BACKWARD_STARTED"), ("hook", 1), (1, "BACKWARD_COMPLETED")]  # hooks first
    assert every2 == [2] and train.engine.state.optim_step == 3


def test_the_engine_knows_which_step_events_have_handlers_through_adds_and_removes():
    engine = ice.Task(train=True, epochs=1).engine
    assert not any(getattr(engine.listening, ev.value) for ev in ice.StepEvents)
    handle = engine.add_event_handler(ice.StepEvents.OPTIM_STEP_COMPLETED(every=3), lambda e: None)
    assert engine.listening.optim_step_completed and not engine.listening.backward_started
    with engine.internal() as added:
        engine.add_event_handler(ice.StepEvents.BACKWARD_STARTED, lambda: None)
    assert engine.listening.backward_started
    engine.remove_internal(added)
    handle.remove()
    assert not engine.listening.backward_started and not engine.listening.optim_step_completed
    fired = []
    engine.add_event_handler(ice.StepEvents.BACKWARD_COMPLETED, lambda e: fired.append(e.state.iteration))
    assert engine.listening.backward_completed
    g = linear_graph()
    task = ice.Task(train=True, epochs=1, tags="train")
    task.engine.add_event_handler(ice.StepEvents.BACKWARD_COMPLETED, lambda e: fired.append(e.state.iteration))
    g.exec_tasks([task], ice.Launcher())
    assert fired == [1, 2, 3, 4, 5]


def test_an_error_propagates_unless_an_exception_raised_handler_takes_it_as_on_a_plain_engine():
    def failing_graph():
        g = linear_graph()
        g.add(
            "fault", ice.Node(forward=lambda n, x: 1 / 0 if n.task.engine.state.iteration == 2 else None), tags="train"
        )
        return g

    with pytest.raises(ice.NodeError, match="ZeroDivisionError"):  # nobody handles EXCEPTION_RAISED
        failing_graph().exec_tasks([ice.Task(train=True, epochs=1, tags="train")], ice.Launcher())
    seen = []
    task = ice.Task(train=True, epochs=1, tags="train")
    task.engine.add_event_handler(Events.EXCEPTION_RAISED, lambda e, err: seen.append(type(err).__name__))
    failing_graph().exec_tasks([task], ice.Launcher())  # ignite hands the error to the handler
    assert seen == ["NodeError"]


# -- 7. engines continue across repetitions ------------------------------------------------------
def test_global_step_from_engine_and_a_repeated_checkpoint_handler_see_monotone_steps(tmp_path):
    g = linear_graph()
    train = ice.Task(train=True, epochs=1, tags="train")
    val = ice.Task(train=False, epochs=1, tags="val")
    steps = []
    step_of = global_step_from_engine(train.engine)
    val.engine.add_event_handler(Events.COMPLETED, lambda e: steps.append(step_of(e, Events.COMPLETED)))
    saver = Checkpoint(
        {"net": g["*/net"].module},
        DiskSaver(str(tmp_path), require_empty=False),
        n_saved=3,
        global_step_transform=global_step_from_engine(train.engine),
    )
    val.engine.add_event_handler(Events.COMPLETED, saver)
    g.exec_tasks([ice.Repeat([train, val], times=5)], ice.Launcher())
    assert steps == [1, 2, 3, 4, 5]  # the train engine's epoch, one more each round
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net_3.pt", "net_4.pt", "net_5.pt"]


# -- 4 and 8. ignite's Checkpoint holds a HyperGraph; handler state survives resume ----------------------
def scheduled_run(out_dir, run_id, every=None, resume_from=None, times=3):
    g = classifier()
    train = ice.Task(train=True, epochs=1, tags="train")
    opt = g["*/net"].optimizers[".*"]
    sched = PiecewiseLinear(opt, "lr", [(0, 0.2), (10, 0.01), (20, 0.1)])  # an ignite scheduler on the engine
    train.engine.add_event_handler(Events.ITERATION_STARTED, sched)
    if every is not None:
        ckpt = Checkpoint(
            {"graph": g},
            DiskSaver(str(out_dir / "ignite"), require_empty=False),
            n_saved=None,
            global_step_transform=lambda e, _: e.state.iteration,
        )
        train.engine.add_event_handler(Events.ITERATION_COMPLETED(every=every), ckpt)
    g.run(
        [ice.Repeat([train, ice.Task(train=False, epochs=1, tags="val")], times=times)],
        devices="cpu",
        out_dir=out_dir,
        run_id=run_id,
        resume_from=resume_from,
    )
    return g, train


def test_ignite_checkpoint_of_the_graph_mid_epoch_resumes_exactly_with_the_scheduler(tmp_path):
    g_ref, train_ref = scheduled_run(tmp_path, "ref", every=3)
    files = sorted((tmp_path / "ignite").glob("graph_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    assert [int(p.stem.split("_")[1]) for p in files] == list(range(3, 25, 3))  # monotone over 3 repetitions
    for path in (files[2], files[4]):  # iteration 9 (mid-epoch of round 2), 15 (round 2's last)
        g, train = scheduled_run(tmp_path, f"from{path.stem}", resume_from=path)
        for a, b in zip(g["*/net"].module.parameters(), g_ref["*/net"].module.parameters()):
            assert torch.equal(a, b)
        assert train.engine.state.iteration == train_ref.engine.state.iteration == 24
        assert g.global_counters.state_dict() == g_ref.global_counters.state_dict()
        assert g["*/net"].learning_rates() == g_ref["*/net"].learning_rates()


def test_checkpoint_load_objects_then_run_continues(tmp_path):
    g_ref, _ = scheduled_run(tmp_path, "ref", every=8)
    path = sorted((tmp_path / "ignite").glob("graph_8.pt"))[0]
    g = classifier()
    train = ice.Task(train=True, epochs=1, tags="train")
    train.engine.add_event_handler(
        Events.ITERATION_STARTED, PiecewiseLinear(g["*/net"].optimizers[".*"], "lr", [(0, 0.2), (10, 0.01), (20, 0.1)])
    )
    Checkpoint.load_objects({"graph": g}, torch.load(path, weights_only=True))
    g.run(
        [ice.Repeat([train, ice.Task(train=False, epochs=1, tags="val")], times=3)],
        devices="cpu",
        out_dir=tmp_path,
        run_id="loaded",
    )
    for a, b in zip(g["*/net"].module.parameters(), g_ref["*/net"].module.parameters()):
        assert torch.equal(a, b)


def test_a_run_ended_by_early_stopping_stays_ended_when_resumed(tmp_path):
    def run(resume_from=None):
        g = linear_graph(lr=0.0)  # no progress: EarlyStopping ends training after `patience` rounds
        train = ice.Task(train=True, epochs=1, tags="train")
        val = ice.Task(train=False, epochs=1, tags="val")
        val.engine.add_event_handler(
            Events.COMPLETED,
            EarlyStopping(patience=2, score_function=lambda e: -e.state.metrics["mse"], trainer=train.engine),
        )
        g.run(
            [ice.Repeat([train, val, ice.SaveCheckpointTask()], times=10)],
            devices="cpu",
            out_dir=tmp_path,
            run_id="es",
            resume_from=resume_from,
        )
        return g

    assert run().global_counters.epochs.train == 3
    ckpts = sorted((tmp_path / "es" / "ckpts").glob("ckpt-*.pt"))
    resumed = run(resume_from=ckpts[-1])  # saved after the stop was decided
    assert resumed.global_counters.epochs.train == 3
    again = run(resume_from=ckpts[1])  # saved before: EarlyStopping's counter is restored, it stops at the same place
    assert again.global_counters.epochs.train == 3


def test_registered_objects_are_checkpointed_by_name(tmp_path):
    class Counter:
        def __init__(self):
            self.n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    g = linear_graph()
    c = Counter()
    g.register_stateful("counter", c)
    c.n = 7
    state = copy.deepcopy(g.state_dict())
    assert state["objects"] == {"counter": {"n": 7}}
    c.n = 0
    g.load_state_dict(state)
    g.exec_tasks([], ice.Launcher())
    assert c.n == 7
    with pytest.raises(TypeError, match="needs an object with state_dict"):
        g.register_stateful("bad", object())


def test_tensorboard_optimizer_params_handler_on_a_repeat_logs_monotone_steps(tmp_path):
    from ignite.handlers.tensorboard_logger import OptimizerParamsHandler, TensorboardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    g = linear_graph()
    train = ice.Task(train=True, epochs=1, tags="train")
    tb = TensorboardLogger(log_dir=str(tmp_path))
    tb.attach(
        train.engine,
        log_handler=OptimizerParamsHandler(g["*/net"].optimizers[".*"], tag="opt"),
        event_name=Events.ITERATION_STARTED,
    )
    g.exec_tasks([ice.Repeat([train, ice.Task(train=False, epochs=1, tags="val")], times=3)], ice.Launcher())
    tb.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("opt/lr/group_0")] == list(range(1, 16))  # 3 rounds of 5, no repeats
