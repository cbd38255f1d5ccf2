"""Pretrain an encoder without labels, then finetune a classifier on 10 % of the labels, on the 8x8 digits.

    python examples/pretrain_finetune.py                           # the full setting of docs/gallery.md
    python examples/pretrain_finetune.py pretrain_epochs=2 epochs=3  # a quick look

Three runs, each its own run directory:
1. "pretrain": a denoising autoencoder (encoder -> 32 numbers -> decoder) learns to reconstruct every
   training image from a copy with 30 % of its pixels zeroed; no labels are used. Its last checkpoint holds the encoder under the uid "*/encoder" (a node of every task).
2. "finetune": a classifier (the same encoder architecture, named "features", and a linear head) on
   `labelled` (10 %) of the training labels. It starts by loading the pretrained encoder's weights
   only (not its optimizer) with a rename map {"*/encoder": "*/features"}; for the first
   epoch the features are frozen (only the head trains), then everything trains.
3. "scratch": the same classifier, schedule and seed without the loaded weights.
It prints the validation accuracy of both after the last epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from digits import digits_split  # examples/digits.py: the data, split as there
from ignite.metrics import Accuracy

import ice_ignite as ice


@dataclass
class Config:
    """Settings of examples/pretrain_finetune.py (``key=value`` on the command line)."""

    pretrain_epochs: int = field(default=30, metadata={"help": "autoencoder epochs over every training image"})
    epochs: int = field(
        default=40, metadata={"help": "classifier epochs over the labelled images; the first with the features frozen"}
    )
    labelled: float = field(
        default=0.1, metadata={"help": "share of the training images whose labels the classifier sees"}
    )
    code: int = field(default=32, metadata={"help": "size of the encoder's output"})
    drop: float = field(
        default=0.3,
        metadata={"help": "share of the pixels zeroed in the autoencoder's input (a denoising autoencoder)"},
    )
    lr: float = 3e-3
    seed: int = 0
    out_dir: str = "runs"
    run_id: str | None = field(
        default=None, metadata={"help": "prefix of the three run directories (default: a timestamp)"}
    )


def encoder(code: int) -> torch.nn.Module:
    """1x8x8 image -> ``code`` features."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, code),
    )


def pretrain(cfg: Config, run_id: str) -> Path:
    """Train an autoencoder on the training images; return its last checkpoint."""
    train_set, val_set = digits_split()
    torch.manual_seed(cfg.seed)
    decoder = torch.nn.Sequential(torch.nn.Linear(cfg.code, 64), torch.nn.Sigmoid(), torch.nn.Unflatten(1, (1, 8, 8)))
    adam = ice.Optimizer(torch.optim.Adam, lr=cfg.lr)
    g = ice.HyperGraph()
    g.add("images", ice.DatasetNode(train_set, batch_size=32, shuffle=True), tags="pretrain")
    g.add("images", ice.DatasetNode(val_set, batch_size=256), tags="val")

    def corrupt(n, x):  # in training only: the validation measures the reconstruction of whole images
        images = x["images"][0]
        return n.module(images * (torch.rand_like(images) >= cfg.drop) if n.training else images)

    g.add("encoder", ice.ModuleNode(encoder(cfg.code), forward=corrupt, optimizers=adam))
    g.add("decoder", ice.ModuleNode(decoder, forward=lambda n, x: n.module(x["encoder"]), optimizers=adam))
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["decoder"], x["images"][0])))  # the labels unused
    train, val = ice.Task(train=True, epochs=1, tags="pretrain"), ice.Task(train=False, epochs=1, tags="val")
    run_dir = g.run(
        [ice.Repeat([train, val], times=cfg.pretrain_epochs), ice.SaveCheckpointTask()],
        devices="cpu",
        out_dir=cfg.out_dir,
        run_id=run_id,
    )
    print(f"pretrain: validation reconstruction error (MSE) {val.engine.state.metrics['mse']:.4f}", flush=True)
    return max((run_dir / "ckpts").glob("ckpt-*.pt"))  # the newest: the highest sequence number


def finetune(cfg: Config, run_id: str, checkpoint: Path | None) -> float:
    """Train the classifier on the labelled share, from ``checkpoint``'s encoder (None: from scratch);
    return its validation accuracy."""
    train_set, val_set = digits_split()
    subset = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(cfg.seed))
    labelled = torch.utils.data.Subset(train_set, subset[: round(cfg.labelled * len(train_set))].tolist())
    torch.manual_seed(cfg.seed)  # the same initial weights and data order with and without pretraining
    features = encoder(cfg.code)
    adam = ice.Optimizer(torch.optim.Adam, lr=cfg.lr)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(labelled, batch_size=16, shuffle=True), tags="train")
    g.add("data", ice.DatasetNode(val_set, batch_size=256), tags="val")
    embed = lambda n, x: n.module(x["data"][0])
    g.add("features", ice.ModuleNode(features, forward=embed))  # no optimizer: frozen wherever it is selected
    g.add("features", ice.ModuleNode(features, forward=embed, optimizers=adam), tags="unfrozen")  # trains there
    g.add(
        "head",
        ice.ModuleNode(torch.nn.Linear(cfg.code, 10), forward=lambda n, x: n.module(x["features"]), optimizers=adam),
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["head"], x["data"][1])))
    g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["head"], x["data"][1])), tags="val")

    def load(g: ice.HyperGraph) -> None:
        report = g.load_checkpoint(checkpoint, nodes="*/features", rename={"*/encoder": "*/features"})
        print(f"finetune: loaded {report['parts']} from {checkpoint.name}, renamed {report['renamed']}", flush=True)

    frozen = ice.Task(train=True, epochs=1, tags="train")  # selects "*/features": frozen
    unfrozen = ice.Task(train=True, epochs=1, tags=["train", "unfrozen"])  # selects "unfrozen/features"
    val = ice.Task(train=False, epochs=1, tags="val")
    schedule = [] if checkpoint is None else [load]
    schedule += [frozen, val, ice.Repeat([unfrozen, val], times=cfg.epochs - 1)]
    g.run(schedule, devices="cpu", out_dir=cfg.out_dir, run_id=run_id)
    return val.engine.state.metrics["acc"]


def main(cfg: Config) -> dict[str, float]:
    if cfg.epochs < 2:
        raise ValueError(f"epochs={cfg.epochs}: needs 2 or more (the first trains the head alone)")
    start = time.perf_counter()
    prefix = cfg.run_id or time.strftime("%Y%m%d-%H%M%S")
    checkpoint = pretrain(cfg, f"{prefix}-pretrain")
    result = {
        "pretrained": finetune(cfg, f"{prefix}-finetune", checkpoint),
        "scratch": finetune(cfg, f"{prefix}-scratch", None),
    }
    print(
        f"validation accuracy with {cfg.labelled:.0%} of the labels: pretrained {result['pretrained']:.4f}, "
        f"from scratch {result['scratch']:.4f} ({time.perf_counter() - start:.1f} s); "
        f"run directories: {Path(cfg.out_dir) / prefix}-{{pretrain,finetune,scratch}}"
    )
    return result


if __name__ == "__main__":
    main(ice.config(Config))
