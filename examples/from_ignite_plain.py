"""A typical pytorch-ignite training script, as its user would write it; examples/from_ignite.py is its port.

    python examples/from_ignite_plain.py                       # the full setting of docs/gallery.md
    python examples/from_ignite_plain.py max_epochs=3 run_id=x # a quick look

The digits CNN of examples/digits.py trained with `create_supervised_trainer`, validated every epoch
by `create_supervised_evaluator`, with a linear warm-up into a cosine schedule
(`create_lr_scheduler_with_warmup`), the two best models kept by `ModelCheckpoint` (scored by
validation accuracy), `EarlyStopping` on it, a `TensorboardLogger` and a `ProgressBar`. It writes
into OUT_DIR/RUN_ID/ (`models/`, `tb/`) and prints the training loss every `log_every` iterations,
the validation results of every epoch and the checkpoints it kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from digits import Net, digits_split  # examples/digits.py: the model and the data
from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
from ignite.handlers import (
    EarlyStopping,
    ModelCheckpoint,
    ProgressBar,
    TensorboardLogger,
    create_lr_scheduler_with_warmup,
    global_step_from_engine,
)
from ignite.metrics import Accuracy, Loss
from ignite.utils import manual_seed

import ice_ignite as ice  # for ice.config only: the same command line as the port


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
    manual_seed(cfg.seed)
    run_dir = Path(cfg.out_dir) / (cfg.run_id or time.strftime("%Y%m%d-%H%M%S"))
    train_set, val_set = digits_split()  # shuffled once, with a fixed seed; read in order below
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=32)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=256)

    model = Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    trainer = create_supervised_trainer(model, optimizer, F.cross_entropy)
    evaluator = create_supervised_evaluator(model, metrics={"accuracy": Accuracy(), "loss": Loss(F.cross_entropy)})

    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.max_epochs * len(train_loader) - cfg.warmup
    )
    warmup = create_lr_scheduler_with_warmup(
        cosine, warmup_start_value=0.0, warmup_end_value=cfg.lr, warmup_duration=cfg.warmup
    )
    trainer.add_event_handler(Events.ITERATION_STARTED, warmup)

    @trainer.on(Events.ITERATION_COMPLETED(every=cfg.log_every))
    def log_training_loss(engine):
        print(f"epoch {engine.state.epoch} iteration {engine.state.iteration} loss {engine.state.output:.6f}")

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):
        evaluator.run(val_loader)

    @evaluator.on(Events.COMPLETED)
    def log_validation(engine):
        m = engine.state.metrics
        print(f"epoch {trainer.state.epoch} validation accuracy {m['accuracy']:.6f} loss {m['loss']:.6f}", flush=True)

    accuracy = lambda engine: engine.state.metrics["accuracy"]
    best = ModelCheckpoint(
        run_dir / "models",
        filename_prefix="best",
        n_saved=2,
        score_function=accuracy,
        score_name="accuracy",
        global_step_transform=global_step_from_engine(trainer),
    )
    evaluator.add_event_handler(Events.COMPLETED, best, {"model": model})
    evaluator.add_event_handler(Events.COMPLETED, EarlyStopping(cfg.patience, accuracy, trainer))

    tb = TensorboardLogger(log_dir=run_dir / "tb")
    tb.attach_output_handler(
        trainer,
        Events.ITERATION_COMPLETED(every=cfg.log_every),
        tag="training",
        output_transform=lambda loss: {"loss": loss},
    )
    tb.attach_output_handler(
        evaluator,
        Events.COMPLETED,
        tag="validation",
        metric_names="all",
        global_step_transform=global_step_from_engine(trainer),
    )
    tb.attach_opt_params_handler(trainer, Events.ITERATION_STARTED, optimizer)
    ProgressBar().attach(trainer, output_transform=lambda loss: {"loss": loss})

    trainer.run(train_loader, max_epochs=cfg.max_epochs)
    tb.close()
    print(f"trained {trainer.state.epoch} epochs, {trainer.state.iteration} iterations")
    print(f"kept: {', '.join(sorted(p.name for p in (run_dir / 'models').iterdir()))}")
    print(f"run directory: {run_dir}")
    return run_dir


if __name__ == "__main__":
    main(ice.config(Config))
