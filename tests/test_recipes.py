"""End-to-end graphs users write: a GAN, and pretraining followed by fine-tuning."""

import torch
import torch.nn.functional as F
from conftest import regression_set

import ice_ignite as ice


def snapshot(module):
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module):
    return [not torch.equal(a, b) for a, b in zip(before, module.parameters())]


def test_gan_alternating_tasks_change_only_their_own_parameters():
    torch.manual_seed(0)
    gen, disc = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    real = torch.utils.data.TensorDataset(torch.randn(64, 2) + 3)
    adam = ice.Optimizer(torch.optim.Adam, lr=1e-2)

    g = ice.HyperGraph()
    g.add("real", ice.DatasetNode(real, batch_size=8, shuffle=True))
    g.add("noise", ice.Node(forward=lambda n, x: torch.randn(8, 2)))
    # the generator: trained in "g" tasks, frozen (but used) in "d" tasks
    g.add("G", ice.ModuleNode(gen, forward=lambda n, x: n.module(x["noise"]), optimizers=adam), tags="g")
    g.add("G", ice.ModuleNode(gen, forward=lambda n, x: n.module(x["noise"])), tags="d")
    g.add(
        "D",
        ice.ModuleNode(disc, forward=lambda n, x: (n.module(x["real"][0]), n.module(x["G"])), optimizers=adam),
        tags="d",
    )
    g.add("D", ice.ModuleNode(disc, forward=lambda n, x: (None, n.module(x["G"]))), tags="g")
    ones, zeros = torch.ones(8, 1), torch.zeros(8, 1)
    g.add(
        "d_loss",
        ice.LossNode(
            forward=lambda n, x: (
                F.binary_cross_entropy_with_logits(x["D"][0], ones)
                + F.binary_cross_entropy_with_logits(x["D"][1], zeros)
            )
        ),
        tags="d",
    )
    g.add("g_loss", ice.LossNode(forward=lambda n, x: F.binary_cross_entropy_with_logits(x["D"][1], ones)), tags="g")

    record = []

    def check(kind):
        def f(g):
            record.append((kind, changed(state["gen"], gen), changed(state["disc"], disc)))
            state["gen"], state["disc"] = snapshot(gen), snapshot(disc)

        return f

    state = {"gen": snapshot(gen), "disc": snapshot(disc)}
    d_task = ice.Task(train=True, steps=2, tags="d")
    g_task = ice.Task(train=True, steps=1, tags="g")
    g.exec_tasks([ice.Repeat([d_task, check("d"), g_task, check("g")], times=3)], ice.Launcher())
    assert record == [("d", [False, False], [True, True]), ("g", [True, True], [False, False])] * 3
    assert g.global_counters.steps.train == 3 * (2 + 1)
    assert set(d_task.engine.state.metrics) == {"d_loss"} and set(g_task.engine.state.metrics) == {"g_loss"}


def test_pretrain_then_finetune_with_a_tag_specific_override():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    g = ice.HyperGraph()
    # added before the default node on purpose: the override must not depend on add order
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers={r"2\..*": ice.Optimizer(torch.optim.SGD, lr=0.05)},
        ),
        tags="finetune",
    )
    g.add(
        "net",
        ice.ModuleNode(
            net, forward=lambda n, x: n.module(x["data"][0]), optimizers=ice.Optimizer(torch.optim.SGD, lr=0.05)
        ),
    )
    g.add("data", ice.DatasetNode(regression_set(48, seed=0), batch_size=8, shuffle=True), tags="pretrain")
    g.add("data", ice.DatasetNode(regression_set(16, seed=5), batch_size=8), tags="finetune")
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))

    marks = {}
    pretrain = ice.Task(train=True, epochs=2, tags="pretrain")
    finetune = ice.Task(train=True, epochs=3, tags="finetune")
    g.exec_tasks(
        [
            lambda: marks.__setitem__("start", snapshot(net)),
            pretrain,
            lambda: marks.__setitem__("pretrained", snapshot(net)),
            finetune,
        ],
        ice.Launcher(),
    )
    assert changed(marks["start"], net) == [True] * 4
    assert changed(marks["pretrained"], net) == [False, False, True, True]  # backbone frozen in fine-tuning
    assert g.global_counters.steps.train == 2 * 6 + 3 * 2
