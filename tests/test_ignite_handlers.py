"""ignite's handlers and helpers on task engines (API.md B3, turn 3): each test attaches the same
handler to the canonical plain-ignite script and to the ice_ignite schedule of ``ignite_twins``,
runs both over the same data from the same initial weights, and compares what the handler
produced (values, steps, files, event order)."""

from __future__ import annotations

import io
import re

import ignite.distributed as idist
import pytest
import torch
from ignite.contrib.engines.common import setup_common_training_handlers
from ignite.engine import Events, create_supervised_evaluator
from ignite.handlers import (
    BasicTimeProfiler,
    Checkpoint,
    DiskSaver,
    EarlyStopping,
    EMAHandler,
    EpochOutputStore,
    FastaiLRFinder,
    HandlersTimeProfiler,
    LinearCyclicalScheduler,
    ModelCheckpoint,
    ProgressBar,
    TerminateOnNan,
    Timer,
    create_lr_scheduler_with_warmup,
    global_step_from_engine,
)
from ignite.handlers.tensorboard_logger import TensorboardLogger
from ignite.metrics import Accuracy
from ignite.metrics.metric import BatchWise
from ignite_twins import (
    SEED,
    VAL_BATCH,
    VAL_N,
    Schedule,
    Trace,
    assert_same_trace,
    assert_same_weights,
    dataset,
    ice_twin,
    ignite_twin,
    loader,
    twins,
)

import ice_ignite as ice


def run_both(tmp_path, attach, sched: Schedule = Schedule(), **kwargs):
    """Build both twins, ``attach(twin)`` to each (after the traces), run both; returns
    ``(ice_twin, ignite_twin, {"ice": attach's result, "ignite": ...}, ice_trace, ignite_trace)``."""
    ice_side, ignite_side, ice_trace, ignite_trace = twins(tmp_path, sched, **kwargs)
    got = {twin.kind: attach(twin) for twin in (ice_side, ignite_side)}
    ice_side.run()
    ignite_side.run()
    return ice_side, ignite_side, got, ice_trace, ignite_trace


def val_loader():
    return loader(dataset(VAL_N, seed=1), VAL_BATCH)


def files_of(tmp_path, twin, what):
    return tmp_path / "files" / twin.kind / what


# -- checkpoints ---------------------------------------------------------------------------------------
def test_checkpoint_and_model_checkpoint_write_the_same_files(tmp_path):
    def attach(tw):
        to_save = {"model": tw.model, "optimizer": tw.optimizer, "trainer": tw.trainer}
        step = global_step_from_engine(tw.trainer)
        tw.evaluator.add_event_handler(
            Events.COMPLETED,
            Checkpoint(
                to_save,
                DiskSaver(str(files_of(tmp_path, tw, "ckpt")), require_empty=False),
                n_saved=2,
                global_step_transform=step,
            ),
        )
        tw.evaluator.add_event_handler(
            Events.COMPLETED,
            ModelCheckpoint(
                str(files_of(tmp_path, tw, "best")),
                "best",
                n_saved=2,
                require_empty=False,
                score_name="neg_ce",
                score_function=lambda e: -e.state.metrics["ce"],
                global_step_transform=step,
            ),
            {"model": tw.model},
        )

    ice_side, ignite_side, _, _, _ = run_both(tmp_path, attach)
    for what in ("ckpt", "best"):
        names = [sorted(p.name for p in files_of(tmp_path, tw, what).iterdir()) for tw in (ice_side, ignite_side)]
        assert names[0] == names[1] and len(names[0]) == 2
        for name in names[0]:
            a, b = (
                torch.load(files_of(tmp_path, tw, what) / name, weights_only=True) for tw in (ice_side, ignite_side)
            )
            if what == "best":  # one object: ignite saves its state_dict itself
                torch.testing.assert_close(a, b)
                continue
            torch.testing.assert_close(a["model"], b["model"])
            if what == "ckpt":
                assert a["trainer"] == b["trainer"]  # iteration, epoch_length and max_epochs = n * epochs
                assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


