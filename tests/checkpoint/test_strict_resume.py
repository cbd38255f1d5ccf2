"""Resuming into a different graph (API.md B8): with ``strict_resume=True`` (the default) a
checkpointed node the graph lacks (a rename), a stateful node the checkpoint lacks, or a
DatasetNode whose settings changed is ``ResumeTaskFailed`` naming it and the fix;
``strict_resume=False`` warns and continues."""

import pytest
import torch
import torch.nn.functional as F
from conftest import regression_set
from ignite.engine import Events

import ice_ignite as ice
from ice_ignite import ResumeTaskFailed


def graph(net="net", batch_size=8, shuffle=True, drop_last=False, n=40):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add(
        "data",
        ice.DatasetNode(regression_set(n), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last),
        tags="train",
    )
    g.add(
        net,
        ice.ModuleNode(
            torch.nn.Linear(3, 1),
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x[net], x["data"][1])))
    return g


def schedule(times):
    return [ice.Repeat([ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()], times=times)]


def first_run(tmp_path):
    g = graph()
    g.run(schedule(3), devices="cpu", out_dir=tmp_path, run_id="r")
    return g


def test_a_checkpoint_records_the_dataset_settings_an_exact_resume_needs(tmp_path):
    first_run(tmp_path)
    state = torch.load(sorted((tmp_path / "r" / "ckpts").glob("ckpt-*.pt"))[-1], weights_only=True)
    assert state["data_settings"] == {
        "train/data": {
            "len(dataset)": 40,
            "batch_size": 8,
            "batch_size_in_total": False,
            "shuffle": True,
            "drop_last": False,
            "sampler": None,
        }
    }


def test_resuming_after_a_node_was_renamed_fails_naming_it_and_the_fix(tmp_path):
    pre = first_run(tmp_path)
    renamed = graph(net="encoder")
    before = renamed["*/encoder"].module.weight.clone()
    with pytest.raises(ResumeTaskFailed) as info:
        renamed.run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    message = str(info.value)
    for part in ("'*/net'", "'*/encoder'", "rename=", "strict_resume=False"):
        assert part in message, message
    assert torch.equal(renamed["*/encoder"].module.weight, before)  # nothing was loaded
    assert renamed.global_counters.epochs.train == 0
    assert pre.global_counters.epochs.train == 3


def test_strict_resume_false_keeps_the_warning_path_for_a_renamed_node(tmp_path):
    first_run(tmp_path)
    renamed = graph(net="encoder")
    with pytest.warns(UserWarning, match=r"'\*/net' is in the checkpoint but not in this graph.*strict_resume=False"):
        renamed.run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto", strict_resume=False)
    assert renamed.global_counters.epochs.train == 4


def test_resuming_after_the_batch_size_changed_fails_naming_the_setting(tmp_path):
    first_run(tmp_path)
    # 40 samples in batches of 9 are 5 iterations, as in batches of 8: nothing else notices the change
    with pytest.raises(
        ResumeTaskFailed,
        match=r"DatasetNode 'train/data': batch_size was 8 and is now 9.*"
        r"strict_resume=False",
    ):
        graph(batch_size=9).run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    with pytest.raises(
        ResumeTaskFailed,
        match=r"shuffle was True and is now False.*drop_last was False and is now "
        r"True.*len\(dataset\) was 40 and is now 32",
    ):
        graph(shuffle=False, drop_last=True, n=32).run(
            schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto"
        )
    g = graph(batch_size=9)
    with pytest.warns(UserWarning, match="batch_size was 8 and is now 9"):
        g.run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto", strict_resume=False)
    assert g.global_counters.steps.train == 4 * 5


def test_resuming_with_another_sampler_fails_naming_it(tmp_path):
    first_run(tmp_path)
    g = graph(shuffle=False)
    g.remove("train/data")
    data = regression_set(40)
    g.add("data", ice.DatasetNode(data, batch_size=8, sampler=torch.utils.data.RandomSampler(data)), tags="train")
    with pytest.raises(
        ResumeTaskFailed,
        match=r"'train/data': shuffle was True and is now False, sampler was None and "
        r"is now 'RandomSampler of 40'",
    ):
        g.run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")


def test_a_stateless_node_added_on_resume_does_not_block_it(tmp_path):
    first_run(tmp_path)
    g = graph()
    g.add("probe", ice.Node(forward=lambda n, x: None), tags="train")
    g.run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    assert g.global_counters.epochs.train == 4


