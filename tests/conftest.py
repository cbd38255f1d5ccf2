"""Shared helpers: small in-memory data sets and graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import ice_ignite as ice

# the *_child.py files are scripts that tests start in processes of their own: some train, or read
# their settings from the command line, at import; --doctest-modules would import them
collect_ignore_glob = ["*_child.py"]


def regression_set(n: int = 40, d: int = 3, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.arange(1.0, d + 1).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def classification_set(n: int = 60, d: int = 4, classes: int = 3, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def linear_graph(train_n: int = 40, val_n: int = 20, batch_size: int = 8, lr: float = 0.1) -> ice.HyperGraph:
    """data(train/val) -> net (Linear, SGD) -> mse (train and val)."""
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(regression_set(train_n), batch_size=batch_size), tags="train")
    g.add("data", ice.DatasetNode(regression_set(val_n, seed=1), batch_size=batch_size), tags="val")
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(3, 1),
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=lr),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    return g


def saved_checkpoint(out_dir, run_id: str = "src", epochs: int = 1) -> tuple[ice.HyperGraph, Path]:
    """Train a ``linear_graph`` for ``epochs`` in run ``out_dir/run_id``, save a checkpoint at the
    end; return the graph and the checkpoint's path."""
    g = linear_graph()
    g.run(
        [ice.Task(train=True, epochs=epochs, tags="train"), ice.SaveCheckpointTask()],
        devices="cpu",
        out_dir=out_dir,
        run_id=run_id,
    )
    return g, next((Path(out_dir) / run_id / "ckpts").glob("ckpt-*.pt"))


def max_diff(a, b):
    """The largest absolute difference between two nested states of tensors (inf if they differ otherwise)."""
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max([max_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max([max_diff(x, y) for x, y in zip(a, b)] or [0.0])
    return 0.0 if a == b else float("inf")


@pytest.fixture
def launcher() -> ice.Launcher:
    return ice.Launcher()


@pytest.fixture
def svg_backend():
    """matplotlib set to the 'svg' backend for the test (restored after): pictures must leave it so."""
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    yield
    matplotlib.use(before)