# -- stopping ------------------------------------------------------------------------------------------
def test_early_stopping_on_the_evaluator_stops_the_trainer_at_the_same_step(tmp_path):
    def attach(tw):  # a score that never improves: the third validation stops training
        tw.evaluator.add_event_handler(
            Events.COMPLETED,
            EarlyStopping(patience=2, score_function=lambda e: 0.0 * e.state.metrics["ce"], trainer=tw.trainer),
        )

    ice_side, ignite_side, _, ice_trace, ignite_trace = run_both(tmp_path, attach, Schedule(n=6))
    assert_same_trace(ice_trace, ignite_trace)  # ... val COMPLETED, train TERMINATE, train COMPLETED
    assert ice_side.steps() == ignite_side.steps() == 18
    assert ice_side.trainer.state.iteration == ignite_side.trainer.state.iteration == 18


def test_early_stopping_on_the_trainer_stops_at_the_same_step(tmp_path):
    def attach(tw):
        tw.trainer.add_event_handler(
            Events.EPOCH_COMPLETED, EarlyStopping(patience=1, score_function=lambda e: 0.0, trainer=tw.trainer)
        )

    ice_side, ignite_side, _, ice_trace, ignite_trace = run_both(tmp_path, attach, Schedule(n=6))
    # each engine's events as in ignite (the evaluator of the stopping epoch still runs, from the
    # trainer's EPOCH_COMPLETED); where TERMINATE falls between the engines is left open
    for label in ("train", "val"):
        assert ice_trace.of(label) == ignite_trace.of(label)
    assert ice_side.steps() == ignite_side.steps() == 12


def test_a_run_stopped_early_stays_stopped_on_resume_and_a_resume_before_the_stop_stops_at_the_same_step(tmp_path):
    def stopped_twin(run_id, trace=False):
        tw, _, ice_trace, _ = twins(tmp_path, Schedule(n=6), trace=trace, run_id=run_id)
        tw.evaluator.add_event_handler(
            Events.COMPLETED, EarlyStopping(patience=2, score_function=lambda e: 0.0, trainer=tw.trainer)
        )
        tasks = [ice.Repeat([tw.train_task, tw.val_task, ice.SaveCheckpointTask()], times=6), ice.SaveCheckpointTask()]
        return tw, tasks, ice_trace

    first, tasks, _ = stopped_twin("first")
    first.run(tasks)
    assert first.steps() == 18
    ckpts = sorted((tmp_path / "first" / "ckpts").glob("ckpt-*.pt"))
    after, tasks, after_trace = stopped_twin("after", trace=True)
    after.run(tasks, resume_from=ckpts[-1])
    assert after.steps() == 18 and "ITERATION_STARTED" not in after_trace.names("train")
    before, tasks, before_trace = stopped_twin("before", trace=True)
    before.run(tasks, resume_from=next(p for p in ckpts if p.name.endswith("S12.pt")))  # after 2 validations
    assert before.steps() == 18
    # ignite: EarlyStopping checkpointed with the trainer after the second validation, loaded, run
    canonical = ignite_twin(Schedule(n=6))
    stopper = EarlyStopping(patience=2, score_function=lambda e: 0.0, trainer=canonical.trainer)
    canonical.evaluator.add_event_handler(Events.COMPLETED, stopper)
    to_save = {"trainer": canonical.trainer, "model": canonical.model, "optimizer": canonical.optimizer, "es": stopper}
    saver = Checkpoint(
        to_save,
        DiskSaver(str(tmp_path / "ignite"), require_empty=False),
        n_saved=None,
        global_step_transform=global_step_from_engine(canonical.trainer, Events.ITERATION_COMPLETED),
    )
    canonical.evaluator.add_event_handler(Events.COMPLETED, saver)
    canonical.run()
    ignite_trace = Trace()
    loaded = ignite_twin(Schedule(n=6), trace=ignite_trace)
    stopper = EarlyStopping(patience=2, score_function=lambda e: 0.0, trainer=loaded.trainer)
    loaded.evaluator.add_event_handler(Events.COMPLETED, stopper)
    Checkpoint.load_objects(
        {"trainer": loaded.trainer, "model": loaded.model, "optimizer": loaded.optimizer, "es": stopper},
        torch.load(tmp_path / "ignite" / "checkpoint_12.pt", weights_only=True),
    )
    loaded.run()
    assert loaded.steps() == 6  # 12 before the checkpoint
    assert_same_trace(before_trace, ignite_trace)


