"""One trunk, two heads: classify the 8x8 digits and reconstruct them, trained by two tagged tasks in turn.

    python examples/multitask.py                  # the full setting of docs/gallery.md
    python examples/multitask.py rounds=2         # a quick look

The trunk (a small CNN) is a node of every task; the classifier head, its loss and metric are tagged
"cls", the decoder and its loss "rec". A round alternates `steps` optimizer steps of the "cls" task
and `steps` of the "rec" task `switches` times, then validates each head in its own eval task (tags
"cls,val" and "rec,val"). Each task's metrics land on the board under its tags: `cls/ce`,
`rec/mse`, `cls_val/acc`, `cls_val/ce`, `rec_val/mse`. It prints both validation results per round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from digits import digits_split  # examples/digits.py: the data, split as there
from ignite.metrics import Accuracy

import ice_ignite as ice


@dataclass
class Config:
    """Settings of examples/multitask.py (``key=value`` on the command line)."""

    rounds: int = field(
        default=20, metadata={"help": "rounds of alternating training, each followed by the two validations"}
    )
    switches: int = field(default=3, metadata={"help": "alternations of the two train tasks per round"})
    steps: int = field(default=15, metadata={"help": "optimizer steps of one train task before the other takes over"})
    lr: float = 1e-3
    seed: int = 0
    out_dir: str = "runs"
    run_id: str | None = None


def build_graph(cfg: Config) -> ice.HyperGraph:
    train_set, val_set = digits_split()
    trunk = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 64),
        torch.nn.ReLU(),
    )
    decoder = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Sigmoid(), torch.nn.Unflatten(1, (1, 8, 8)))
    adam = ice.Optimizer(torch.optim.Adam, lr=cfg.lr)
    g = ice.HyperGraph()
    g.add("images", ice.DatasetNode(train_set, batch_size=32, shuffle=True))  # "*": every task's, unless...
    g.add("images", ice.DatasetNode(val_set, batch_size=256), tags="val")  # ...a "val" task's own overrides it
    g.add("trunk", ice.ModuleNode(trunk, forward=lambda n, x: n.module(x["images"][0]), optimizers=adam))
    # the classification head
    head = ice.ModuleNode(torch.nn.Linear(64, 10), forward=lambda n, x: n.module(x["trunk"]), optimizers=adam)
    g.add("classify", head, tags="cls")
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["classify"], x["images"][1])), tags="cls")
    g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["classify"], x["images"][1])), tags=["cls", "val"])
    # the reconstruction head
    g.add("decode", ice.ModuleNode(decoder, forward=lambda n, x: n.module(x["trunk"]), optimizers=adam), tags="rec")
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["decode"], x["images"][0])), tags="rec")
    return g


def main(cfg: Config) -> dict[str, float]:
    torch.manual_seed(cfg.seed)  # the initial weights and the run's seed
    g = build_graph(cfg)
    cls, rec = ice.Task(train=True, steps=cfg.steps, tags="cls"), ice.Task(train=True, steps=cfg.steps, tags="rec")
    cls_val = ice.Task(train=False, epochs=1, tags=["cls", "val"])
    rec_val = ice.Task(train=False, epochs=1, tags=["rec", "val"])

    def report() -> None:
        print(
            f"step {g.global_counters.steps.train:5d}  val accuracy {cls_val.engine.state.metrics['acc']:.4f}  "
            f"val reconstruction error (MSE) {rec_val.engine.state.metrics['mse']:.4f}",
            flush=True,
        )

    start = time.perf_counter()
    run_dir = g.run(
        [ice.Repeat([ice.Repeat([cls, rec], times=cfg.switches), cls_val, rec_val, report], times=cfg.rounds)],
        devices="cpu",
        out_dir=cfg.out_dir,
        run_id=cfg.run_id,
        outputs=ice.OutputOptions(log_every=cfg.steps),
    )
    result = {"accuracy": cls_val.engine.state.metrics["acc"], "mse": rec_val.engine.state.metrics["mse"]}
    print(
        f"validation: accuracy {result['accuracy']:.4f}, reconstruction error (MSE) {result['mse']:.4f} after "
        f"{g.global_counters.steps.train} steps ({time.perf_counter() - start:.1f} s); run directory: {run_dir}"
    )
    return result


if __name__ == "__main__":
    main(ice.config(Config))
