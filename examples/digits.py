"""Train a small CNN on scikit-learn's digits (8x8 images, shipped with scikit-learn: no download).

    python examples/digits.py                 # 10 rounds of train -> validate -> checkpoint
    python examples/digits.py --rounds 2 --out-dir /tmp/runs

It prints the validation accuracy and where the run directory is.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from ignite.metrics import Accuracy
from sklearn.datasets import load_digits

import ice_ignite as ice


class Net(torch.nn.Module):
    """Two 3x3 convolutions and a linear classifier for 1x8x8 images."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def digits_split(val_fraction: float = 0.2, seed: int = 0):
    """The digits data as (train, val) TensorDatasets, pixels scaled to [0, 1]."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return (torch.utils.data.TensorDataset(x[train], y[train]), torch.utils.data.TensorDataset(x[val], y[val]))


def build_graph(workers: int = 0) -> ice.HyperGraph:
    train_set, val_set = digits_split()
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(train_set, batch_size=32, shuffle=True, num_workers=workers), tags="train")
    g.add("data", ice.DatasetNode(val_set, batch_size=256), tags="val")
    g.add(
        "net",
        ice.ModuleNode(
            Net(), forward=lambda n, x: n.module(x["data"][0]), optimizers=ice.Optimizer(torch.optim.Adam, lr=2e-3)
        ),
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"], x["data"][1])), tags="val")
    return g


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="train/validate/checkpoint rounds")
    parser.add_argument("--out-dir", default="runs", help="where run directories go")
    parser.add_argument("--run-id", default=None, help="run directory name (default: a fresh timestamp)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the training data")
    parser.add_argument("--resume", action="store_true", help="continue the run directory from its last checkpoint")
    args = parser.parse_args(argv)

    torch.manual_seed(0)  # the model's initial weights
    g = build_graph(args.workers)
    train = ice.Task(train=True, epochs=1, tags="train")
    val = ice.Task(train=False, epochs=1, tags="val")

    def report(g: ice.HyperGraph) -> None:
        loss, acc = val.engine.state.metrics["ce"], val.engine.state.metrics["acc"]
        print(
            f"epoch {g.global_counters.epochs.train:3d}  train loss {train.engine.state.metrics['ce']:.4f}  "
            f"val loss {loss:.4f}  val accuracy {acc:.4f}",
            flush=True,
        )

    start = time.perf_counter()
    run_dir = g.run(
        [ice.Repeat([train, val, report, ice.SaveCheckpointTask()], times=args.rounds)],
        devices="cpu",
        out_dir=args.out_dir,
        run_id=args.run_id,
        resume_from="auto" if args.resume else None,
    )
    elapsed = time.perf_counter() - start
    accuracy = val.engine.state.metrics.get("acc", float("nan"))
    print(
        f"validation accuracy {accuracy:.4f} after {g.global_counters.epochs.train} epochs "
        f"({elapsed:.1f} s); run directory: {run_dir}"
    )
    return accuracy


if __name__ == "__main__":
    main()
