"""Node resources, hooks and properties (API.md A "Nodes")."""

import pytest
import torch

import ice_ignite as ice


def test_resources_become_attributes_and_callables_are_not_rebound():
    # ice-learn bug 11: several callable resources all called the last one (late binding).
    node = ice.Node(scale=3, double=lambda v: 2 * v, triple=lambda v: 3 * v)
    assert node.scale == 3 and node.double(5) == 10 and node.triple(5) == 15


def test_a_hook_resource_is_the_hook_and_receives_the_node():
    got = []
    node = ice.Node(epoch_end=lambda n: got.append(n))
    node.epoch_end()
    assert got == [node]


@pytest.mark.parametrize("key", ["name", "training", "uid", "state_dict", "device", "_private"])
def test_resource_clashing_with_a_property_or_method_is_an_error(key):
    with pytest.raises(TypeError, match=f"resource '{key}' clashes"):
        ice.Node(**{key: 1})


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"forward": 3}, "forward of Node must be callable"),
        ({"forward": lambda x: x}, "must accept 2 positional arguments"),
        ({"update": lambda: 0}, "'update' hook of Node must accept 1 positional argument"),
        ({"epoch_start": "no"}, "must be callable"),
    ],
)
def test_bad_forward_or_hook_signature_is_refused_at_construction(kwargs, words):
    with pytest.raises(TypeError, match=words):
        ice.Node(**kwargs)


def test_properties_outside_a_run():
    node = ice.Node()
    with pytest.raises(RuntimeError, match="added to a HyperGraph first"):
        node.global_train_steps
    g = ice.HyperGraph()
    g.add("n", node, tags="a")
    assert (node.name, node.uid, node.training, node.task, node.launcher, node.out_dir, node.run_id) == (
        "n",
        "a/n",
        False,
        None,
        None,
        None,
        None,
    )
    assert node.device == torch.device("cpu") and node.grad_acc_steps == 1 and node.grad_scaler is None
    assert not node.board  # a no-op writer outside a run
    node.board.add_scalar("x", 1.0, 0)
    with pytest.raises(RuntimeError, match="not part of a running task"):
        ice.Node().forward()


def test_subclass_overrides_forward_impl_and_hooks():
    class Counter(ice.Node):
        def __init__(self):
            super().__init__()
            self.count = 0
            self.epochs = 0

        def forward_impl(self, x):
            self.count += 1
            return self.count

        def epoch_end(self):
            self.epochs += 1

    g = ice.HyperGraph()
    node = g.add("c", Counter())
    g.exec_tasks([ice.Task(train=False, steps=3), ice.Task(train=False, steps=2)], ice.Launcher())
    assert node.count == 5 and node.epochs == 2
