"""Train a small CNN on scikit-learn's digits (8x8 images, shipped with scikit-learn: no download).

    python examples/digits.py                          # 10 rounds of train -> validate -> checkpoint
    python examples/digits.py rounds=2 out_dir=/tmp/runs lr=1e-3
    python examples/digits.py --help                   # every setting, its type, default and help

It prints the validation accuracy and where the run directory is; the run directory keeps the
settings (config.yaml) and the run's record (record.yaml).
"""

import dataclasses
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


def setting(default, help: str, compare: bool = True):
    """A field of Settings with its ``--help`` text; ``compare=False``: a resume may change it."""
    return dataclasses.field(default=default, metadata={"help": help, "compare": compare})


@dataclasses.dataclass
class Settings:
    """Train a small CNN on scikit-learn's digits."""

    rounds: int = setting(10, "train/validate/checkpoint rounds", compare=False)
    lr: float = setting(2e-3, "Adam's learning rate")
    batch_size: int = setting(32, "training batch size")
    workers: int = setting(0, "DataLoader workers of the training data", compare=False)
    out_dir: str = setting("runs", "where run directories go", compare=False)
    run_id: str | None = setting(None, "run directory name (null: a fresh timestamp)", compare=False)
    resume: bool = setting(False, "continue the run directory from its last checkpoint", compare=False)


def build_graph(workers: int = 0, lr: float = 2e-3, batch_size: int = 32) -> ice.HyperGraph:
    train_set, val_set = digits_split()
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(train_set, batch_size=batch_size, shuffle=True, num_workers=workers), tags="train")
    g.add("data", ice.DatasetNode(val_set, batch_size=256), tags="val")
    g.add(
        "net",
        ice.ModuleNode(
            Net(), forward=lambda n, x: n.module(x["data"][0]), optimizers=ice.Optimizer(torch.optim.Adam, lr=lr)
        ),
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"], x["data"][1])), tags="val")
    return g


def main(argv: list[str] | None = None) -> float:
    """Train with the settings of ``argv`` (None: the command line), as ``key=value`` arguments."""
    cfg = ice.config(Settings, argv)

    torch.manual_seed(0)  # the model's initial weights
    g = build_graph(cfg.workers, cfg.lr, cfg.batch_size)
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
        [ice.Repeat([train, val, report, ice.SaveCheckpointTask()], times=cfg.rounds)],
        devices="cpu",
        out_dir=cfg.out_dir,
        run_id=cfg.run_id,
        resume_from="auto" if cfg.resume else None,
        config=cfg,  # recorded in the run directory and the checkpoints, compared on resume
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
