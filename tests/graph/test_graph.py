"""The per-iteration cache and one iteration of an ExecutableGraph (API.md B2)."""

import gc
import weakref

import pytest
import torch

import ice_ignite as ice
from ice_ignite import GraphError, NodeError, NodeNotSelectedError


def run_steps(g, steps=1, train=True, tags="*"):
    g.exec_tasks([ice.Task(train=train, steps=steps, tags=tags)], ice.Launcher())


def test_phase_order_forward_backward_update_and_lazy_cache():
    # ice-learn's mini-spec: n1 = forward +1, then backward +10, then update +100 in a train step.
    g = ice.HyperGraph()
    state = {"v": 0}
    seen = []

    def n1_forward(n, x):
        state["v"] += 1
        return state["v"]

    g.add(
        "n1",
        ice.Node(
            forward=n1_forward,
            backward=lambda n: state.__setitem__("v", state["v"] + 10),
            update=lambda n: state.__setitem__("v", state["v"] + 100),
        ),
    )
    g.add("n2", ice.Node(forward=lambda n, x: seen.append(x["n1"] * 2)))
    run_steps(g, steps=1)
    assert state["v"] == 111
    assert seen == [2]
    run_steps(g, steps=1)
    assert state["v"] == 222 and seen == [2, 224]


def test_a_node_computes_once_per_iteration_and_records_dependencies():
    g = ice.HyperGraph()
    calls = []
    g.add("a", ice.Node(forward=lambda n, x: calls.append("a") or 1))
    g.add("b", ice.Node(forward=lambda n, x: x["a"] + x["a"]))
    g.add("c", ice.Node(forward=lambda n, x: x["b"] + x["a"]))
    run_steps(g, steps=3)
    assert calls == ["a", "a", "a"]  # once per iteration, though pulled five times
    deps = g.select_egraph("*").cache.deps
    assert list(deps["c"]) == ["b", "a"] and list(deps["b"]) == ["a"] and list(deps["a"]) == []


def test_every_selected_node_is_forwarded_in_add_order_even_unused():
    g = ice.HyperGraph()
    order = []
    for name in ["z", "y", "x"]:
        g.add(name, ice.Node(forward=lambda n, x: order.append(n.name)))
    run_steps(g, steps=1, train=False)
    assert order == ["z", "y", "x"]


def test_cycle_is_an_error_naming_the_path_and_tags():
    g = ice.HyperGraph()
    g.add("a", ice.Node(forward=lambda n, x: x["b"]), tags="train")
    g.add("b", ice.Node(forward=lambda n, x: x["c"]), tags="train")
    g.add("c", ice.Node(forward=lambda n, x: x["a"]), tags="train")
    with pytest.raises(GraphError, match=r"cycle .*tags \(train\).*a -> b -> c -> a"):
        run_steps(g, tags="train", train=False)


def test_unselected_reference_names_referrer_path_tags_and_fix():
    g = ice.HyperGraph()
    g.add("acc", ice.Node(forward=lambda n, x: 0), tags="val")
    g.add("loss", ice.Node(forward=lambda n, x: x["net"]), tags="train")
    g.add("net", ice.Node(forward=lambda n, x: x["acc"]))
    with pytest.raises(NodeNotSelectedError) as info:
        run_steps(g, tags="train", train=False)
    msg = str(info.value)
    assert "node '*/net' asked for x['acc']" in msg
    assert "path loss -> net -> acc" in msg and "tags (train)" in msg and "'val/acc'" in msg
    assert isinstance(info.value, KeyError)


def test_misspelt_reference_lists_the_selected_nodes():
    g = ice.HyperGraph()
    g.add("data", ice.Node(forward=lambda n, x: 1))
    g.add("net", ice.Node(forward=lambda n, x: x["dta"]))
    with pytest.raises(NodeNotSelectedError, match="no node is named 'dta' .*selected: data, net"):
        run_steps(g, train=False)


def test_contains_tells_whether_an_optional_node_is_selected():
    g = ice.HyperGraph()
    g.add("opt", ice.Node(forward=lambda n, x: 5), tags="b")
    got = []
    g.add("user", ice.Node(forward=lambda n, x: got.append(x["opt"] if "opt" in x else None)))  # noqa: SIM401 (not a dict)
    run_steps(g, tags="a", train=False)
    run_steps(g, tags="a,b", train=False)
    assert got == [None, 5]


def test_forward_error_names_node_and_phase_and_keeps_cause():
    g = ice.HyperGraph()

    def boom(n, x):
        raise ValueError("bad input")

    g.add("a", ice.Node(forward=boom))
    g.add("b", ice.Node(forward=lambda n, x: x["a"]))
    with pytest.raises(NodeError, match=r"node '\*/a' raised ValueError in forward: bad input") as info:
        run_steps(g, train=False)
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.uid == "*/a" and info.value.phase == "forward"


def test_hook_error_names_the_phase():
    g = ice.HyperGraph()
    g.add("a", ice.Node(epoch_end=lambda n: 1 / 0))
    with pytest.raises(NodeError, match=r"'\*/a' raised ZeroDivisionError in epoch_end") as info:
        run_steps(g, train=False)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


