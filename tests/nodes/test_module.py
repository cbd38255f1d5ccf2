"""ModuleNode: regex parameter groups, freezing by omission, shared modules (API.md B6)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import regression_set
from module_child import TwoHeads  # the two-process tests train the same model

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
    node = ice.ModuleNode(
        net,
        forward=fwd,
        optimizers={
            (r"0\.weight", r"0\.bias"): ice.Optimizer(torch.optim.SGD, lr=0.1),
            r"2\..*": ice.Optimizer(torch.optim.Adam, lr=1e-3),
        },
    )
    assert set(map(type, node.optimizers.values())) == {torch.optim.SGD, torch.optim.Adam}
    assert len(node.optimizers[(r"0\.weight", r"0\.bias")].param_groups[0]["params"]) == 2


def test_parameter_matched_twice_is_an_error_naming_it():
    with pytest.raises(
        ValueError, match=r"parameter '2.weight' .* matched by pattern .* and by pattern '.\*weight': give each"
    ):
        ice.ModuleNode(
            two_layer(),
            forward=fwd,
            optimizers={
                r"2\..*": ice.Optimizer(torch.optim.SGD, lr=0.1),
                r".*weight": ice.Optimizer(torch.optim.SGD, lr=0.1),
            },
        )


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"module": "net"}, TypeError, "needs a torch.nn.Module"),
        ({"optimizers": torch.optim.SGD}, TypeError, "must be an ice.Optimizer or a dict"),
        ({"optimizers": {".*": torch.optim.SGD}}, TypeError, "must be an ice.Optimizer, got type"),
        ({"optimizers": {"(": ice.Optimizer(torch.optim.SGD, lr=0.1)}}, ValueError, "not a valid regex"),
        ({"optimizers": ice.Optimizer(torch.optim.SGD, lr=-1.0)}, ValueError, "building SGD"),
        ({"forward": None}, TypeError, "needs a forward"),
        ({"find_unused_parameters": "yes"}, TypeError, "find_unused_parameters must be True or False"),
    ],
)
def test_bad_arguments(kwargs, error, words):
    args = {"module": two_layer(), "forward": fwd}
    args.update(kwargs)
    with pytest.raises(error, match=words):
        ice.ModuleNode(**args)


def test_optimizers_none_freezes_the_module_in_its_tasks():
    net = two_layer()
    first = [p.clone() for p in net.parameters()]
    head = ice.ModuleNode(
        torch.nn.Linear(1, 1),
        forward=lambda n, x: n.module(x["frozen"]),
        optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1),
    )
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
    body_user = ice.ModuleNode(
        net,
        forward=lambda n, x: n.module[0](torch.randn(2, 3)),
        optimizers={r"0\..*": ice.Optimizer(torch.optim.SGD, lr=0.1)},
    )
    g = ice.HyperGraph()
    g.add("net", head_only)
    g.add("body", body_user, tags="both")
    seen = []
    g.add("probe", ice.Node(forward=lambda n, x: seen.append([p.requires_grad for p in net.parameters()])), tags="both")
    g.add(
        "loss", ice.LossNode(forward=lambda n, c: c["net"].sum() + c["body"].sum() if "body" in c else c["net"].sum())
    )
    g.exec_tasks([ice.Task(train=True, steps=1, tags="both")], ice.Launcher())
    assert seen == [[True, True, True, True]]


def test_weight_init_fn_runs_under_no_grad_at_construction():
    net = two_layer()
    ice.ModuleNode(net, forward=fwd, weight_init_fn=lambda m: m[0].weight.fill_(0.5))
    assert torch.all(net[0].weight == 0.5) and net[0].weight.grad_fn is None


def test_lr_scheduler_steps_after_every_optimizer_step_and_state_round_trips():
    net = two_layer()
    spec = ice.Optimizer(
        torch.optim.SGD, lr=1.0, lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    )
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


# -- options that must not vanish into resources (issue 14, item 4) ------------------------------------
@pytest.mark.parametrize(
    "keyword, meant",
    [
        ("find_unused_parameter", "find_unused_parameters"),
        ("static_graf", "static_graph"),
        ("optimizer", "optimizers"),
        ("unused_parameter", "unused_parameters"),
        ("sync_bn", "sync_batchnorm"),
        ("bucket_cap_m", "the DistributedDataParallel option bucket_cap_mb"),
    ],
)
def test_a_misspelt_option_is_an_error_naming_the_option_meant(keyword, meant):
    with pytest.raises(TypeError, match=rf"ModuleNode\(Sequential\) got {keyword}=True: did you mean {meant}\?"):
        ice.ModuleNode(two_layer(), forward=fwd, **{keyword: True})


@pytest.mark.parametrize("keyword, value", [("bucket_cap_mb", 25), ("gradient_as_bucket_view", True)])
def test_a_ddp_option_as_a_plain_keyword_says_to_use_ddp_kwargs(keyword, value):
    with pytest.raises(
        TypeError,
        match=rf"got {keyword}={value}, a DistributedDataParallel option: DDP options go "
        rf"in ddp_kwargs, e.g. ddp_kwargs={{'{keyword}': {value}}}",
    ):
        ice.ModuleNode(two_layer(), forward=fwd, **{keyword: value})


@pytest.mark.parametrize(
    "ddp_kwargs, words",
    [
        (
            {"bucket_cap": 25},
            r"'bucket_cap', which is not a DistributedDataParallel option: did you mean 'bucket_cap_mb'\? "
            r"valid options are .*gradient_as_bucket_view",
        ),
        ({"find_unused_parameters": True}, r"sets 'find_unused_parameters': pass it to the ModuleNode itself"),
        ({"device_ids": [0]}, r"sets 'device_ids': ice_ignite sets it to the process's device"),
        ([("bucket_cap_mb", 25)], r"must be a dict of DistributedDataParallel options by name"),
    ],
)
def test_ddp_kwargs_are_checked_against_the_signature_of_distributed_data_parallel(ddp_kwargs, words):
    with pytest.raises(TypeError, match=words):
        ice.ModuleNode(two_layer(), forward=fwd, ddp_kwargs=ddp_kwargs)


def test_valid_ddp_kwargs_are_kept_and_resources_far_from_any_option_stay_resources():
    node = ice.ModuleNode(
        two_layer(),
        forward=fwd,
        ddp_kwargs={"bucket_cap_mb": 1, "gradient_as_bucket_view": True},
        find_unused_parameters=True,
        static_graph=False,
        dim=128,
        model="resnet",
        scale=2.0,
    )
    assert node.ddp_kwargs == {"bucket_cap_mb": 1, "gradient_as_bucket_view": True}
    assert (node.dim, node.model, node.scale) == (128, "resnet", 2.0)


# -- sync_batchnorm (issue 14, item 5; the multi-process side is in tests/distributed/test_module_distributed.py) ----------
def test_sync_batchnorm_changes_nothing_in_one_process(recwarn):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    node = ice.ModuleNode(net, forward=fwd, optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1), sync_batchnorm=True)
    assert node.sync_batchnorm is True
    train_one_step([("net", node, "*")], steps=2)
    assert type(net[1]) is torch.nn.BatchNorm1d and node.module is net
    assert net[1].num_batches_tracked.item() == 2
    assert not [w for w in recwarn if "BatchNorm" in str(w.message)]
    with pytest.raises(TypeError, match="sync_batchnorm must be True or False"):
        ice.ModuleNode(net, forward=fwd, sync_batchnorm="yes")


# -- unused_parameters="skip" (issue 14, item 10) ----------------------------------------------------------


def two_task_graph(policy, optimizers=None):
    """Task "b" trains trunk and head 2, task "a" trunk and head 1: one ModuleNode, one module."""
    torch.manual_seed(0)
    net = TwoHeads()
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(regression_set(16), batch_size=4))
    g.add("head", ice.Node(forward=lambda n, x: 1), tags="a")
    g.add("head", ice.Node(forward=lambda n, x: 2), tags="b")
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: n.module(x["data"][0], x["head"]),
            unused_parameters=policy,
            optimizers=optimizers or ice.Optimizer(torch.optim.Adam, lr=0.1, weight_decay=0.1),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    return g, net


def adam_state(node, param):
    (opt,) = node.optimizers.values()
    return {k: v.clone() for k, v in opt.state[param].items()}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_skip_leaves_a_head_and_its_optimizer_state_untouched_by_the_other_tasks_steps(accumulate):
    g, net = two_task_graph("skip")
    g.set_gradient_accumulate(accumulate)
    g.exec_tasks([ice.Task(train=True, steps=2, tags="b")], ice.Launcher())
    node = g["*/net"]
    head2, state2 = net.head2.weight.detach().clone(), adam_state(node, net.head2.weight)
    head1, trunk = net.head1.weight.detach().clone(), net.trunk.weight.detach().clone()
    assert state2["step"].item() == 2
    g.exec_tasks([ice.Task(train=True, steps=3, tags="a")], ice.Launcher())
    assert torch.equal(net.head2.weight, head2)  # no momentum, no weight decay: the optimizer skipped it
    after = adam_state(node, net.head2.weight)
    assert after.keys() == state2.keys() and all(torch.equal(after[k], state2[k]) for k in after)
    assert net.head2.weight.grad is None  # dropped (set_to_none) at the cycle's start, never zero-filled
    assert not torch.equal(net.head1.weight, head1) and not torch.equal(net.trunk.weight, trunk)
    assert adam_state(node, net.head1.weight)["step"].item() == 3
    assert g.global_counters.steps.train == 5


def test_zero_moves_the_unused_head_by_momentum_and_weight_decay_where_skip_does_not():
    heads = {}
    for policy in ("zero", "skip"):
        g, net = two_task_graph(policy)
        g.exec_tasks([ice.Task(train=True, steps=2, tags="b")], ice.Launcher())
        state2 = adam_state(g["*/net"], net.head2.weight)
        g.exec_tasks([ice.Task(train=True, steps=3, tags="a")], ice.Launcher())
        heads[policy] = net.head2.weight.detach().clone()
        after = adam_state(g["*/net"], net.head2.weight)
        if policy == "zero":
            assert after["step"].item() == 5 and not torch.equal(after["exp_avg"], state2["exp_avg"])
            assert torch.equal(net.head2.weight.grad, torch.zeros_like(net.head2.weight))
        else:
            assert after["step"].item() == 2 and torch.equal(after["exp_avg"], state2["exp_avg"])
    assert not torch.equal(heads["zero"], heads["skip"])  # same task "b" before: task "a" moved it under "zero" only


def test_skip_with_a_grad_scaler_and_an_optimizer_per_head_steps_the_heads_scheduler_like_the_others():
    def spec():
        return ice.Optimizer(
            torch.optim.SGD,
            lr=0.1,
            momentum=0.9,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
        )

    g, net = two_task_graph("skip", {r"trunk\..*": spec(), r"head1\..*": spec(), r"head2\..*": spec()})
    g.init_grad_scaler(torch.amp.GradScaler("cpu", init_scale=4.0))
    head2 = net.head2.weight.detach().clone()
    g.exec_tasks([ice.Task(train=True, steps=3, tags="a")], ice.Launcher())  # head 2's optimizer sees no gradient
    assert torch.equal(net.head2.weight, head2) and net.head2.weight.grad is None
    assert not g["*/net"].optimizers[r"head2\..*"].state  # no momentum buffer
    assert g["*/net"].learning_rates() == {r"trunk\..*": [0.0125], r"head1\..*": [0.0125], r"head2\..*": [0.0125]}
