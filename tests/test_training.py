"""Training mechanics: mixed precision, gradient accumulation, clipping, schedulers, unused
parameters, non-finite losses."""

import pytest
import torch
import torch.nn.functional as F
from conftest import regression_set
from ignite.engine import Events
from ignite.handlers import create_lr_scheduler_with_warmup

import ice_ignite as ice
from ice_ignite import GraphError, NonFiniteLossError


def graph(batch_size=4, n=32, shuffle=True, lr=0.1, spec=None, net=None, **loss_kwargs):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(regression_set(n), batch_size=batch_size, shuffle=shuffle))
    net = net or torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n_, x: n_.module(x["data"][0]),
            optimizers=spec or ice.Optimizer(torch.optim.SGD, lr=lr, momentum=0.9),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n_, x: F.mse_loss(x["net"], x["data"][1]), **loss_kwargs))
    return g


def params(g):
    return [p.detach().clone() for p in g["*/net"].module.parameters()]


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


# -- mixed precision --------------------------------------------------------------------------------
def test_bf16_autocast_wraps_module_and_loss_forwards_only():
    g = graph()
    g.init_autocast()  # CPU: bfloat16
    assert g.is_autocast_enabled() and not g.is_grad_scaler_enabled()
    seen = {}
    g.add(
        "probe",
        ice.Node(
            forward=lambda n, x: seen.update(
                net=x["net"].dtype, plain=torch.is_autocast_enabled("cpu"), loss_in=x["mse"].dtype
            )
        ),
    )
    g.remove("*/mse")
    g.add(
        "mse",
        ice.LossNode(
            forward=lambda n, x: (
                seen.update(in_loss=torch.is_autocast_enabled("cpu")) or F.mse_loss(x["net"].float(), x["data"][1])
            )
        ),
    )
    g.exec_tasks([ice.Task(train=True, steps=2)], ice.Launcher())
    assert seen == {"net": torch.bfloat16, "plain": False, "loss_in": torch.float32, "in_loss": True}


def test_a_grad_scaler_is_enabled_by_default_only_for_float16():
    g = ice.HyperGraph()
    g.init_autocast(autocast_dtype=torch.float16)
    assert g.is_grad_scaler_enabled()
    g.init_autocast(autocast_dtype=torch.bfloat16)
    assert not g.is_grad_scaler_enabled()
    g.init_grad_scaler(True)
    assert g.is_grad_scaler_enabled()
    with pytest.raises(ValueError, match="autocast_dtype must be"):
        g.init_autocast(autocast_dtype=torch.int8)


def test_a_grad_scaler_that_meets_an_inf_skips_the_step_and_backs_off():
    g = graph()
    g.init_grad_scaler(True, init_scale=2.0**127)  # the scaled loss overflows float32
    before = params(g)
    g.exec_tasks([ice.Task(train=True, steps=1)], ice.Launcher())
    assert max_diff(params(g), before) == 0  # the step was skipped
    assert g.grad_scaler.get_scale() == 2.0**126
    g.exec_tasks([ice.Task(train=True, steps=1)], ice.Launcher())
    assert max_diff(params(g), before) > 0 and g.grad_scaler.get_scale() == 2.0**126


def test_the_scaler_updates_on_optimizer_steps_only_and_is_checkpointed(tmp_path):
    g = graph()
    g.set_gradient_accumulate(3)
    g.init_grad_scaler(True, init_scale=4.0, growth_interval=1)  # doubles at every update
    g.run([ice.Task(train=True, steps=2), ice.SaveCheckpointTask()], devices="cpu", out_dir=tmp_path, run_id="s")
    assert g.grad_scaler.get_scale() == 16.0  # 2 updates in 6 iterations
    other = graph()
    other.set_gradient_accumulate(3)  # the checkpoint's (another would change training: ResumeTaskFailed)
    other.init_grad_scaler(True, init_scale=4.0, growth_interval=1)
    other.run(
        [ice.Task(train=True, steps=2), ice.SaveCheckpointTask()],
        devices="cpu",
        out_dir=tmp_path,
        run_id="s",
        resume_from="auto",
    )
    assert other.grad_scaler.get_scale() == 16.0