def test_terminate_on_nan_with_its_default_transform_stops_at_the_same_iteration(tmp_path):
    def attach(tw):
        if tw.graph is not None:
            tw.graph.set_nonfinite_policy("ignore")  # leave non-finite values to ignite's handler
        tw.trainer.add_event_handler(Events.ITERATION_COMPLETED, TerminateOnNan())

    nan_set = dataset(nan_at=20)  # in the third batch
    ice_side, ignite_side, _, ice_trace, ignite_trace = run_both(tmp_path, attach, train_set=nan_set)
    assert_same_trace(ice_trace, ignite_trace)
    assert ice_side.steps() == ignite_side.steps() == 3
    assert ice_side.trainer.state.iteration == ignite_side.trainer.state.iteration == 3


def test_terminate_from_a_user_handler_ends_training_as_in_ignite(tmp_path):
    def attach(tw):
        tw.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=8), lambda e: e.terminate())

    ice_side, ignite_side, _, ice_trace, ignite_trace = run_both(tmp_path, attach)
    assert_same_trace(ice_trace, ignite_trace)  # no EPOCH_COMPLETED, no validation, no further repetition
    assert ice_side.steps() == ignite_side.steps() == 8
    assert ice_side.trainer.state.iteration == ignite_side.trainer.state.iteration == 8
    assert_same_weights(ice_side.model, ignite_side.model)


def test_terminate_epoch_ends_only_the_epoch(tmp_path):
    def attach(tw):
        tw.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.terminate_epoch())

    ice_side, ignite_side, _, ice_trace, ignite_trace = run_both(tmp_path, attach)
    assert_same_trace(ice_trace, ignite_trace)  # TERMINATE_SINGLE_EPOCH, EPOCH_COMPLETED, then full epochs
    assert ice_side.steps() == ignite_side.steps() == 3 + 6 + 6
    assert_same_weights(ice_side.model, ignite_side.model)


def test_an_exception_raised_handler_that_swallows_the_error_leaves_the_state_of_ignite(tmp_path):
    ice_side, ignite_side, ice_trace, ignite_trace = twins(tmp_path, Schedule(n=2), fault_at=2)
    ice_side.graph.add(
        "fault", ice.Node(forward=lambda n, x: 1 / 0 if n.task.engine.state.iteration == 2 else None), tags="train"
    )
    for tw, trace in ((ice_side, ice_trace), (ignite_side, ignite_trace)):
        tw.trainer.add_event_handler(Events.EXCEPTION_RAISED, lambda e, err, t=trace: t.note("train", "EXCEPTION", e))
    ice_side.run()
    ignite_side.run()
    assert_same_trace(ice_trace, ignite_trace)
    assert ice_side.steps() == ignite_side.steps()
    assert (ice_side.trainer.state.epoch, ice_side.trainer.state.iteration) == (
        ignite_side.trainer.state.epoch,
        ignite_side.trainer.state.iteration,
    )
    # the weights part here: ignite's next epoch continues the DataLoader iterator of the epoch the
    # error cut short, while every epoch of an epoch-mode task starts a fresh pass (API.md B3)


# -- timing and progress -----------------------------------------------------------------------------------
def test_timer_attached_from_started_counts_every_iteration_of_the_run(tmp_path):
    def attach(tw):
        return Timer(average=True).attach(
            tw.trainer,
            start=Events.STARTED,
            resume=Events.ITERATION_STARTED,
            pause=Events.ITERATION_COMPLETED,
            step=Events.ITERATION_COMPLETED,
        )

    _, _, timers, _, _ = run_both(tmp_path, attach)
    assert timers["ice"].step_count == timers["ignite"].step_count == 18
    assert timers["ice"].value() > 0


def test_basic_time_profiler_counts_as_in_ignite_and_the_counters_stay_right(tmp_path):
    def attach(tw):
        profiler = BasicTimeProfiler()
        profiler.attach(tw.trainer)
        return profiler

    ice_side, _ignite_side, prof, _, _ = run_both(tmp_path, attach)
    a, b = prof["ice"], prof["ignite"]
    for field in ("processing_times", "dataflow_times"):
        assert getattr(a, field).shape == getattr(b, field).shape == (18,)
        assert int((getattr(a, field) > 0).sum()) == int((getattr(b, field) > 0).sum()) == 18
    for event in (Events.EPOCH_STARTED, Events.EPOCH_COMPLETED, Events.ITERATION_COMPLETED):
        assert a.event_handlers_times[event].shape == b.event_handlers_times[event].shape
    assert a.get_results()["processing_stats"]["total"] > 0
    counters = ice_side.graph.global_counters
    assert (counters.steps.train, counters.epochs.train, counters.steps.eval) == (18, 3, 6)


