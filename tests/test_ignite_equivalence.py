"""The spec of B3 (turn 3) is an equivalence: every event a schedule fires on its task engines equals,
in order and with the same ``(epoch, iteration, max_epochs, epoch_length)``, what the canonical
plain-ignite script fires on its trainer / evaluator (see ``ignite_twins`` for both scripts and
what the trace holds). Losses and weights are compared too where that is cheap.

INTERRUPT is compared only where the canonical script interrupts (the GAN's alternating engines);
elsewhere ice_ignite's interrupts are checked against where its repetitions end."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from ignite_twins import (
    BATCH,
    Schedule,
    Trace,
    assert_same_trace,
    assert_same_weights,
    cycle,
    dataset,
    ice_graph,
    ignite_twin,
    loader,
    make_model,
    plain_step,
    twins,
)

import ice_ignite as ice


def val_losses(twin) -> list:
    """The evaluator's ``metrics["ce"]`` at each of its COMPLETED."""
    seen: list = []
    twin.evaluator.add_event_handler(Events.COMPLETED, lambda e: seen.append(e.state.metrics["ce"]))
    return seen


def expected_interrupts(sched: Schedule, length: int) -> list:
    """Where the train task's run is suspended: the end of each of its repetitions; after the last
    only when validations follow it in the Repeat (its COMPLETED then comes after them, as an ignite
    trainer's comes after the evaluator run from its last EPOCH_COMPLETED)."""
    per = 1 if sched.steps else sched.epochs
    total = sched.train_epochs
    last = total + 1 if sched.val else total
    return [("train", "INTERRUPT", e, e * length, total, length) for e in range(per, last, per)]


# -- [Repeat([train, val], times=n)] ----------------------------------------------------------------------
@pytest.mark.parametrize("sched", [Schedule(n=3, epochs=1), Schedule(n=2, epochs=2)], ids=["epochs1", "epochs2"])
def test_repeat_train_val_fires_the_events_of_one_trainer_run_with_an_evaluator(tmp_path, sched):
    ice_side, ignite_side, ice_trace, ignite_trace = twins(tmp_path, sched)
    ice_val, ignite_val = val_losses(ice_side), val_losses(ignite_side)
    ice_side.run()
    ignite_side.run()
    assert_same_trace(ice_trace, ignite_trace)
    assert ice_trace.names("train").count("STARTED") == ice_trace.names("train").count("COMPLETED") == 1
    assert ice_trace.interrupts == expected_interrupts(sched, 6)
    assert ice_side.steps() == ignite_side.steps() == 6 * sched.train_epochs
    assert ice_val == pytest.approx(ignite_val, rel=1e-5) and len(ice_val) == sched.n
    assert_same_weights(ice_side.model, ignite_side.model)


def test_step_mode_is_trainer_epochs_of_steps_iterations_over_a_cycling_loader(tmp_path):
    sched = Schedule(n=3, steps=4)  # 6 batches in the data: the second repetition wraps around
    ice_side, ignite_side, ice_trace, ignite_trace = twins(tmp_path, sched)
    ice_side.run()
    ignite_side.run()
    assert_same_trace(ice_trace, ignite_trace)
    assert ice_trace.interrupts == expected_interrupts(sched, 4)
    assert ice_side.steps() == ignite_side.steps() == 12
    assert_same_weights(ice_side.model, ignite_side.model)  # the data position carries over


@pytest.mark.parametrize("sched", [Schedule(n=2, epochs=1, k=2), Schedule(n=2, steps=2, k=2)], ids=["epochs", "steps"])
def test_gradient_accumulation_counts_micro_batches_as_iterations(tmp_path, sched):
    ice_side, ignite_side, ice_trace, ignite_trace = twins(tmp_path, sched)
    ice_side.run()
    ignite_side.run()
    assert_same_trace(ice_trace, ignite_trace)  # epoch_length = 6 micro-batches, or steps * k = 4
    assert ice_side.steps() == ignite_side.steps() == (6 if not sched.steps else 4)
    assert_same_weights(ice_side.model, ignite_side.model)


def test_nested_repeats_validate_every_second_train_repetition(tmp_path):
    sched = Schedule(n=2, epochs=1, every=2)  # Repeat([Repeat([train], times=2), val], times=2)
    ice_side, ignite_side, ice_trace, ignite_trace = twins(tmp_path, sched)
    ice_side.run()
    ignite_side.run()
    assert_same_trace(ice_trace, ignite_trace)
    assert ice_trace.interrupts == expected_interrupts(Schedule(n=4, epochs=1), 6)  # 4 train repetitions
    assert_same_weights(ice_side.model, ignite_side.model)


