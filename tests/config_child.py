"""A training script that takes its settings with ``ice.config`` and records them with the run
(``run(config=cfg)``), for tests/config/: each process writes the config it got to
OUT_DIR/config-rank<r>.txt after the run.

    python config_child.py out_dir=OUT_DIR [devices=cpu:0-1] [lr=...] [model.width=...] [--config FILE]
"""

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

import ice_ignite as ice


@dataclasses.dataclass
class Model:
    width: int = dataclasses.field(default=4, metadata={"help": "hidden units"})


@dataclasses.dataclass
class Config:
    """A tiny regression."""

    out_dir: str = "runs"
    run_id: str = "child"
    devices: str = "cpu"
    lr: float = dataclasses.field(default=0.1, metadata={"help": "learning rate of SGD"})
    epochs: int = 1
    model: Model = dataclasses.field(default_factory=Model)


def main() -> None:
    cfg = ice.config(Config)
    torch.manual_seed(0)
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
    net = torch.nn.Sequential(torch.nn.Linear(3, cfg.model.width), torch.nn.Linear(cfg.model.width, 1))
    g.add(
        "net",
        ice.ModuleNode(
            net, forward=lambda n, x: n.module(x["data"][0]), optimizers=ice.Optimizer(torch.optim.SGD, lr=cfg.lr)
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    run_dir = g.run(
        [ice.Task(train=True, epochs=cfg.epochs)],
        devices=cfg.devices,
        out_dir=cfg.out_dir,
        run_id=cfg.run_id,
        config=cfg,
        progress=False,
    )
    (Path(cfg.out_dir) / f"config-rank{run_dir.rank}.txt").write_text(repr(cfg))


if __name__ == "__main__":
    main()