def test_a_stateful_node_added_on_resume_fails_the_strict_resume(tmp_path):
    first_run(tmp_path)
    g = graph()
    g.add("l1", ice.LossNode(forward=lambda n, x: F.l1_loss(x["net"], x["data"][1])), tags="train")
    with pytest.raises(ResumeTaskFailed, match=r"'train/l1' is in this graph but not in the checkpoint"):
        g.run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")


def test_a_state_given_to_load_state_dict_is_checked_too(tmp_path):
    g = graph()
    g.exec_tasks([ice.Task(train=True, epochs=1, tags="train")], ice.Launcher())
    state = g.state_dict()
    other = graph(batch_size=5)
    other.load_state_dict(state)
    with pytest.raises(ResumeTaskFailed, match="batch_size was 8 and is now 5"):
        other.exec_tasks([ice.Task(train=True, epochs=1, tags="train")], ice.Launcher())


def test_a_lenient_resume_into_a_new_epoch_length_says_what_changed_since_the_checkpoint(tmp_path):
    first_run(tmp_path)
    with (
        pytest.warns(UserWarning, match="batch_size was 8 and is now 4"),
        pytest.raises(
            ResumeTaskFailed,
            match=r"ran with 5 iterations per epoch in the run that wrote the "
            r"checkpoint and now has 10 .*g.load_checkpoint\(path\)",
        ),
    ):
        graph(batch_size=4).run(
            schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto", strict_resume=False
        )


# -- what would change training (issue "Nothing lost, nothing run", item 7) ---------------------------
def trainer(optimizer=torch.optim.Adam, acc=1, clip=None, autocast=None, scheduler=None, **kwargs):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(regression_set(40), batch_size=8), tags="train")
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(3, 1),
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(optimizer, grad_clip_norm=clip, lr_scheduler=scheduler, **kwargs),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    g.set_gradient_accumulate(acc)
    if autocast is not None:
        g.init_autocast(True, autocast)
    return g


def optimizer_of(g):
    return g["*/net"].optimizers[".*"]