# -- several train tasks -------------------------------------------------------------------------------
def two_task_graph(tmp_path, amounts: dict, alternate: int | None):
    """Train tasks "d" and "g" (each its own data, model, SGD): ``Repeat([d, g], times=alternate)``
    or, with ``alternate=None``, ``[d, g]``."""
    g = None
    tasks, models = {}, {}
    for tag, seed in (("d", 2), ("g", 3)):
        models[tag] = make_model()
        g = ice_graph(models[tag], dataset(seed=seed), tags=tag, g=g, val=False)
        tasks[tag] = ice.Task(train=True, tags=tag, **amounts[tag])
    trace = Trace()
    for tag in "dg":
        trace.watch(tasks[tag].engine, tag)
    schedule = [ice.Repeat([tasks["d"], tasks["g"]], times=alternate)] if alternate else [tasks["d"], tasks["g"]]
    g.run(schedule, devices="cpu", out_dir=tmp_path, run_id="two", progress=False)
    return g, models, trace


def two_ignite_engines(amounts: dict, alternate: int | None):
    """The canonical script: two Engines; alternating, each is interrupted at the end of its
    repetition (``interrupt()``, but not after its last) and resumed by the next ``run``."""
    trace = Trace()
    engines, models, data = {}, {}, {}
    for tag, seed in (("d", 2), ("g", 3)):
        models[tag] = make_model()
        engines[tag] = Engine(plain_step(models[tag], torch.optim.SGD(models[tag].parameters(), lr=0.1)))
        trace.watch(engines[tag], tag)
        data[tag] = loader(dataset(seed=seed), BATCH)
    if alternate is None:
        for tag in "dg":
            engines[tag].run(data[tag], max_epochs=amounts[tag]["epochs"])
        return models, trace
    for tag in "dg":
        engines[tag].add_event_handler(
            Events.EPOCH_COMPLETED, lambda e: e.interrupt() if e.state.epoch < e.state.max_epochs else None
        )
    for _ in range(alternate):
        for tag in "dg":
            engines[tag].run(cycle(data[tag]), max_epochs=alternate, epoch_length=amounts[tag]["steps"])
    return models, trace


def test_a_gans_alternating_train_tasks_are_two_interrupted_and_resumed_engines(tmp_path):
    amounts = {"d": {"steps": 3}, "g": {"steps": 2}}
    g, ice_models, ice_trace = two_task_graph(tmp_path, amounts, alternate=3)
    ignite_models, ignite_trace = two_ignite_engines(amounts, alternate=3)
    assert_same_trace(ice_trace, ignite_trace, interrupts=True)
    assert [e[:2] for e in ice_trace.interrupts] == [("d", "INTERRUPT"), ("g", "INTERRUPT")] * 2
    for tag in "dg":
        assert_same_weights(ice_models[tag], ignite_models[tag])
    assert g.global_counters.steps.train == 3 * 3 + 3 * 2


def test_two_train_tasks_in_sequence_are_two_engine_runs(tmp_path):
    amounts = {"d": {"epochs": 2}, "g": {"epochs": 1}}
    _, ice_models, ice_trace = two_task_graph(tmp_path, amounts, alternate=None)
    ignite_models, ignite_trace = two_ignite_engines(amounts, alternate=None)
    assert_same_trace(ice_trace, ignite_trace, interrupts=True)
    for tag in "dg":
        assert_same_weights(ice_models[tag], ignite_models[tag])


# -- resume ------------------------------------------------------------------------------------------
def newest_checkpoint(run_dir):
    return sorted((run_dir / "ckpts").glob("ckpt-*.pt"))[-1]


