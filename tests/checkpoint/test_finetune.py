"""Pretrain -> finetune (API.md B8): ``load_checkpoint`` / ``LoadCheckpointTask`` load module
weights and buffers only by default; optimizer and other node state on request; nodes chosen by
tags, names or uids; a ``src -> dst`` rename map; a report of what was loaded and what was left."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import regression_set

import ice_ignite as ice
from ice_ignite import CheckpointError


def graph(optimizer=torch.optim.SGD, lr=0.01, tag="*", seed=0, **optimizer_kwargs):
    """data -> encoder (Linear + BatchNorm) -> head -> mse; the encoder and head under ``tag``."""
    torch.manual_seed(seed)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(regression_set(40), batch_size=8, shuffle=True))
    spec = ice.Optimizer(optimizer, lr=lr, **optimizer_kwargs)
    encoder = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    g.add("encoder", ice.ModuleNode(encoder, forward=lambda n, x: n.module(x["data"][0]), optimizers=spec), tags=tag)
    g.add(
        "head",
        ice.ModuleNode(torch.nn.Linear(4, 1), forward=lambda n, x: n.module(x["encoder"]), optimizers=spec),
        tags=tag,
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["head"], x["data"][1])))
    return g


def pretrained(tmp_path, tag="*", **kwargs):
    """A graph trained for one epoch and the checkpoint it saved."""
    g = graph(tag=tag, **kwargs)
    tasks = [ice.Task(train=True, epochs=1, tags=tag), ice.SaveCheckpointTask()]
    g.run(tasks, devices="cpu", out_dir=tmp_path, run_id="pre")
    return g, next((tmp_path / "pre" / "ckpts").glob("ckpt-*.pt"))


def weights(node):
    return {k: v.clone() for k, v in node.module.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


def test_finetune_keeps_its_own_learning_rate_and_gets_the_pretrained_weights_and_buffers(tmp_path):
    pre, path = pretrained(tmp_path, lr=0.01, momentum=0.9)
    fine = graph(lr=1e-4, momentum=0.9, seed=1)
    seen = []
    fine.run(
        [
            ice.LoadCheckpointTask(path),
            lambda g: seen.append(
                (
                    g.learning_rates(),
                    weights(g["*/encoder"]),
                    g["*/data"].pass_index,
                    dict(g["*/encoder"].optimizers[".*"].state),
                )
            ),
            ice.Task(train=True, epochs=1),
        ],
        devices="cpu",
        out_dir=tmp_path,
        run_id="fine",
    )
    lrs, loaded, pass_index, optimizer_state = seen[0]
    assert lrs == {"*/encoder/.*": [1e-4], "*/head/.*": [1e-4]}  # not the pretraining 0.01
    assert_same(loaded, weights(pre["*/encoder"]))  # weights and BatchNorm running statistics
    assert "running_mean" in "".join(loaded)
    assert pass_index == -1  # the data position is the finetune graph's own
    assert optimizer_state == {}  # no momentum buffers from the pretraining optimizer
    assert fine.learning_rates() == {"*/encoder/.*": [1e-4], "*/head/.*": [1e-4]}


def test_an_sgd_checkpoint_loads_into_an_adamw_graph_that_then_trains(tmp_path):
    pre, path = pretrained(tmp_path, lr=0.01, momentum=0.9)
    fine = graph(torch.optim.AdamW, lr=1e-4, seed=1)
    report = fine.load_checkpoint(path)
    assert report["loaded"] == ["*/encoder", "*/head"]
    assert_same(weights(fine["*/head"]), weights(pre["*/head"]))
    assert fine.learning_rates() == {"*/encoder/.*": [1e-4], "*/head/.*": [1e-4]}
    fine.run([ice.Task(train=True, epochs=1)], devices="cpu", out_dir=tmp_path, run_id="fine")
    assert fine["*/head"].optimizers[".*"].state  # AdamW's own state, built by its own steps
    assert fine.global_counters.steps.train == 5


def test_optimizers_true_loads_the_optimizer_state_and_refuses_another_kind_of_optimizer(tmp_path):
    pre, path = pretrained(tmp_path, lr=0.01, momentum=0.9)
    same = graph(lr=1e-4, momentum=0.9, seed=1)
    report = same.load_checkpoint(path, optimizers=True)
    assert report["parts"]["*/encoder"] == ["weights", "optimizers"]
    assert same.learning_rates()["*/encoder/.*"] == [0.01]  # asked for: the pretraining optimizer's state
    momentum = same["*/head"].optimizers[".*"].state[same["*/head"].module.weight]["momentum_buffer"]
    assert torch.equal(momentum, pre["*/head"].optimizers[".*"].state[pre["*/head"].module.weight]["momentum_buffer"])
    other = graph(torch.optim.AdamW, lr=1e-4, seed=1)
    before = weights(other["*/encoder"])
    with pytest.raises(CheckpointError, match=r"'\*/encoder'.*optimizer '\.\*'.*AdamW.*optimizers=False") as info:
        other.load_checkpoint(path, optimizers=True)
    assert "momentum" in str(info.value) and "betas" in str(info.value)
    assert_same(weights(other["*/encoder"]), before)  # nothing was loaded


def test_other_true_loads_data_positions_and_loss_accumulators(tmp_path):
    pre, path = pretrained(tmp_path)
    fine = graph(seed=1)
    report = fine.load_checkpoint(path, other=True)
    assert report["parts"] == {"*/data": ["other"], "*/encoder": ["weights"], "*/head": ["weights"], "*/mse": ["other"]}
    assert fine["*/data"].state_dict() == pre["*/data"].state_dict()
    torch.testing.assert_close(fine["*/mse"].state_dict(), pre["*/mse"].state_dict(), rtol=0, atol=0)
    nothing = graph(seed=1).load_checkpoint(path, weights=False)
    assert nothing["loaded"] == [] and set(nothing["left"]) == {"*/data", "*/encoder", "*/head", "*/mse"}


def test_the_report_says_what_was_loaded_and_what_was_left(tmp_path):
    _pre, path = pretrained(tmp_path, momentum=0.9)
    fine = graph(seed=1)
    fine.remove("head")
    fine.add("classifier", ice.ModuleNode(torch.nn.Linear(4, 2), forward=lambda n, x: n.module(x["encoder"])))
    with pytest.warns(UserWarning) as warned:
        report = fine.load_checkpoint(path)
    assert report == {
        "loaded": ["*/encoder"],
        "parts": {"*/encoder": ["weights"]},
        "left": {"*/data": ["other"], "*/encoder": ["optimizers"], "*/mse": ["other"]},
        "renamed": {},
        "not_selected": [],
        "only_in_checkpoint": ["*/head"],
        "only_in_graph": ["*/classifier"],
    }
    messages = " | ".join(str(w.message) for w in warned)
    assert "*/head absent from this graph" in messages and "*/classifier absent from the checkpoint" in messages


def test_nodes_selects_by_name_or_uid_besides_tags(tmp_path):
    pre, path = pretrained(tmp_path)
    by_name = graph(seed=1)
    head_before = weights(by_name["*/head"])
    report = by_name.load_checkpoint(path, nodes="encoder")
    assert report["loaded"] == ["*/encoder"] and report["not_selected"] == ["*/data", "*/head", "*/mse"]
    assert_same(weights(by_name["*/encoder"]), weights(pre["*/encoder"]))
    assert_same(weights(by_name["*/head"]), head_before)
    by_uid = graph(seed=1)
    assert by_uid.load_checkpoint(path, nodes=["*/head"])["loaded"] == ["*/head"]
    assert_same(weights(by_uid["*/head"]), weights(pre["*/head"]))
    with pytest.raises(CheckpointError, match=r"'backbone'.*\*/encoder"):
        graph(seed=1).load_checkpoint(path, nodes="backbone")


def test_a_rename_map_loads_nodes_whose_names_differ(tmp_path):
    pre, path = pretrained(tmp_path, tag="pretrain")
    fine = graph(tag="finetune", seed=1)
    fine.add(
        "probe", ice.ModuleNode(torch.nn.Linear(4, 1), forward=lambda n, x: n.module(x["encoder"])), tags="finetune"
    )
    seen = []
    fine.run(
        [
            ice.LoadCheckpointTask(path, rename={"pretrain/encoder": "finetune/encoder", "head": "probe"}),
            lambda g: seen.append((weights(g["finetune/encoder"]), weights(g["finetune/probe"]))),
            ice.Task(train=True, epochs=1, tags="finetune"),
        ],
        devices="cpu",
        out_dir=tmp_path,
        run_id="fine",
    )
    assert_same(seen[0][0], weights(pre["pretrain/encoder"]))
    assert_same(seen[0][1], weights(pre["pretrain/head"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every node found its state: nothing to warn about
        report = graph(tag="finetune", seed=1).load_checkpoint(
            path, rename={"pretrain/encoder": "finetune/encoder", "pretrain/head": "finetune/head"}
        )
    assert report["renamed"] == {"pretrain/encoder": "finetune/encoder", "pretrain/head": "finetune/head"}
    assert report["loaded"] == ["finetune/encoder", "finetune/head"]


def test_an_unknown_name_in_a_rename_map_is_an_error_naming_it(tmp_path):
    _, path = pretrained(tmp_path, tag="pretrain")
    fine = graph(tag="finetune", seed=1)
    before = weights(fine["finetune/encoder"])
    with pytest.raises(CheckpointError, match=r"rename.*'pretrain/backbone'.*not in the checkpoint.*pretrain/encoder"):
        fine.load_checkpoint(path, rename={"pretrain/encoder": "finetune/encoder", "pretrain/backbone": "head"})
    with pytest.raises(CheckpointError, match=r"rename.*'finetune/decoder'.*not in this graph.*finetune/encoder"):
        fine.load_checkpoint(path, rename={"pretrain/encoder": "finetune/decoder"})
    assert_same(weights(fine["finetune/encoder"]), before)  # a bad map loads nothing


def test_load_checkpoint_task_checks_its_options_when_built():
    with pytest.raises(TypeError, match="rename"):
        ice.LoadCheckpointTask("x.pt", rename=["pretrain/encoder"])
    with pytest.raises(TypeError, match="optimizers"):
        ice.LoadCheckpointTask("x.pt", optimizers="yes")
    task = ice.LoadCheckpointTask("x.pt", nodes="encoder", rename={"a": "b"}, other=True)
    assert repr(task) == "LoadCheckpointTask('x.pt', nodes=('encoder',), rename={'a': 'b'}, other=True)"