def test_clipping_happens_after_unscaling():
    for scaler in (False, True):
        g = graph(spec=ice.Optimizer(torch.optim.SGD, lr=1.0, grad_clip_norm=0.01))
        g["*/mse"].weight = 1000.0  # large gradients
        if scaler:
            g.init_grad_scaler(True, init_scale=2.0**10)
        before = params(g)
        g.exec_tasks([ice.Task(train=True, steps=1)], ice.Launcher())
        step = torch.cat([(a - b).flatten() for a, b in zip(params(g), before)]).norm().item()
        assert step == pytest.approx(0.01, rel=1e-4), scaler  # not 0.01 / 2**10


# -- gradient accumulation --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["epochs", "steps"])
def test_accumulating_k_batches_of_b_equals_batches_of_k_times_b(mode):
    sgd = ice.Optimizer(torch.optim.SGD, lr=0.1)
    small = graph(batch_size=2, n=36, spec=sgd)
    small.set_gradient_accumulate(4)
    big = graph(batch_size=8, n=36, spec=sgd)
    amount = {"epochs": 2} if mode == "epochs" else {"steps": 4}
    small.exec_tasks([ice.Task(train=True, **amount)], ice.Launcher())
    big.exec_tasks([ice.Task(train=True, **amount)], ice.Launcher())
    assert max_diff(params(small), params(big)) <= 1e-6
    # epochs: 18 micro-batches an epoch, cycles of 4, 4, 4, 4 and a partial one of 2 that still steps
    expected = {"epochs": 2 * 5, "steps": 4}[mode]
    assert small.global_counters.steps.train == big.global_counters.steps.train == expected


# -- schedulers ------------------------------------------------------------------------------------
def test_torch_schedulers_step_on_optimizer_steps_and_lrs_are_visible():
    spec = ice.Optimizer(
        torch.optim.SGD, lr=1.0, lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    )
    g = graph(spec=spec)
    g.set_gradient_accumulate(2)
    lrs = []
    g.add("rec", ice.Node(update=lambda n: lrs.append(n.hypergraph.learning_rates()["*/net/.*"][0])))
    g.exec_tasks([ice.Task(train=True, steps=3)], ice.Launcher())
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25, 0.125]  # halves after each step, not each iteration


def test_ignite_param_scheduler_with_warmup():
    def warmup(opt):
        return create_lr_scheduler_with_warmup(
            torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5),
            warmup_start_value=0.0,
            warmup_end_value=0.4,
            warmup_duration=3,
        )

    g = graph(spec=ice.Optimizer(torch.optim.SGD, lr=0.4, lr_scheduler=warmup))
    used = []
    g.add("rec", ice.Node(forward=lambda n, x: used.append(n.hypergraph.learning_rates()["*/net/.*"][0])))
    g.exec_tasks([ice.Task(train=True, steps=6)], ice.Launcher())
    simulated = [None] * 6
    create_lr_scheduler_with_warmup(
        torch.optim.lr_scheduler.ExponentialLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4), 0.5),
        warmup_start_value=0.0,
        warmup_end_value=0.4,
        warmup_duration=3,
        output_simulated_values=simulated,
    )
    expected = [v for _, v in simulated]
    assert used == pytest.approx(expected)
    assert used[:3] == pytest.approx([0.0, 0.2, 0.4])


# -- unused parameters ---------------------------------------------------------------------------------
class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.used = torch.nn.Linear(3, 1)
        self.unused = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.used(x)


def test_an_unused_trainable_parameter_is_an_error_naming_it_and_its_node():
    g = graph(net=Branchy())
    with pytest.raises(
        GraphError,
        match=r"ModuleNode '\*/net': trainable parameter\(s\) got no gradient in optimizer "
        r"step 1: unused.weight, unused.bias\. .*unused_parameters='zero'",
    ):
        g.exec_tasks([ice.Task(train=True, steps=1)], ice.Launcher())


def test_lenient_mode_gives_unused_parameters_a_zero_gradient():
    torch.manual_seed(0)
    net = Branchy()
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(regression_set(8), batch_size=4))
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: n.module(x["data"][0]),
            unused_parameters="zero",
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1, weight_decay=0.5),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    before = net.unused.weight.detach().clone()
    g.exec_tasks([ice.Task(train=True, steps=1)], ice.Launcher())
    assert torch.equal(net.unused.weight.grad, torch.zeros_like(before))
    torch.testing.assert_close(net.unused.weight.detach(), before * (1 - 0.1 * 0.5))  # weight decay applied
    with pytest.raises(ValueError, match="unused_parameters must be 'error', 'zero' or 'skip'"):
        ice.ModuleNode(net, forward=lambda n, x: 0, unused_parameters="warn")