def test_a_resume_in_the_middle_of_an_epoch_fires_what_ignite_fires_after_load_objects(tmp_path):
    sched = Schedule(n=3, epochs=1)
    # ice: checkpoint at iteration 9 (epoch 2, 3 of 6 done), then StopAllTasks; resume in a new graph
    first, _, _, _ = twins(tmp_path, sched, trace=False, run_id="first")

    def save_and_stop(engine):
        first.graph.save_checkpoint()
        raise ice.StopAllTasks()

    first.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=9), save_and_stop)
    first.run()
    resumed, _, ice_trace, _ = twins(tmp_path, sched, run_id="second")
    resumed.run(resume_from=newest_checkpoint(tmp_path / "first"))
    # ignite: Checkpoint at iteration 9, terminate; load_objects into new objects, then trainer.run
    canonical = ignite_twin(sched)
    saver = Checkpoint(
        {"trainer": canonical.trainer, "model": canonical.model, "optimizer": canonical.optimizer},
        DiskSaver(str(tmp_path / "ignite"), require_empty=False),
    )

    def save_and_terminate(engine):
        saver(engine)
        engine.terminate()

    canonical.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=9), save_and_terminate)
    canonical.run()
    ignite_trace = Trace()
    loaded = ignite_twin(sched, trace=ignite_trace)
    Checkpoint.load_objects(
        {"trainer": loaded.trainer, "model": loaded.model, "optimizer": loaded.optimizer},
        torch.load(tmp_path / "ignite" / saver.last_checkpoint, weights_only=True),
    )
    loaded.run()
    assert ice_trace.events[0] == ("train", "STARTED", 1, 9, 3, 6)  # as after load_objects: STARTED fires again
    assert_same_trace(ice_trace, ignite_trace)
    uninterrupted = ignite_twin(sched)
    uninterrupted.run()
    assert_same_weights(resumed.model, uninterrupted.model)  # ice resumes the data exactly; ignite does not


def test_raising_repeat_times_on_resume_continues_the_trainer_to_the_new_total(tmp_path):
    def schedule(twin, times):
        return [ice.Repeat([twin.train_task, twin.val_task, ice.SaveCheckpointTask()], times=times)]

    first, _, _, _ = twins(tmp_path, Schedule(n=2), trace=False, run_id="first")
    first.run(schedule(first, 2))
    resumed, _, ice_trace, _ = twins(tmp_path, Schedule(n=3), run_id="second")
    resumed.run(schedule(resumed, 3), resume_from=newest_checkpoint(tmp_path / "first"))
    canonical = ignite_twin(Schedule(n=2))
    saver = Checkpoint(
        {"trainer": canonical.trainer, "model": canonical.model, "optimizer": canonical.optimizer},
        DiskSaver(str(tmp_path / "ignite"), require_empty=False),
    )
    canonical.run()
    saver(canonical.trainer)  # after the run, as SaveCheckpointTask after the last validation
    ignite_trace = Trace()
    loaded = ignite_twin(Schedule(n=3), trace=ignite_trace)
    Checkpoint.load_objects(
        {"trainer": loaded.trainer, "model": loaded.model, "optimizer": loaded.optimizer},
        torch.load(tmp_path / "ignite" / saver.last_checkpoint, weights_only=True),
    )
    loaded.run(max_epochs=3)
    assert ignite_trace.events[0] == ("train", "STARTED", 2, 12, 3, 6)
    assert_same_trace(ice_trace, ignite_trace)
    uninterrupted = ignite_twin(Schedule(n=3))
    uninterrupted.run()
    assert_same_weights(resumed.model, uninterrupted.model)


# -- what the iteration sees ----------------------------------------------------------------------------
def test_state_batch_and_output_are_what_the_canonical_step_sees_and_returns(tmp_path):
    ice_side, ignite_side, _, _ = twins(tmp_path, Schedule(n=1), trace=False)
    seen = {"ice": [], "ignite": []}
    for twin in (ice_side, ignite_side):
        twin.trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e, k=twin.kind: seen[k].append((e.state.batch, e.state.output))
        )
    ice_side.run()
    ignite_side.run()
    assert len(seen["ice"]) == len(seen["ignite"]) == 6
    outputs = [out for _, out in seen["ice"]]
    assert len({id(out) for out in outputs}) == 6  # a new dict each iteration, kept by whoever holds it
    for (batch, out), (plain_batch, plain_out) in zip(seen["ice"], seen["ignite"]):
        assert type(batch) is dict and list(batch) == ["data"]
        torch.testing.assert_close(list(batch["data"]), list(plain_batch))
        assert type(out) is dict and sorted(out) == ["ce", "data", "net"]
        assert not out["net"].requires_grad and not out["ce"].requires_grad
        torch.testing.assert_close(out["ce"], plain_out["ce"])
    assert type(ice_side.trainer.state.output) is dict and "ce" in ice_side.trainer.state.output  # kept after the run
