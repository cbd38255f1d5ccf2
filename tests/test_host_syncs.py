"""The framework's hot path reads no device value per iteration (no .item(), .cpu(), float(t), ...)
unless the user asked for one; host reads for logging happen only every N steps.

These tests run on the CPU, the path of every device: a LossNode's epoch average there keeps its
sum on the device (``LossAverage.SUM_ON_HOST`` off). On the CPU itself it reads each loss
(``.item()`` of a CPU tensor, which waits for nothing) and sums on the host: the last test."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from conftest import classification_set
from ignite.engine import Events
from ignite.metrics import Metric

import ice_ignite as ice

# the Tensor methods that copy a device value to the host (and wait for the device to get there)
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


class SumOfLogits(Metric):
    """A metric that keeps its state on the device: its updates read nothing back."""

    def reset(self):
        self.total = torch.zeros(())

    def update(self, out):
        self.total += out[0].detach().sum()

    def compute(self):
        return self.total.item()


@contextlib.contextmanager
def counting_reads():
    counts = {"on": False, "reads": []}
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            if counts["on"]:
                counts["reads"].append(name)
            return fn(self, *args, **kwargs)

        return counted

    for name, fn in originals.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


@pytest.fixture(autouse=True)
def device_path(monkeypatch):
    """The LossNodes' sums as on an accelerator (on the CPU they are read each iteration)."""
    monkeypatch.setattr(ice.nodes.loss.LossAverage, "SUM_ON_HOST", False)


def graph():
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(classification_set(400), batch_size=8, shuffle=True))
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(4, 3),
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1, momentum=0.9),
        ),
    )
    g.add(
        "ce",
        ice.LossNode(forward=lambda n, x: (F.cross_entropy(x["net"], x["data"][1]), {"max": x["net"].detach().max()})),
    )
    g.add("sum", ice.MetricNode(SumOfLogits(), forward=lambda n, x: (x["net"],)))
    return g


def watch(task, counts, per_iteration):
    """Count the reads of iterations 3 to 47 of each 50-iteration epoch: from one ITERATION_STARTED
    to the next, so that every handler of the iteration (the board's included) is inside."""

    def start(engine):
        if counts["on"]:
            per_iteration[engine.state.iteration - 1] = list(counts["reads"])
        counts["on"] = 3 <= (engine.state.iteration - 1) % 50 + 1 <= 47
        counts["reads"] = []

    task.engine.add_event_handler(Events.ITERATION_STARTED, start)


def reads_of_two_epochs(g):
    """Train ``g`` two epochs with ``exec_tasks``; the task and the reads of each watched iteration."""
    task = ice.Task(train=True, epochs=2)
    per_iteration = {}
    with counting_reads() as counts:
        watch(task, counts, per_iteration)
        g.exec_tasks([task], ice.Launcher())
    assert len(per_iteration) == 2 * 45
    return task, per_iteration


@pytest.mark.parametrize("accumulate", [1, 2])
def test_no_host_read_per_iteration(accumulate):
    g = graph()
    g.set_gradient_accumulate(accumulate)
    _, per_iteration = reads_of_two_epochs(g)
    assert all(reads == [] for reads in per_iteration.values()), {k: v for k, v in per_iteration.items() if v}


def test_in_a_run_host_reads_happen_only_on_logging_steps(tmp_path):
    g = graph()
    task = ice.Task(train=True, epochs=2)
    per_iteration = {}
    with counting_reads() as counts:
        watch(task, counts, per_iteration)
        g.run([task], devices="cpu", out_dir=tmp_path, log_every=10, progress=False)
    reading = {it for it, reads in per_iteration.items() if reads}
    assert reading == {it for it in per_iteration if it % 10 == 0}  # the board's every-10-steps scalars
    assert all(set(per_iteration[it]) == {"item"} for it in reading)


def test_a_user_asking_for_values_gets_them(capsys):
    g = graph()
    g.print_forward_output("net", every=5)
    task = ice.Task(train=True, epochs=1)
    per_iteration = {}
    with counting_reads() as counts:
        watch(task, counts, per_iteration)
        g.exec_tasks([task], ice.Launcher())
    assert {it for it, reads in per_iteration.items() if reads} == {5, 10, 15, 20, 25, 30, 35, 40, 45}


def test_on_the_cpu_the_loss_averages_read_their_cpu_losses_and_nothing_else(monkeypatch):
    monkeypatch.setattr(ice.nodes.loss.LossAverage, "SUM_ON_HOST", True)
    task, per_iteration = reads_of_two_epochs(graph())
    assert all(reads == ["item", "item"] for reads in per_iteration.values())  # the loss and its aux value
    monkeypatch.setattr(ice.nodes.loss.LossAverage, "SUM_ON_HOST", False)
    reference = graph()
    other = ice.Task(train=True, epochs=2)
    reference.exec_tasks([other], ice.Launcher())
    assert task.engine.state.metrics == other.engine.state.metrics  # the same epoch averages, bit for bit