def test_resuming_with_another_optimizer_class_or_hyper_parameters_fails_listing_each_old_to_new(tmp_path):
    trainer(lr=0.01).run(schedule(1), devices="cpu", out_dir=tmp_path, run_id="r")
    g = trainer(torch.optim.AdamW, lr=1e-4)
    before = g["*/net"].module.weight.clone()
    with pytest.raises(ResumeTaskFailed) as info:  # today: AdamW passes the "kind" check, lr 0.01 wins silently
        g.run(schedule(2), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    message = str(info.value)
    for part in (
        "node '*/net' optimizer '.*' class Adam → AdamW",
        "lr 0.01 → 0.0001",
        "weight_decay 0 → 0.01",
        "ice.Optimizer arguments",
        "strict_resume=False",
        "g.load_checkpoint(path)",
    ):
        assert part in message, message
    assert torch.equal(g["*/net"].module.weight, before) and g.global_counters.epochs.train == 0
    with pytest.raises(ResumeTaskFailed, match=r"optimizer '\.\*' betas \(0\.9, 0\.999\) → \(0\.8, 0\.999\)"):
        trainer(lr=0.01, betas=(0.8, 0.999)).run(
            schedule(2), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto"
        )
    with pytest.raises(ResumeTaskFailed, match=r"optimizer '\.\*' grad_clip_norm None → 1\.0"):
        trainer(lr=0.01, clip=1.0).run(schedule(2), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    trainer(lr=0.01).run(schedule(2), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")  # unchanged


def test_a_lenient_resume_with_new_hyper_parameters_warns_and_trains_with_the_codes_values(tmp_path):
    trainer(lr=0.01).run(schedule(1), devices="cpu", out_dir=tmp_path, run_id="r")
    g = trainer(torch.optim.AdamW, lr=1e-4)
    seen = []
    g.on(Events.STARTED, lambda e: seen.append(dict(optimizer_of(g).param_groups[0])), train=True)
    with pytest.warns(
        UserWarning,
        match=r"lr 0\.01 → 0\.0001 \(the code's, set after the checkpoint's optimizer "
        r"state is loaded\)",
    ):
        g.run(schedule(2), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto", strict_resume=False)
    assert seen[0]["lr"] == 1e-4 and seen[0]["weight_decay"] == 0.01  # the code's values when training resumed
    assert optimizer_of(g).state_dict()["state"][0]["step"].item() == 10  # the checkpoint's moments and steps


def test_a_lenient_resume_leaves_the_learning_rate_to_a_loaded_lr_scheduler_and_says_so(tmp_path):
    step = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    trainer(lr=0.01, scheduler=step).run(schedule(1), devices="cpu", out_dir=tmp_path, run_id="r")
    g = trainer(lr=0.1, scheduler=step)
    with pytest.warns(UserWarning, match=r"lr 0\.01 → 0\.1 \(the checkpoint's: the loaded LR scheduler sets"):
        g.run(schedule(1), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto", strict_resume=False)
    assert optimizer_of(g).param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**2)  # 5 steps of StepLR(2)


def mid_cycle_checkpoint(tmp_path):
    """A checkpoint after 3 iterations of a task accumulating 2: one micro-batch of a cycle is in."""
    task = ice.Task(train=True, epochs=1, tags="train")
    task.engine.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.hypergraph.save_checkpoint())
    trainer(acc=2, lr=0.01).run([task], devices="cpu", out_dir=tmp_path, run_id="r")
    path = next((tmp_path / "r" / "ckpts").glob("ckpt-*.pt"))
    return path, torch.load(path, weights_only=True)


def test_resuming_a_mid_cycle_checkpoint_with_another_gradient_accumulation_says_so(tmp_path):
    path, state = mid_cycle_checkpoint(tmp_path)
    saved = state["ranks"][0]["grads"]["*/net"]["weight"]
    one_epoch = [ice.Task(train=True, epochs=1, tags="train")]
    with pytest.raises(
        ResumeTaskFailed,
        match=r"gradient accumulation \(set_gradient_accumulate\) 2 → 4.*"
        r"g\.set_gradient_accumulate",
    ):
        trainer(acc=4, lr=0.01).run(one_epoch, devices="cpu", out_dir=tmp_path, run_id="s", resume_from=path)
    g = trainer(acc=4, lr=0.01)
    grads = []
    one_epoch[0].engine.add_event_handler(Events.STARTED, lambda e: grads.append(g["*/net"].module.weight.grad.clone()))
    with pytest.warns(UserWarning, match=r"2 → 4 \(the code's.*rescaled to 1/4"):
        g.run(one_epoch, devices="cpu", out_dir=tmp_path, run_id="t", resume_from=path, strict_resume=False)
    assert torch.equal(grads[0], saved * 0.5)  # each micro-batch weighs 1/4 in the cycle, as the code's own


def test_a_checkpoint_without_the_training_record_still_resumes_and_compares_what_it_holds(tmp_path):
    _path, state = mid_cycle_checkpoint(tmp_path)
    del state["training"]  # as older checkpoints: optimizers and autocast unknown, not an error
    torch.save(state, tmp_path / "old.pt")
    one_epoch = [ice.Task(train=True, epochs=1, tags="train")]
    with pytest.raises(ResumeTaskFailed) as info:  # the accumulation was always saved, never compared
        trainer(acc=4, lr=0.1).run(
            one_epoch, devices="cpu", out_dir=tmp_path, run_id="s", resume_from=tmp_path / "old.pt"
        )
    assert "gradient accumulation (set_gradient_accumulate) 2 → 4" in str(info.value)
    assert "lr" not in str(info.value).split("A resume continues")[0]
    trainer(acc=2, lr=0.1).run(one_epoch, devices="cpu", out_dir=tmp_path, run_id="t", resume_from=tmp_path / "old.pt")


def test_resuming_with_another_autocast_dtype_fails_naming_it(tmp_path):
    trainer(lr=0.01, autocast=torch.bfloat16).run(schedule(1), devices="cpu", out_dir=tmp_path, run_id="r")
    with pytest.raises(ResumeTaskFailed, match=r"autocast dtype \(init_autocast\) bfloat16 → off.*g\.init_autocast"):
        trainer(lr=0.01).run(schedule(2), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    g = trainer(lr=0.01)
    with pytest.warns(UserWarning, match=r"bfloat16 → off \(the code's"):
        g.run(schedule(2), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto", strict_resume=False)
    assert g.global_counters.epochs.train == 2