def user_handler(engine):
    """A user handler whose calls HandlersTimeProfiler counts."""


def test_handlers_time_profiler_counts_as_in_ignite_and_the_counters_stay_right(tmp_path):
    def attach(tw):
        tw.trainer.add_event_handler(Events.ITERATION_COMPLETED, user_handler)
        profiler = HandlersTimeProfiler()
        profiler.attach(tw.trainer)
        return profiler

    ice_side, _ignite_side, prof, ice_trace, ignite_trace = run_both(tmp_path, attach)
    a, b = prof["ice"], prof["ignite"]
    assert len(a.processing_times) == len(b.processing_times) == 18
    assert len(a.dataflow_times) == len(b.dataflow_times) == 18
    calls = [p.event_handlers_times[Events.ITERATION_COMPLETED]["user_handler"] for p in (a, b)]
    assert len(calls[0]) == len(calls[1]) == 18
    assert_same_trace(ice_trace, ignite_trace)
    counters = ice_side.graph.global_counters
    assert (counters.steps.train, counters.epochs.train, counters.steps.eval) == (18, 3, 6)


def test_progress_bar_shows_the_trainers_epochs_of_the_whole_run(tmp_path):
    def attach(tw):
        out = io.StringIO()
        ProgressBar(persist=True, file=out).attach(tw.trainer, output_transform=lambda o: {"ce": o["ce"].item()})
        return out

    _, _, outs, _, _ = run_both(tmp_path, attach)
    shown = {kind: sorted(set(re.findall(r"Epoch \[\d+/\d+\]", out.getvalue()))) for kind, out in outs.items()}
    assert shown["ice"] == shown["ignite"] == ["Epoch [1/3]", "Epoch [2/3]", "Epoch [3/3]"]


