"""MetricNode over any ignite Metric (API.md B5)."""

import pytest
import torch
from conftest import classification_set
from ignite.metrics import Accuracy, Metric

import ice_ignite as ice


def graph(metric, forward=None, epoch_end=None):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(classification_set(n=30), batch_size=8))
    g.add("net", ice.ModuleNode(torch.nn.Linear(4, 3), forward=lambda n, x: n.module(x["data"][0])))
    g.add("m", ice.MetricNode(metric, forward=forward or (lambda n, x: (x["net"], x["data"][1])), epoch_end=epoch_end))
    return g


def test_accuracy_is_computed_at_epoch_end_and_epoch_end_sees_it():
    seen = []
    g = graph(Accuracy(), epoch_end=lambda n: seen.append(n.value))
    task = ice.Task(train=False, epochs=2)
    g.exec_tasks([task], ice.Launcher())
    x, y = classification_set(n=30).tensors
    expected = (g["*/net"].module(x).argmax(1) == y).float().mean().item()
    assert task.engine.state.metrics["m"] == pytest.approx(expected)
    assert seen == [pytest.approx(expected)] * 2  # reset every epoch, so both epochs agree


def test_dict_output_is_turned_into_required_keys():
    g = graph(Accuracy(), forward=lambda n, x: {"y_pred": x["net"], "y": x["data"][1]})
    task = ice.Task(train=False, epochs=1)
    g.exec_tasks([task], ice.Launcher())
    x, y = classification_set(n=30).tensors
    expected = (g["*/net"].module(x).argmax(1) == y).float().mean().item()  # by hand, on the same samples
    assert task.engine.state.metrics["m"] == pytest.approx(expected)


class MinMax(Metric):
    def reset(self):
        self.lo, self.hi = float("inf"), float("-inf")

    def update(self, value):
        self.lo, self.hi = min(self.lo, value.min().item()), max(self.hi, value.max().item())

    def compute(self):
        return {"lo": self.lo, "hi": self.hi}


def test_dict_results_are_flattened_as_name_slash_key():
    g = graph(MinMax(), forward=lambda n, x: x["data"][1])
    task = ice.Task(train=False, epochs=1)
    g.exec_tasks([task], ice.Launcher())
    metrics = task.engine.state.metrics
    assert metrics["m/lo"] == 0 and metrics["m/hi"] == 2 and metrics["m"] == {"lo": 0, "hi": 2}
    assert "lo" not in metrics


def test_metric_must_be_an_ignite_metric():
    with pytest.raises(TypeError, match="needs an ignite.metrics.Metric instance"):
        ice.MetricNode(lambda a, b: 0, forward=lambda n, x: 0)
    with pytest.raises(TypeError, match="got the class Accuracy: instantiate it"):
        ice.MetricNode(Accuracy, forward=lambda n, x: 0)


def test_metric_updates_in_train_tasks_do_not_track_gradients():
    got = []

    class Probe(Metric):
        def reset(self):
            pass

        def update(self, out):
            got.append(torch.is_grad_enabled())

        def compute(self):
            return 0

    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(classification_set(n=8), batch_size=8))
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(4, 3),
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1),
        ),
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: torch.nn.functional.cross_entropy(x["net"], x["data"][1])))
    g.add("probe", ice.MetricNode(Probe(), forward=lambda n, x: (x["net"],)))
    g.exec_tasks([ice.Task(train=True, epochs=1)], ice.Launcher())
    assert got == [False]
