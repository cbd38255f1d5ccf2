"""Resuming into a different graph (API.md B8): with ``strict_resume=True`` (the default) a
checkpointed node the graph lacks (a rename), a stateful node the checkpoint lacks, or a
DatasetNode whose settings changed is ``ResumeTaskFailed`` naming it and the fix;
``strict_resume=False`` warns and continues."""

import pytest
import torch
import torch.nn.functional as F

import ice_ignite as ice
from ice_ignite import ResumeTaskFailed

from conftest import regression_set


def graph(net="net", batch_size=8, shuffle=True, drop_last=False, n=40):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(regression_set(n), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last),
          tags="train")
    g.add(net, ice.ModuleNode(torch.nn.Linear(3, 1), forward=lambda n, x: n.module(x["data"][0]),
                              optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1)))
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
    assert state["data_settings"] == {"train/data": {"len(dataset)": 40, "batch_size": 8, "batch_size_in_total": False,
                                                     "shuffle": True, "drop_last": False, "sampler": None}}


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
        renamed.run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto",
                    strict_resume=False)
    assert renamed.global_counters.epochs.train == 4


def test_resuming_after_the_batch_size_changed_fails_naming_the_setting(tmp_path):
    first_run(tmp_path)
    # 40 samples in batches of 9 are 5 iterations, as in batches of 8: nothing else notices the change
    with pytest.raises(ResumeTaskFailed, match=r"DatasetNode 'train/data': batch_size was 8 and is now 9.*"
                                               r"strict_resume=False"):
        graph(batch_size=9).run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto")
    with pytest.raises(ResumeTaskFailed, match=r"shuffle was True and is now False.*drop_last was False and is now "
                                               r"True.*len\(dataset\) was 40 and is now 32"):
        graph(shuffle=False, drop_last=True, n=32).run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r",
                                                       resume_from="auto")
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
    with pytest.raises(ResumeTaskFailed, match=r"'train/data': shuffle was True and is now False, sampler was None and "
                                               r"is now 'RandomSampler of 40'"):
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
    with pytest.warns(UserWarning, match="batch_size was 8 and is now 4"):
        with pytest.raises(ResumeTaskFailed, match=r"ran with 5 iterations per epoch in the run that wrote the "
                                                   r"checkpoint and now has 10 .*g.load_checkpoint\(path\)"):
            graph(batch_size=4).run(schedule(4), devices="cpu", out_dir=tmp_path, run_id="r", resume_from="auto",
                                    strict_resume=False)
