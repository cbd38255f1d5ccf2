"""The same training written six ways, for the benchmarks.

Every variant trains the same tiny MLP (32-64-10) on the same fixed in-memory data (batches of 32,
no shuffling, SGD with momentum). The first four compute the same epoch statistics with the same
ignite metrics: the batch-size weighted mean loss (``Loss``) and the accuracy (``Accuracy``). The
last pair is the path a user meets first: ``g.run`` with its defaults (the loss's own metric, the
TensorBoard board, progress) against a bare ignite Engine with no metrics. Each ``run_*`` builds
everything afresh, trains ``epochs`` epochs and returns the final weights.
"""

from __future__ import annotations

import functools
import itertools
import tempfile

import torch
import torch.nn.functional as F

D, CLASSES, BATCH, HIDDEN = 32, 10, 32, 64


def data(iterations: int = 50) -> torch.utils.data.TensorDataset:
    """``iterations`` batches of fixed random data (the same first batches whatever the length)."""
    g = torch.Generator().manual_seed(0)
    n = iterations * BATCH
    x = torch.randn(n, D, generator=g)
    return torch.utils.data.TensorDataset(x, torch.randint(0, CLASSES, (n,), generator=g))


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))


def optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def metrics():
    """ignite's Loss (of an already computed loss) and Accuracy."""
    from ignite.metrics import Accuracy, Loss

    return Loss(lambda loss, n: loss, batch_size=lambda n: n), Accuracy()


def weights(net: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def run_torch(epochs: int, dataset) -> list[torch.Tensor]:
    """A hand-written PyTorch loop."""
    net = model()
    opt = optimizer(net.parameters())
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH)
    loss_metric, accuracy = metrics()
    for _ in range(epochs):
        loss_metric.reset()
        accuracy.reset()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            out = net(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            opt.step()
            with torch.no_grad():  # as ignite's Metric.iteration_completed does
                loss_metric.update((loss.detach(), len(y)))
                accuracy.update((out.detach(), y))
        loss_metric.compute(), accuracy.compute()  # the epoch statistics
    return weights(net)


def ignite_trainer(net: torch.nn.Module, with_metrics: bool):
    """A hand-written ignite Engine training ``net``, with ignite's Loss and Accuracy attached
    (or no metric); its output is ``(out, y, loss)``, detached."""
    from ignite.engine import Engine

    opt = optimizer(net.parameters())

    def step(engine, batch):
        x, y = batch
        opt.zero_grad(set_to_none=True)
        out = net(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        return out.detach(), y, loss.detach()

    trainer = Engine(step)
    if with_metrics:
        loss_metric, accuracy = metrics()
        loss_metric._output_transform = lambda o: (o[2], len(o[1]))
        accuracy._output_transform = lambda o: (o[0], o[1])
        loss_metric.attach(trainer, "ce")
        accuracy.attach(trainer, "acc")
    return trainer


def run_ignite(epochs: int, dataset, with_metrics: bool = True) -> list[torch.Tensor]:
    """A hand-written ignite Engine with ignite's Loss and Accuracy metrics."""
    net = model()
    ignite_trainer(net, with_metrics).run(torch.utils.data.DataLoader(dataset, batch_size=BATCH), max_epochs=epochs)
    return weights(net)


def run_ignite_bare(epochs: int, dataset) -> list[torch.Tensor]:
    """A hand-written ignite Engine with no metric: the same step and nothing else."""
    return run_ignite(epochs, dataset, with_metrics=False)


def ice_graph(net: torch.nn.Module, dataset, with_metrics: bool = True):
    """ice_ignite: a DatasetNode, a ModuleNode, a LossNode and (with metrics) a MetricNode."""
    from ignite.metrics import Accuracy

    import ice_ignite as ice

    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(dataset, batch_size=BATCH))
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.05, momentum=0.9),
        ),
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    if with_metrics:
        g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"].detach(), x["data"][1])))
    return g


def run_ice(epochs: int, dataset) -> list[torch.Tensor]:
    """ice_ignite's ``exec_tasks``: a DatasetNode, a ModuleNode, a LossNode and a MetricNode."""
    import ice_ignite as ice

    net = model()
    ice_graph(net, dataset).exec_tasks([ice.Task(train=True, epochs=epochs)], ice.Launcher())
    return weights(net)


RUNS = itertools.count()


@functools.cache
def out_dir() -> tempfile.TemporaryDirectory:
    """This process's directory for run directories (removed at exit)."""
    return tempfile.TemporaryDirectory(prefix="ice_ignite-bench-")


def run_ice_defaults(epochs: int, dataset) -> list[torch.Tensor]:
    """ice_ignite's ``g.run`` with its defaults (a run directory, logs, the TensorBoard board,
    progress, the loss's metric): a DatasetNode, a ModuleNode and a LossNode."""
    import ice_ignite as ice

    net = model()
    ice_graph(net, dataset, with_metrics=False).run(
        [ice.Task(train=True, epochs=epochs)], devices="cpu", out_dir=out_dir().name, run_id=f"run{next(RUNS)}"
    )
    return weights(net)


def run_lightning(epochs: int, dataset) -> list[torch.Tensor]:
    """PyTorch Lightning, updating the same ignite metrics in ``training_step``."""
    import logging

    import lightning as L

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    net = model()
    loss_metric, accuracy = metrics()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            out = self.net(x)
            loss = F.cross_entropy(out, y)
            with torch.no_grad():
                loss_metric.update((loss.detach(), len(y)))
                accuracy.update((out.detach(), y))
            return loss

        def on_train_epoch_start(self):
            loss_metric.reset()
            accuracy.reset()

        def on_train_epoch_end(self):
            self.epoch_stats = (loss_metric.compute(), accuracy.compute())

        def configure_optimizers(self):
            return optimizer(self.net.parameters())

    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Module(), torch.utils.data.DataLoader(dataset, batch_size=BATCH))
    return weights(net)


VARIANTS = {
    "torch loop": run_torch,
    "ignite Engine": run_ignite,
    "ice_ignite": run_ice,
    "Lightning": run_lightning,
    "ignite Engine bare": run_ignite_bare,
    "ice_ignite g.run defaults": run_ice_defaults,
}
# each ice_ignite variant and the ignite Engine it is measured against
PAIRS = {"ice_ignite": "ignite Engine", "ice_ignite g.run defaults": "ignite Engine bare"}


def available() -> dict:
    """The variants whose packages are installed (Lightning is optional)."""
    try:
        import lightning
    except ImportError:
        return {k: v for k, v in VARIANTS.items() if k != "Lightning"}
    del lightning
    return dict(VARIANTS)
