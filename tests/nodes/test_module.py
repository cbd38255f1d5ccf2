"""ModuleNode: regex parameter groups, freezing by omission, shared modules (API.md B6)."""

import pytest
import torch
import torch.nn.functional as F

import ice_ignite as ice


def two_layer():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))


def train_one_step(module_nodes, tags="*", steps=1):
    g = ice.HyperGraph()
    y = torch.randn(8, 1)
    for name, node, node_tags in module_nodes:
        g.add(name, node, tags=node_tags)
    g.add("loss", ice.LossNode(forward=lambda n, c: F.mse_loss(c["net"], y)))
    g.exec_tasks([ice.Task(train=True, steps=steps, tags=tags)], ice.Launcher())
    return g


def fwd(n, x):
    return n.module(torch.randn(8, 3))


def test_patterns_fullmatch_and_unmatched_parameters_are_frozen():
    net = two_layer()
    first = {k: v.clone() for k, v in net.state_dict().items()}
    node = ice.ModuleNode(net, forward=fwd, optimizers={r"2\..*": ice.Optimizer(torch.optim.SGD, lr=0.1)})
    assert [n for n, _ in node.named_trainable_parameters()] == ["2.weight", "2.bias"]
    train_one_step([("net", node, "*")])
    after = net.state_dict()
    assert torch.equal(after["0.weight"], first["0.weight"]) and torch.equal(after["0.bias"], first["0.bias"])
    assert not torch.equal(after["2.weight"], first["2.weight"])
    assert net[0].weight.grad is None and not net[0].weight.requires_grad


def test_fullmatch_not_prefix_match():
    # "0" would prefix-match "0.weight" under re.match; re.fullmatch needs the whole name.
    with pytest.raises(ValueError, match="pattern '0' of ModuleNode\\(Sequential\\) matches no parameter"):
        ice.ModuleNode(two_layer(), forward=fwd, optimizers={"0": ice.Optimizer(torch.optim.SGD, lr=0.1)})


def test_several_optimizers_by_pattern_and_tuple_keys():
    net = two_layer()
    node = ice.ModuleNode(net, forward=fwd, optimizers={
        (r"0\.weight", r"0\.bias"): ice.Optimizer(torch.optim.SGD, lr=0.1),
        r"2\..*": ice.Optimizer(torch.optim.Adam, lr=1e-3)})
    assert set(map(type, node.optimizers.values())) == {torch.optim.SGD, torch.optim.Adam}
    assert len(node.optimizers[(r"0\.weight", r"0\.bias")].param_groups[0]["params"]) == 2


def test_parameter_matched_twice_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"parameter '2.weight' .* matched by pattern .* and by pattern '.\*weight': give each"):
        ice.ModuleNode(two_layer(), forward=fwd, optimizers={r"2\..*": ice.Optimizer(torch.optim.SGD, lr=0.1),
                                                             r".*weight": ice.Optimizer(torch.optim.SGD, lr=0.1)})


@pytest.mark.parametrize(
    "kwargs, error, words",
    [({"module": "net"}, TypeError, "needs a torch.nn.Module"),
     ({"optimizers": torch.optim.SGD}, TypeError, "must be an ice.Optimizer or a dict"),
     ({"optimizers": {".*": torch.optim.SGD}}, TypeError, "must be an ice.Optimizer, got type"),
     ({"optimizers": {"(": ice.Optimizer(torch.optim.SGD, lr=0.1)}}, ValueError, "not a valid regex"),
     ({"optimizers": ice.Optimizer(torch.optim.SGD, lr=-1.0)}, ValueError, "building SGD"),
     ({"forward": None}, TypeError, "needs a forward"),
     ({"find_unused_parameters": "yes"}, TypeError, "find_unused_parameters must be True or False")],
)
def test_bad_arguments(kwargs, error, words):
    args = dict(module=two_layer(), forward=fwd)
    args.update(kwargs)
    with pytest.raises(error, match=words):
        ice.ModuleNode(**args)


def test_optimizers_none_freezes_the_module_in_its_tasks():
    net = two_layer()
    first = [p.clone() for p in net.parameters()]
    head = ice.ModuleNode(torch.nn.Linear(1, 1), forward=lambda n, x: n.module(x["frozen"]),
                          optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1))
    g = ice.HyperGraph()
    g.add("frozen", ice.ModuleNode(net, forward=fwd))
    g.add("net", head)
    y = torch.randn(8, 1)
    g.add("loss", ice.LossNode(forward=lambda n, c: F.mse_loss(c["net"], y)))
    g.exec_tasks([ice.Task(train=True, steps=2)], ice.Launcher())
    assert all(torch.equal(a, b) for a, b in zip(first, net.parameters()))
    assert all(not p.requires_grad for p in net.parameters())


def test_shared_module_parameter_is_trainable_if_any_node_of_the_task_matches_it():
    net = two_layer()
    head_only = ice.ModuleNode(net, forward=fwd, optimizers={r"2\..*": ice.Optimizer(torch.optim.SGD, lr=0.1)})
    body_user = ice.ModuleNode(net, forward=lambda n, x: n.module[0](torch.randn(2, 3)),
                               optimizers={r"0\..*": ice.Optimizer(torch.optim.SGD, lr=0.1)})
    g = ice.HyperGraph()
    g.add("net", head_only)
    g.add("body", body_user, tags="both")
    seen = []
    g.add("probe", ice.Node(forward=lambda n, x: seen.append([p.requires_grad for p in net.parameters()])), tags="both")
    g.add("loss", ice.LossNode(forward=lambda n, c: c["net"].sum() + c["body"].sum() if "body" in c else c["net"].sum()))
    g.exec_tasks([ice.Task(train=True, steps=1, tags="both")], ice.Launcher())
    assert seen == [[True, True, True, True]]


def test_weight_init_fn_runs_under_no_grad_at_construction():
    net = two_layer()
    ice.ModuleNode(net, forward=fwd, weight_init_fn=lambda m: m[0].weight.fill_(0.5))
    assert torch.all(net[0].weight == 0.5) and net[0].weight.grad_fn is None


def test_lr_scheduler_steps_after_every_optimizer_step_and_state_round_trips():
    net = two_layer()
    spec = ice.Optimizer(torch.optim.SGD, lr=1.0,
                         lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1))
    node = ice.ModuleNode(net, forward=fwd, optimizers=spec)
    train_one_step([("net", node, "*")], steps=3)
    assert node.optimizers[".*"].param_groups[0]["lr"] == pytest.approx(0.1)
    state = node.state_dict()
    other = ice.ModuleNode(two_layer(), forward=fwd, optimizers=spec)
    other.load_state_dict(state)
    assert other.lr_schedulers[".*"].last_epoch == 3
    assert all(torch.equal(a, b) for a, b in zip(other.module.parameters(), net.parameters()))


def test_load_state_dict_reports_missing_optimizer_state():
    node = ice.ModuleNode(two_layer(), forward=fwd, optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1))
    state = node.state_dict()
    state["optimizers"] = {}
    with pytest.raises(KeyError, match="no state for optimizer '.\\*'"):
        node.load_state_dict(state, strict=True)
    with pytest.warns(UserWarning, match="no state for optimizer"):
        node.load_state_dict(state, strict=False)
