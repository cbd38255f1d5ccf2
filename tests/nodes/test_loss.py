"""LossNode: weighted single backward, and reporting like ignite's Loss (API.md B2, B5)."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import regression_set
from ignite.engine import Engine
from ignite.metrics import Loss

import ice_ignite as ice
from ice_ignite import GraphError


def eval_graph(data, batch_size):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(data, batch_size=batch_size))
    g.add("net", ice.ModuleNode(torch.nn.Linear(3, 1), forward=lambda n, x: n.module(x["data"][0])))
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    return g


def test_epoch_metric_equals_ignites_loss_weighted_by_batch_size():
    data = regression_set(n=10)  # batches of 4, 4 and 2: a plain mean of batch losses would differ
    g = eval_graph(data, batch_size=4)
    task = ice.Task(train=False, epochs=1)
    g.exec_tasks([task], ice.Launcher())
    net = g["*/net"].module
    reference = Engine(lambda e, batch: (net(batch[0]), batch[1]))
    Loss(F.mse_loss).attach(reference, "mse")
    state = reference.run(torch.utils.data.DataLoader(data, batch_size=4))
    assert task.engine.state.metrics["mse"] == pytest.approx(state.metrics["mse"], rel=1e-6)
    per_batch = [F.mse_loss(net(x), y).item() for x, y in torch.utils.data.DataLoader(data, batch_size=4)]
    assert task.engine.state.metrics["mse"] != pytest.approx(sum(per_batch) / 3, rel=1e-4)


def test_batch_size_comes_from_the_first_dataset_the_loss_depends_on():
    g = ice.HyperGraph()
    g.add("other", ice.DatasetNode(torch.utils.data.TensorDataset(torch.ones(30, 1)), batch_size=10))
    g.add("data", ice.DatasetNode(torch.utils.data.TensorDataset(torch.arange(6.0)), batch_size=4))
    g.add("loss", ice.LossNode(forward=lambda n, x: x["data"][0].sum()))
    task = ice.Task(train=False, epochs=1)
    g.exec_tasks([task], ice.Launcher())
    # batches [0..3] (n=4, loss 6) and [4, 5] (n=2, loss 9): (6*4 + 9*2) / 6
    assert task.engine.state.metrics["loss"] == pytest.approx((6 * 4 + 9 * 2) / 6)


def test_aux_outputs_are_averaged_per_epoch_and_not_differentiated():
    g = ice.HyperGraph()
    x = torch.arange(8.0).unsqueeze(1)
    g.add("data", ice.DatasetNode(torch.utils.data.TensorDataset(x), batch_size=4))
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(1, 1, bias=False),
            forward=lambda n, c: n.module(c["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.0),
        ),
    )
    seen = []

    def forward(n, c):
        batch_max = c["data"][0].max()
        seen.append(batch_max)
        return c["net"].mean(), {"batch_max": batch_max * c["net"].sum() / c["net"].sum().detach()}

    g.add("l", ice.LossNode(forward=forward))
    task = ice.Task(train=True, epochs=1)
    g.exec_tasks([task], ice.Launcher())
    assert task.engine.state.metrics["l/batch_max"] == pytest.approx((3 * 4 + 7 * 4) / 8)
    assert not g["*/l"].aux["batch_max"].requires_grad
    # the aux term did not reach the gradient: the weight got only d(mean)/dw
    w = g["*/net"].module.weight
    assert w.grad is not None and w.grad.item() == pytest.approx(x[4:].mean().item())


def test_loss_must_be_a_scalar_tensor():
    g = eval_graph(regression_set(n=8), batch_size=4)
    g.add("bad", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1], reduction="none")))
    with pytest.raises(GraphError, match=r"LossNode '\*/bad' must return a scalar tensor .* got \(4, 1\); reduce it"):
        g.exec_tasks([ice.Task(train=False, epochs=1)], ice.Launcher())


@pytest.mark.parametrize("weight", ["1", True, float("nan")])
def test_bad_weight(weight):
    with pytest.raises(TypeError, match="weight must be a finite number"):
        ice.LossNode(forward=lambda n, x: 0, weight=weight)


def test_integer_weight_is_accepted():
    assert ice.LossNode(forward=lambda n, x: 0, weight=2).weight == 2.0


def test_accumulators_round_trip_through_state_dict():
    g = eval_graph(regression_set(n=8), batch_size=4)
    g.exec_tasks([ice.Task(train=False, steps=1)], ice.Launcher())
    node = g["*/mse"]
    other = ice.LossNode(forward=lambda n, x: 0)
    other.load_state_dict(node.state_dict())
    assert other.metric._num_examples == 4 and torch.equal(other.metric._sum, node.metric._sum)


def _hard_losses(dtype, g):
    """Losses of many sizes (tiny ones are subnormal in float32, negative ones, zeros), then huge ones
    whose sum overflows to infinity."""
    scale = torch.tensor([1.0, 5.0, 1e-40, 1e-44, 1e-3, -2.0, 0.0, 100.0])
    for i in range(600):
        value = torch.rand((), generator=g) * scale[i % len(scale)] if i < 560 else torch.tensor(3e38)
        yield value.to(dtype).requires_grad_(), int(torch.randint(1, 300, (), generator=g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_loss_metric_accumulates_bit_for_bit_as_ignites_loss(dtype):
    # LossAverage keeps a float32 CPU sum in a Python float (rounded to float32 at each step) and
    # multiplies other losses by a cached tensor of the batch size, not by the int: the sum is ignite's
    reference = Loss(lambda loss, n: loss, batch_size=lambda n: n)
    lean = ice.nodes.loss.LossAverage(output_transform=lambda out: out)
    assert isinstance(lean, Loss)
    reference.reset(), lean.reset()
    g = torch.Generator().manual_seed(0)
    for i, (loss, n) in enumerate(_hard_losses(dtype, g)):
        reference.update((loss, n))
        lean.update((loss, n))
        if (i < 300 and i % 23 == 0) or i > 550:  # now and then (as a checkpoint would), and after 250 unread
            (ref_state,) = reference.state_dict()["__metric_state_per_rank"]
            (state,) = lean.state_dict()["__metric_state_per_rank"]
            assert state.keys() == ref_state.keys()
            assert torch.equal(state["_sum"], ref_state["_sum"]), (i, state["_sum"], ref_state["_sum"])
            assert (
                state["_sum"].dtype == ref_state["_sum"].dtype and state["_num_examples"] == ref_state["_num_examples"]
            )
            assert not state["_sum"].requires_grad  # nothing is recorded without torch.no_grad
            if i % 46 == 0:
                assert lean.compute() == reference.compute()
    assert math.isinf(reference.compute())  # the last losses overflowed the float32 sum: so did lean's
    assert lean.compute() == reference.compute()
    with pytest.raises(ValueError, match="scalar"):
        lean.update((torch.ones(2), 2))


def test_the_loss_metric_gives_nan_as_ignites_loss_and_restarts_at_reset():
    reference = Loss(lambda loss, n: loss, batch_size=lambda n: n)
    lean = ice.nodes.loss.LossAverage(output_transform=lambda out: out)
    for metric in (reference, lean):
        metric.reset()
        for value in (1.5, float("nan"), 2.0):
            metric.update((torch.tensor(value), 3))
    assert math.isnan(lean.compute()) and math.isnan(reference.compute())
    for metric in (reference, lean):
        metric.reset()
        metric.update((torch.tensor(0.1), 7))
        metric.update((torch.tensor(0.2, dtype=torch.bfloat16), 5))  # a loss of another dtype, between
        metric.update((torch.tensor(0.3), 9))
    assert lean.compute() == reference.compute()
    restored = ice.nodes.loss.LossAverage(output_transform=lambda out: out)
    restored.load_state_dict(lean.state_dict())
    restored.update((torch.tensor(0.7), 2)), reference.update((torch.tensor(0.7), 2))
    assert restored.compute() == reference.compute()
