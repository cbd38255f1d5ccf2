"""examples/from_ignite_plain.py ported to ice_ignite: the same training, the same handlers, the same results.

    python examples/from_ignite.py                        # the full setting of docs/gallery.md
    python examples/from_ignite.py max_epochs=3 run_id=x  # a quick look

What changes (see docs/migrating-from-ignite.md): the model, loss, metrics and data become nodes of a
graph; the trainer and the evaluator become a train and an eval Task, and "run the evaluator at every
epoch end" becomes the schedule `Repeat([train, val])`; the warm-up scheduler is built with the
optimizer (`ice.Optimizer(lr_scheduler=...)`) and steps after every optimizer step; the progress bar
is built in. What stays: `ModelCheckpoint`, `EarlyStopping` and `TensorboardLogger` attach to the
task engines as they attached to the trainer and the evaluator. It prints what the plain script
prints, value for value, writes the same checkpoint files and the same board; its run directory
also holds ice_ignite's own board and log (`logs/`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from digits import Net, digits_split  # examples/digits.py: the model and the data
from ignite.engine import Events
from ignite.handlers import (
    EarlyStopping,
    ModelCheckpoint,
    TensorboardLogger,
    create_lr_scheduler_with_warmup,
    global_step_from_engine,
)
from ignite.metrics import Accuracy
from ignite.utils import manual_seed

import ice_ignite as ice


@dataclass
class Config:
    """Settings of examples/from_ignite_plain.py and examples/from_ignite.py (``key=value``)."""

    max_epochs: int = 30
    lr: float = 2e-3
    warmup: int = field(
        default=100,
        metadata={"help": "iterations of linear warm-up from 0 to `lr`, then a cosine down to 0 at `max_epochs`"},
    )
    patience: int = field(
        default=3, metadata={"help": "validations without a better accuracy before EarlyStopping ends the training"}
    )
    log_every: int = field(default=20, metadata={"help": "print and log the training loss every this many iterations"})
    seed: int = 0
    out_dir: str = "runs"
    run_id: str | None = field(default=None, metadata={"help": "the run directory's name (default: a timestamp)"})


def main(cfg: Config) -> Path:
    manual_seed(cfg.seed)  # the model's weights here, and the run's seed (g.run takes torch.initial_seed())
    run_id = cfg.run_id or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.out_dir) / run_id
    train_set, val_set = digits_split()  # shuffled once, with a fixed seed; read in order below
    iterations = cfg.max_epochs * -(-len(train_set) // 32)  # batches of 32, the last one partial

    model = Net()

    def warmup_cosine(optimizer):
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations - cfg.warmup)
        return create_lr_scheduler_with_warmup(
            cosine, warmup_start_value=0.0, warmup_end_value=cfg.lr, warmup_duration=cfg.warmup
        )

    adam = ice.Optimizer(torch.optim.Adam, lr=cfg.lr, lr_scheduler=warmup_cosine)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(train_set, batch_size=32), tags="train")
    g.add("data", ice.DatasetNode(val_set, batch_size=256), tags="val")
    g.add("model", ice.ModuleNode(model, forward=lambda n, x: n.module(x["data"][0]), optimizers=adam))
    g.add("loss", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["model"], x["data"][1])))  # train and val
    g.add("accuracy", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["model"], x["data"][1])), tags="val")
    trainer = ice.Task(train=True, epochs=1, tags="train")
    evaluator = ice.Task(train=False, epochs=1, tags="val")
    optimizer = g["*/model"].optimizers[".*"]

    @trainer.engine.on(Events.ITERATION_COMPLETED(every=cfg.log_every))
    def log_training_loss(engine):
        print(f"epoch {engine.state.epoch} iteration {engine.state.iteration} loss {engine.state.output['loss']:.6f}")

    @evaluator.engine.on(Events.COMPLETED)
    def log_validation(engine):
        m = engine.state.metrics
        print(
            f"epoch {trainer.engine.state.epoch} validation accuracy {m['accuracy']:.6f} loss {m['loss']:.6f}",
            flush=True,
        )

    accuracy = lambda engine: engine.state.metrics["accuracy"]
    best = ModelCheckpoint(
        run_dir / "models",
        filename_prefix="best",
        n_saved=2,
        score_function=accuracy,
        score_name="accuracy",
        global_step_transform=global_step_from_engine(trainer.engine),
    )
    evaluator.engine.add_event_handler(Events.COMPLETED, best, {"model": model})
    evaluator.engine.add_event_handler(Events.COMPLETED, EarlyStopping(cfg.patience, accuracy, trainer.engine))

    tb = TensorboardLogger(log_dir=run_dir / "tb")
    tb.attach_output_handler(
        trainer.engine,
        Events.ITERATION_COMPLETED(every=cfg.log_every),
        tag="training",
        output_transform=lambda out: {"loss": out["loss"].item()},
    )
    tb.attach_output_handler(
        evaluator.engine,
        Events.COMPLETED,
        tag="validation",
        metric_names="all",
        global_step_transform=global_step_from_engine(trainer.engine),
    )
    tb.attach_opt_params_handler(trainer.engine, Events.ITERATION_STARTED, optimizer)

    g.run(
        [ice.Repeat([trainer, evaluator], times=cfg.max_epochs)],
        devices="cpu",
        out_dir=cfg.out_dir,
        run_id=run_id,
    )
    tb.close()
    print(f"trained {trainer.engine.state.epoch} epochs, {trainer.engine.state.iteration} iterations")
    print(f"kept: {', '.join(sorted(p.name for p in (run_dir / 'models').iterdir()))}")
    print(f"run directory: {run_dir}")
    return run_dir


if __name__ == "__main__":
    main(ice.config(Config))
