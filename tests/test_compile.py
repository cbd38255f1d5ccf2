"""ModuleNode(compile=...) and activation_checkpointing=... in one process (issue 16): compiled and
eager runs agree, load each other's checkpoints, and compile no more graphs after the first
iterations of each kind (train, eval), resume included. Compilation uses inductor (gcc here)."""

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import ice_ignite as ice


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(6, 16)
        self.b = torch.nn.Linear(16, 16)
        self.c = torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, :1] * 2 - x[:, 1:2])


def build(**options):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(data(32, 1), batch_size=8, shuffle=True), tags="train")
    g.add("data", ice.DatasetNode(data(16, 2), batch_size=8), tags="val")
    net = Net()
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: n.module(x["data"][0]),
            **options,
            optimizers=ice.Optimizer(torch.optim.Adam, lr=0.01, grad_clip_norm=1.0),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    losses = []
    g.add("record", ice.Node(forward=lambda n, x: losses.append(x["mse"].item())), tags="*")
    return g, net, losses


def compiled_graphs():
    return counters["stats"]["unique_graphs"], counters["frames"]["total"]


SCHEDULE = [
    ice.Task(train=True, epochs=1, tags="train"),
    ice.Task(train=False, epochs=1, tags="val"),
    ice.Task(train=True, epochs=2, tags="train"),
    ice.Task(train=False, epochs=1, tags="val"),
]


def run(g, out, run_id, **kwargs):
    probes = []
    probe = lambda g: probes.append(compiled_graphs())
    g.run(
        [SCHEDULE[0], SCHEDULE[1], probe, SCHEDULE[2], lambda g: g.save_checkpoint(), SCHEDULE[3], probe],
        devices="cpu",
        out_dir=out,
        run_id=run_id,
        progress=False,
        **kwargs,
    )
    return probes


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile")
    before = compiled_graphs()
    compiled, cnet, closses = build(compile=True)
    probes = run(compiled, out, "compiled")
    eager, enet, elosses = build()
    run(eager, out, "eager")
    return {"out": out, "before": before, "probes": probes, "compiled": (cnet, closses), "eager": (enet, elosses)}


@pytest.mark.slow
def test_compiled_and_eager_runs_agree(runs):
    (cnet, closses), (enet, elosses) = runs["compiled"], runs["eager"]
    assert len(closses) == len(elosses) == 16  # 3 train epochs of 4 batches, 2 evals of 2
    assert max(abs(a - b) for a, b in zip(closses, elosses)) < 1e-5
    assert (
        list(cnet.state_dict())
        == list(enet.state_dict())
        == ["a.weight", "a.bias", "b.weight", "b.bias", "c.weight", "c.bias"]
    )
    for key, value in cnet.state_dict().items():
        torch.testing.assert_close(value, enet.state_dict()[key], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_compile_runs_the_forward_compiled_and_never_recompiles_after_the_first_iterations(runs):
    (graphs0, _), ((graphs1, frames1), (graphs2, frames2)) = runs["before"], runs["probes"]
    assert graphs1 - graphs0 == 2  # one graph for training, one for evaluation (no_grad, eval mode)
    assert (graphs2, frames2) == (graphs1, frames1)  # two more train epochs and an eval: nothing recompiled


@pytest.mark.slow
def test_compiled_and_eager_runs_load_each_others_checkpoints_and_resume_without_recompiling(runs):
    out = runs["out"]
    for source, options in (("compiled", {}), ("eager", {"compile": True})):
        g, net, _ = build(**options)
        report = g.load_checkpoint(next((out / source / "ckpts").glob("ckpt-*.pt")), optimizers=True)
        assert report["loaded"] == ["*/net"]
    # a compiled run resumes an eager run's checkpoint and ends where the eager run ended, compiling its two
    # graphs once (a new module, the same code)
    g, net, losses = build(compile=True)
    before = compiled_graphs()
    probes = run(g, out, "resumed", resume_from=next((out / "eager" / "ckpts").glob("ckpt-*.pt")))
    assert probes[-1][0] - before[0] <= 2
    assert len(losses) == 2  # the last eval
    assert max(abs(a - b) for a, b in zip(losses, runs["eager"][1][-2:])) < 1e-5
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, runs["eager"][0].state_dict()[key], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_activation_checkpointing_gives_the_gradients_of_a_plain_backward_also_compiled():
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    grads = []
    for options in (
        {},
        {"activation_checkpointing": torch.nn.Linear},
        {"activation_checkpointing": True},
        {"activation_checkpointing": torch.nn.Linear, "compile": {"backend": "aot_eager"}},
    ):
        torch.manual_seed(0)
        node = ice.ModuleNode(Net(), forward=lambda n, x: n.module(x), **options)
        node.module(x).pow(2).sum().backward()
        grads.append({name: p.grad for name, p in node.module.named_parameters()})
        assert list(node.module.state_dict()) == ["a.weight", "a.bias", "b.weight", "b.bias", "c.weight", "c.bias"]
    for other in grads[1:]:
        for name, grad in grads[0].items():
            torch.testing.assert_close(other[name], grad, atol=1e-6, rtol=0)


class Counting(torch.nn.Linear):
    calls = 0

    def forward(self, x):
        Counting.calls += 1
        return super().forward(x)


def test_activation_checkpointing_recomputes_the_forward_in_the_backward():
    net = torch.nn.Sequential(Counting(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    node = ice.ModuleNode(
        net,
        forward=lambda n, x: n.module(x),
        activation_checkpointing=Counting,
        optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1),
    )
    assert [name for name, _ in node.named_trainable_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    Counting.calls = 0
    out = node.module(torch.randn(4, 6)).sum()
    assert Counting.calls == 1
    out.backward()
    assert Counting.calls == 2  # recomputed for the backward: its activations were not kept


def test_compile_options_are_checked_by_name():
    fwd = lambda n, x: n.module(x)
    with pytest.raises(
        TypeError,
        match="compile of ModuleNode\\(Net\\) has 'backnd', which is not a torch.compile "
        "option: did you mean 'backend'",
    ):
        ice.ModuleNode(Net(), forward=fwd, compile={"backnd": "eager"})
    with pytest.raises(
        TypeError, match="compile must be True, False or a dict of torch.compile options, got 'inductor'"
    ):
        ice.ModuleNode(Net(), forward=fwd, compile="inductor")
    with pytest.raises(
        TypeError, match="activation_checkpointing of ModuleNode\\(Net\\) must be a torch.nn.Module class"
    ):
        ice.ModuleNode(Net(), forward=fwd, activation_checkpointing=[torch.nn.Linear])
