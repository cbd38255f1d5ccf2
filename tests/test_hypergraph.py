"""Adding, removing and selecting nodes (API.md B1), with ice-learn bugs 1-4 fixed."""

import pytest
import torch

import ice_ignite as ice
from ice_ignite import GraphError


def names(nodes):
    return list(nodes)


def test_add_returns_node_and_sets_uid_and_name():
    g = ice.HyperGraph()
    node = g.add("probe", ice.Node(), tags=["val", "#dbg"])
    assert node.uid == "#dbg,val/probe" and node.name == "probe" and node.tags == ("#dbg", "val")
    assert g["val,#dbg/probe"] is node and g["#dbg,val/probe"] is node
    assert "val,#dbg/probe" in g and "train/probe" not in g


def test_only_a_uid_string_can_be_in_the_graph():
    g = ice.HyperGraph()
    g.add("probe", ice.Node())
    assert "*/probe" in g
    assert 3 not in g and None not in g and ("*", "probe") not in g and "probe" not in g


def test_add_rejects_bad_input_with_a_fix():
    g = ice.HyperGraph()
    with pytest.raises(TypeError, match="wrap it: ice.ModuleNode"):
        g.add("net", torch.nn.Linear(2, 2))
    g.add("data", ice.Node(), tags="train")
    with pytest.raises(ValueError, match="uid 'train/data' exists already"):
        g.add("data", ice.Node(), tags="train")
    node = g.add("other", ice.Node())
    with pytest.raises(ValueError, match="already in a HyperGraph as '\\*/other'"):
        g.add("again", node)
    with pytest.raises(ValueError, match="invalid node name"):
        g.add("a b", ice.Node())


def test_getitem_missing_uid_lists_the_nodes_of_that_name():
    g = ice.HyperGraph()
    g.add("data", ice.Node(), tags="train")
    with pytest.raises(KeyError, match="nodes named 'data': train/data"):
        g["val/data"]


def test_default_node_overridden_by_specific_node_whatever_the_add_order():
    # ice-learn bug 3: the override only worked when the "*" node was added first.
    for specific_first in (False, True):
        g = ice.HyperGraph()
        default, specific = ice.Node(), ice.Node()
        if specific_first:
            g.add("head", specific, tags="finetune")
            g.add("head", default)
        else:
            g.add("head", default)
            g.add("head", specific, tags="finetune")
        assert g.select_egraph("finetune").nodes["head"] is specific
        assert g.select_egraph("pretrain").nodes["head"] is default
        assert g.select_egraph("*").nodes["head"] is default


def test_hash_tags_select_only_when_named():
    # ice-learn bug 1: a node with only #tags was selected by every query.
    g = ice.HyperGraph()
    g.add("net", ice.Node())
    g.add("probe", ice.Node(), tags="#dbg")
    g.add("vprobe", ice.Node(), tags="#dbg,val")
    assert names(g.select_nodes("train")) == ["*/net"]
    assert names(g.select_nodes("val")) == ["*/net", "#dbg,val/vprobe"]
    assert names(g.select_nodes("train", "#dbg")) == ["*/net", "#dbg/probe", "#dbg,val/vprobe"]


def test_select_nodes_works_and_star_means_every_node():
    # ice-learn bug 2: select_nodes wrapped the query one level too deep.
    g = ice.HyperGraph()
    g.add("data", ice.Node(), tags="train")
    g.add("data", ice.Node(), tags="val")
    g.add("net", ice.Node())
    assert names(g.select_nodes("train")) == ["train/data", "*/net"]
    assert names(g.select_nodes("*")) == ["train/data", "val/data", "*/net"]
    assert names(g.select_nodes()) == ["train/data", "val/data", "*/net"]


def test_task_default_tags_select_only_default_nodes():
    g = ice.HyperGraph()
    g.add("data", ice.Node(), tags="train")
    g.add("net", ice.Node())
    assert list(g.select_egraph("*").nodes) == ["net"]


def test_plain_tags_must_all_be_in_the_task():
    g = ice.HyperGraph()
    g.add("head", ice.Node(), tags="hrnet,crela")
    assert names(g.select_nodes("train")) == []
    assert names(g.select_nodes("train", "hrnet", "crela")) == ["crela,hrnet/head"]


def test_ambiguous_name_is_an_error_naming_both_uids():
    g = ice.HyperGraph()
    g.add("data", ice.Node(), tags="train")
    g.add("data", ice.Node(), tags="aug")
    with pytest.raises(GraphError, match="two nodes named 'data': 'train/data' and 'aug/data'"):
        g.select_egraph("train,aug")


def test_remove_by_uid_and_by_name_and_cache_invalidation():
    # ice-learn bug 2: remove was not implemented.
    g = ice.HyperGraph()
    a = g.add("data", ice.Node(), tags="train")
    g.add("data", ice.Node(), tags="val")
    g.add("net", ice.Node())
    before = g.select_egraph("train")
    assert g.remove("train/data") == [a] and a.hypergraph is None
    after = g.select_egraph("train")
    assert after is not before and list(after.nodes) == ["net"]
    g.remove("data")
    assert names(g.select_nodes()) == ["*/net"]
    with pytest.raises(KeyError, match="no node matches 'data'"):
        g.remove("data")


def test_egraph_cache_ignores_tag_order():
    g = ice.HyperGraph()
    g.add("x", ice.Node(), tags="a,b")
    assert g.select_egraph("a,b") is g.select_egraph(["b", "a"])


def test_train_and_eval_sharing_tags_get_the_right_mode():
    # ice-learn bug 4: train and eval tasks with the same tags shared one prepared graph, so the
    # module stayed in train mode (and with grad) during evaluation.
    g = ice.HyperGraph()
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    seen = []
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: (
                seen.append((n.training, n.module.training, torch.is_grad_enabled(), n.module[0].weight.requires_grad))
                or n.module(torch.ones(1, 2))
            ),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1),
        ),
    )
    g.add("l", ice.LossNode(forward=lambda n, x: x["net"].sum()))
    g.exec_tasks(
        [ice.Task(train=True, steps=1), ice.Task(train=False, steps=1), ice.Task(train=True, steps=1)], ice.Launcher()
    )
    assert seen == [(True, True, True, True), (False, False, False, True), (True, True, True, True)]


def test_add_during_a_task_is_refused():
    g = ice.HyperGraph()
    g.add("adder", ice.Node(forward=lambda n, x: n.hypergraph.add("late", ice.Node())))
    with pytest.raises(ice.NodeError, match="cannot add nodes while Task"):
        g.exec_tasks([ice.Task(train=False, steps=1)], ice.Launcher())