# -- non-finite losses ---------------------------------------------------------------------------------
def poisoned(policy, at_iteration=1):
    g = graph(shuffle=False)
    g.set_nonfinite_policy(policy)
    g.remove("*/mse")
    g.add(
        "mse",
        ice.LossNode(
            forward=lambda n, x: (
                F.mse_loss(x["net"], x["data"][1]) * (float("nan") if n.epoch_steps == at_iteration else 1.0)
            )
        ),
    )
    return g


def test_a_non_finite_loss_raises_naming_the_loss_and_the_steps():
    g = poisoned("raise")  # found at the epoch end: no host read per iteration
    with pytest.raises(
        NonFiniteLossError,
        match=r"in \*/mse of Task\(train=True, steps=4, tags='\*'\), in an optimizer "
        r"step after step 0 and up to step 4\. Lower the",
    ):
        g.exec_tasks([ice.Task(train=True, steps=4)], ice.Launcher())


def test_checking_every_step_pins_the_step_and_stops_it():
    g = poisoned("raise")  # the loss of iteration 2 (step 2) is NaN
    g.set_nonfinite_policy("raise", check_every=1)
    snapshots = []
    g.add("rec", ice.Node(update=lambda n: snapshots.append(params(n.hypergraph))))
    with pytest.raises(NonFiniteLossError, match="after step 1 and up to step 2"):
        g.exec_tasks([ice.Task(train=True, steps=4)], ice.Launcher())
    assert len(snapshots) == 1 and max_diff(params(g), snapshots[0]) == 0  # step 2 was not applied


def test_skip_policy_skips_the_step_and_goes_on():
    g = poisoned("skip")
    snapshots = []
    g.add("rec", ice.Node(update=lambda n: snapshots.append(params(n.hypergraph))))
    g.exec_tasks([ice.Task(train=True, steps=4)], ice.Launcher())
    assert g.skipped_steps == 1 and g.global_counters.steps.train == 3  # 4 iterations, one skipped step
    assert max_diff(snapshots[1], snapshots[0]) == 0  # iteration 2 did not step
    assert max_diff(snapshots[2], snapshots[1]) > 0


def test_stop_policy_checkpoints_and_ends_the_run_cleanly(tmp_path):
    g = poisoned("stop")
    after = []
    g.run([ice.Task(train=True, steps=4), lambda: after.append(1)], devices="cpu", out_dir=tmp_path, run_id="r")
    assert after == [] and g.global_counters.steps.train == 1
    [ckpt] = (tmp_path / "r" / "ckpts").glob("ckpt-*.pt")
    state = torch.load(ckpt, weights_only=True)
    assert state["progress"]["task"]["iteration"] == 2 and state["counters"]["steps"]["train"] == 1


def test_ignore_policy_does_not_check():
    g = poisoned("ignore")
    g.exec_tasks([ice.Task(train=True, steps=3)], ice.Launcher())
    assert all(torch.isnan(p).all() for p in params(g))
    with pytest.raises(ValueError, match="must be 'raise', 'skip', 'stop' or 'ignore'"):
        g.set_nonfinite_policy("warn")


def test_a_cycle_cut_short_does_not_carry_its_non_finite_loss_into_the_next_pass():
    g = graph(shuffle=False)
    g.set_nonfinite_policy("skip")
    g.set_gradient_accumulate(2)
    poison = [True]  # the first loss computed is NaN, no other
    g.remove("*/mse")
    g.add(
        "mse",
        ice.LossNode(
            forward=lambda n, x: F.mse_loss(x["net"], x["data"][1]) * (float("nan") if poison and poison.pop() else 1.0)
        ),
    )
    task = ice.Task(train=True, epochs=1)
    stop = [True]

    def cut(engine):
        if stop and stop.pop():
            raise ice.StopTask()

    task.engine.add_event_handler(Events.ITERATION_COMPLETED, cut)
    g.exec_tasks([task], ice.Launcher())  # stopped after the NaN micro-batch, mid-cycle
    assert g.global_counters.steps.train == 0 and g.skipped_steps == 0
    g.exec_tasks([task], ice.Launcher())  # a fresh pass: fresh gradients, every cycle finite
    assert g.global_counters.steps.train == 4 and g.skipped_steps == 0