# -- logging and stores ------------------------------------------------------------------------------------
def test_tensorboard_logger_closed_at_completed_writes_what_the_ignite_script_writes(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def attach(tw):
        logger = TensorboardLogger(log_dir=str(files_of(tmp_path, tw, "tb")))
        logger.attach_output_handler(
            tw.trainer, Events.ITERATION_COMPLETED, tag="training", output_transform=lambda o: {"ce": o["ce"]}
        )
        logger.attach_opt_params_handler(tw.trainer, Events.ITERATION_STARTED, optimizer=tw.optimizer)
        logger.attach_output_handler(
            tw.evaluator,
            Events.COMPLETED,
            tag="validation",
            metric_names=["ce"],
            global_step_transform=global_step_from_engine(tw.trainer),
        )
        tw.trainer.add_event_handler(Events.COMPLETED, lambda: logger.close())

    ice_side, ignite_side, _, _, _ = run_both(tmp_path, attach)
    logged = {}
    for tw in (ice_side, ignite_side):
        acc = EventAccumulator(str(files_of(tmp_path, tw, "tb")))
        acc.Reload()
        logged[tw.kind] = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    assert sorted(logged["ice"]) == sorted(logged["ignite"]) == ["lr/group_0", "training/ce", "validation/ce"]
    for tag, values in logged["ignite"].items():
        assert [s for s, _ in logged["ice"][tag]] == [s for s, _ in values], tag
        assert [v for _, v in logged["ice"][tag]] == pytest.approx([v for _, v in values], rel=1e-5), tag


def test_epoch_output_store_with_defaults_keeps_each_iterations_output(tmp_path):
    def attach(tw):
        per_epoch = {"train": [], "val": []}
        for label, engine in (("train", tw.trainer), ("val", tw.evaluator)):
            store = EpochOutputStore()  # the default transform keeps state.output itself
            store.attach(engine)
            engine.add_event_handler(
                Events.EPOCH_COMPLETED,
                lambda e, s=store, lbl=label: per_epoch[lbl].append([float(out["ce"]) for out in s.data]),
            )
        return per_epoch

    _, _, stores, _, _ = run_both(tmp_path, attach)
    for label, epochs in (("train", 3), ("val", 3)):
        a, b = stores["ice"][label], stores["ignite"][label]
        assert len(a) == len(b) == epochs
        for x, y in zip(a, b):
            assert x == pytest.approx(y, rel=1e-5) and len(set(x)) == len(x)


def test_fastai_lr_finder_finds_the_same_lr_and_loss_history(tmp_path):
    sched = Schedule(n=1, epochs=2, val=False)
    results = {}
    for tw in (ice_twin(tmp_path, sched), ignite_twin(sched)):
        initial = {k: v.clone() for k, v in tw.model.state_dict().items()}
        finder = FastaiLRFinder()
        with finder.attach(
            tw.trainer,
            {"model": tw.model, "optimizer": tw.optimizer},
            num_iter=8,
            start_lr=1e-3,
            end_lr=1.0,
            output_transform=lambda o: o["ce"].item(),
        ):
            tw.run()
        results[tw.kind] = finder.get_results()
        for k, v in tw.model.state_dict().items():  # the finder puts the weights back
            assert torch.equal(v, initial[k])
    # ignite's finder also records the iteration at which it terminates the run: num_iter + 1
    assert len(results["ice"]["lr"]) == len(results["ignite"]["lr"]) == 9
    assert results["ice"]["lr"] == pytest.approx(results["ignite"]["lr"])
    assert results["ice"]["loss"] == pytest.approx(results["ignite"]["loss"], rel=1e-5)


def test_ema_handler_keeps_the_same_ema_weights(tmp_path):
    def attach(tw):
        ema = EMAHandler(tw.model, momentum=0.2)
        ema.attach(tw.trainer, name="ema_momentum", event=Events.ITERATION_COMPLETED)
        return ema

    _, _, emas, _, _ = run_both(tmp_path, attach)
    assert_same_weights(emas["ice"].ema_model, emas["ignite"].ema_model)


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: LinearCyclicalScheduler(opt, "lr", 0.01, 0.2, cycle_size=10),
        lambda opt: create_lr_scheduler_with_warmup(
            torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5), warmup_start_value=0.0, warmup_duration=5
        ),
    ],
    ids=["cyclical", "warmup"],
)
def test_param_schedulers_give_the_same_lr_sequence(tmp_path, make):
    def attach(tw):
        lrs = []
        tw.trainer.add_event_handler(Events.ITERATION_STARTED, make(tw.optimizer))
        tw.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda: lrs.append(tw.optimizer.param_groups[0]["lr"]))
        return lrs

    ice_side, ignite_side, lrs, _, _ = run_both(tmp_path, attach)
    assert len(lrs["ice"]) == 18 and lrs["ice"] == pytest.approx(lrs["ignite"])
    assert_same_weights(ice_side.model, ignite_side.model)


def test_setup_common_training_handlers_with_defaults(tmp_path):
    def attach(tw):
        setup_common_training_handlers(tw.trainer)  # TerminateOnNan() on state.output, progress bars, ...

    ice_side, ignite_side, _, ice_trace, ignite_trace = run_both(tmp_path, attach)
    assert_same_trace(ice_trace, ignite_trace)
    assert_same_weights(ice_side.model, ignite_side.model)


# -- evaluation ------------------------------------------------------------------------------------------
def test_a_supervised_evaluator_run_from_epoch_completed_leaves_training_in_train_mode(tmp_path):
    sched = Schedule(n=1, epochs=3, val=False)

    def attach(tw):
        accuracies = []
        evaluator = create_supervised_evaluator(tw.model, metrics={"acc": Accuracy()})
        data = val_loader()
        tw.trainer.add_event_handler(
            Events.EPOCH_COMPLETED, lambda: accuracies.append(evaluator.run(data).metrics["acc"])
        )
        return accuracies

    ice_side, ignite_side, _, _ = twins(tmp_path, sched, trace=False, dropout=True)
    accs = {tw.kind: attach(tw) for tw in (ice_side, ignite_side)}
    ice_side.run(seed=SEED)
    ignite_side.run(seed=SEED)  # torch.manual_seed(SEED) just before trainer.run, as g.run seeds
    assert len(accs["ice"]) == 3 and accs["ice"] == pytest.approx(accs["ignite"])
    assert_same_weights(ice_side.model, ignite_side.model)  # epochs 2 and 3 trained with dropout on


def test_iteration_completed_once_1_on_the_evaluator_fires_at_every_validation(tmp_path):
    def attach(tw):
        calls = []
        tw.evaluator.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: calls.append(e.state.iteration))
        return calls

    _, _, calls, _, _ = run_both(tmp_path, attach)
    assert calls["ice"] == calls["ignite"] == [1, 1, 1]