class _Big:
    pass


def test_cache_releases_outputs_before_the_next_iteration():
    refs = []
    alive_at_forward = []

    def forward(n, x):
        gc.collect()
        alive_at_forward.append(sum(r() is not None for r in refs))
        obj = _Big()
        refs.append(weakref.ref(obj))
        return obj

    g = ice.HyperGraph()
    g.add("a", ice.Node(forward=forward))
    g.add("b", ice.Node(forward=lambda n, x: [x["a"]]))
    run_steps(g, steps=4, train=False)
    assert alive_at_forward == [0, 0, 0, 0]


def test_train_iteration_sums_weighted_losses_with_one_backward():
    torch.manual_seed(0)
    w = torch.nn.Linear(2, 1, bias=False)
    x = torch.randn(4, 2)
    g = ice.HyperGraph()
    g.add("net", ice.ModuleNode(w, forward=lambda n, c: n.module(x), optimizers=ice.Optimizer(torch.optim.SGD, lr=1.0)))
    g.add("l1", ice.LossNode(forward=lambda n, c: c["net"].sum(), weight=2.0))
    g.add("l2", ice.LossNode(forward=lambda n, c: (c["net"] ** 2).mean(), weight=0.5))
    backward_calls = []
    real_backward = torch.Tensor.backward

    def counting_backward(self, *args, **kwargs):
        backward_calls.append(1)
        return real_backward(self, *args, **kwargs)

    before = w.weight.detach().clone()
    p = before.clone().requires_grad_(True)
    total = 2.0 * (x @ p.T).sum() + 0.5 * ((x @ p.T) ** 2).mean()
    (expected_grad,) = torch.autograd.grad(total, [p])
    torch.Tensor.backward = counting_backward
    try:
        run_steps(g, steps=1)
    finally:
        torch.Tensor.backward = real_backward
    assert len(backward_calls) == 1
    torch.testing.assert_close(w.weight.detach(), before - expected_grad)


def test_train_loss_without_trainable_parameters_is_a_clear_error():
    g = ice.HyperGraph()
    g.add("net", ice.ModuleNode(torch.nn.Linear(2, 1), forward=lambda n, x: n.module(torch.ones(1, 2))))
    g.add("l", ice.LossNode(forward=lambda n, x: x["net"].sum()))
    with pytest.raises(GraphError, match="do not require grad .*no ModuleNode of this task has optimizers"):
        run_steps(g, steps=1)


def test_a_detached_loss_of_a_trained_module_says_it_depends_on_no_trainable_parameter():
    g = ice.HyperGraph()
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(2, 1),
            forward=lambda n, x: n.module(torch.ones(1, 2)),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1),
        ),
    )
    g.add("l", ice.LossNode(forward=lambda n, x: x["net"].detach().sum()))
    with pytest.raises(GraphError, match=r"do not depend on any trainable parameter \(of '\*/net'\).*detach") as e:
        run_steps(g, steps=1)
    assert "give a ModuleNode optimizers" not in str(e.value)


def chain(n, first_consumer=True):
    """n ModuleNodes, each pulling the next (added consumer first), and a loss on the first."""
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("loss", ice.LossNode(forward=lambda node, x: x["m0"].pow(2).mean()))
    for i in range(n):
        pull = (
            (lambda node, x: node.module(torch.ones(1, 2)))
            if i == n - 1
            else (lambda node, x, j=i + 1: node.module(x[f"m{j}"]))
        )
        g.add(
            f"m{i}",
            ice.ModuleNode(torch.nn.Linear(2, 2), forward=pull, optimizers=ice.Optimizer(torch.optim.SGD, lr=0.01)),
        )
    return g


def test_a_300_node_chain_added_consumer_first_evaluates_and_restores_the_recursion_limit():
    import sys

    limit = sys.getrecursionlimit()
    g = chain(300)
    run_steps(g, steps=2)  # was a RecursionError blamed on whichever node it hit
    assert g.global_counters.steps.train == 2
    assert g["*/m299"].module.weight.grad is not None  # the far end of the chain got its gradient
    assert sys.getrecursionlimit() == limit


def test_a_chain_deeper_than_the_limit_is_a_graph_error_naming_the_depth_and_the_chain():
    from ice_ignite.graph.graph import MAX_PULL_DEPTH

    g = ice.HyperGraph()
    n = MAX_PULL_DEPTH + 1
    for i in range(n):
        g.add(
            f"n{i}", ice.Node(forward=(lambda node, x: 1) if i == n - 1 else (lambda node, x, j=i + 1: x[f"n{j}"] + 1))
        )
    with pytest.raises(
        GraphError,
        match=rf"more than {MAX_PULL_DEPTH} nodes deep: pulling 'n{n - 1}' makes a chain "
        rf"of {n} nodes.*n0 -> n1 -> n2 -> \.\.\. \({n - 6} more\).*add producers",
    ):
        run_steps(g, train=False)