def test_metric_node_usage_reaches_metric_attach(tmp_path):
    ice_side, ignite_side, _, _ = twins(tmp_path, Schedule(n=2), trace=False)
    ice_side.graph.add(
        "acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"], x["data"][1]), usage=BatchWise()), tags="val"
    )
    Accuracy(output_transform=lambda o: (o["net"], o["data"][1])).attach(
        ignite_side.evaluator, "acc", usage=BatchWise()
    )
    seen = {}
    for tw in (ice_side, ignite_side):
        seen[tw.kind] = []
        tw.evaluator.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e, k=tw.kind: seen[k].append(e.state.metrics["acc"])
        )
        tw.run()
    assert len(seen["ice"]) == 4 and seen["ice"] == pytest.approx(seen["ignite"])  # per batch, not per epoch


# -- state, seeds, processes ---------------------------------------------------------------------------------
def test_state_dict_user_keys_travel_in_the_checkpoint(tmp_path):
    def with_alpha(engine):
        engine.state_dict_user_keys.append("alpha")
        engine.state.alpha = 0
        engine.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e: setattr(e.state, "alpha", 10 * e.state.iteration)
        )
        seen = []
        engine.add_event_handler(Events.STARTED, lambda e: seen.append(e.state.alpha))
        return seen

    first, _, _, _ = twins(tmp_path, Schedule(n=3), trace=False, run_id="first")
    with_alpha(first.trainer)

    def save_and_stop(engine):
        first.graph.save_checkpoint()
        raise ice.StopAllTasks()

    first.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=9), save_and_stop)
    first.run()
    resumed, _, _, _ = twins(tmp_path, Schedule(n=3), trace=False, run_id="second")
    ice_seen = with_alpha(resumed.trainer)
    resumed.run(resume_from=sorted((tmp_path / "first" / "ckpts").glob("ckpt-*.pt"))[-1])
    canonical = ignite_twin(Schedule(n=3))
    with_alpha(canonical.trainer)
    saver = Checkpoint({"trainer": canonical.trainer}, DiskSaver(str(tmp_path / "ignite"), require_empty=False))
    canonical.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=9), lambda e: (saver(e), e.terminate()))
    canonical.run()
    loaded = ignite_twin(Schedule(n=3))
    ignite_seen = with_alpha(loaded.trainer)
    Checkpoint.load_objects(
        {"trainer": loaded.trainer}, torch.load(tmp_path / "ignite" / saver.last_checkpoint, weights_only=True)
    )
    loaded.run()
    assert ice_seen == ignite_seen == [90]


def test_running_a_task_engine_directly_is_an_error_naming_g_run_and_exec_tasks(tmp_path):
    tw = ice_twin(tmp_path, Schedule(n=1))
    for engine in (tw.trainer, tw.evaluator):
        with pytest.raises(Exception, match=r"g\.run.*exec_tasks|exec_tasks.*g\.run") as info:
            engine.run([1, 2, 3], max_epochs=1)
        assert not isinstance(info.value, (TypeError, AttributeError))  # a deliberate error, not a crash


def test_manual_seed_before_run_decides_the_weights(tmp_path):
    def trained(seed, run_id):
        tw = ice_twin(tmp_path, Schedule(n=1, val=False), dropout=True, run_id=run_id)
        torch.manual_seed(seed)  # after the model's own initialisation: only the run's randomness
        tw.run()
        assert tw.graph.seed == seed
        return tw.model

    one, again, two = trained(1, "one"), trained(1, "again"), trained(2, "two")
    assert_same_weights(one, again)
    assert any(not torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.state_dict().values()))


def test_idist_parallel_and_auto_model_in_one_process(tmp_path):
    results = {}

    def training(local_rank):
        ice_side, ignite_side, ice_trace, ignite_trace = twins(tmp_path, Schedule(n=2))
        for tw in (ice_side, ignite_side):
            assert idist.auto_model(tw.model) is tw.model  # serial, on CPU: nothing to wrap
        ice_side.run()
        ignite_side.run()
        results["rank"] = idist.get_rank()
        assert_same_trace(ice_trace, ignite_trace)
        assert_same_weights(ice_side.model, ignite_side.model)

    with idist.Parallel(backend=None) as parallel:
        parallel.run(training)
    assert results == {"rank": 0}
