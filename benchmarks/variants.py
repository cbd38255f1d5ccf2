"""The same training written four ways, for the benchmarks.

Every variant trains the same tiny MLP (32-64-10) on the same fixed in-memory data (batches of 32,
no shuffling, SGD with momentum), and computes the same epoch statistics with the same ignite
metrics: the batch-size weighted mean loss (``Loss``) and the accuracy (``Accuracy``). Each
``run_*`` builds everything afresh, trains ``epochs`` epochs and returns the final weights.
"""

from __future__ import annotations

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


def run_ignite(epochs: int, dataset) -> list[torch.Tensor]:
    """A hand-written ignite Engine with ignite's Loss and Accuracy metrics."""
    from ignite.engine import Engine

    net = model()
    opt = optimizer(net.parameters())
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH)

    def step(engine, batch):
        x, y = batch
        opt.zero_grad(set_to_none=True)
        out = net(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        return out.detach(), y, loss.detach()

    trainer = Engine(step)
    loss_metric, accuracy = metrics()
    loss_metric._output_transform = lambda o: (o[2], len(o[1]))
    accuracy._output_transform = lambda o: (o[0], o[1])
    loss_metric.attach(trainer, "ce")
    accuracy.attach(trainer, "acc")
    trainer.run(loader, max_epochs=epochs)
    return weights(net)


def run_ice(epochs: int, dataset) -> list[torch.Tensor]:
    """ice_ignite: a DatasetNode, a ModuleNode, a LossNode and a MetricNode."""
    from ignite.metrics import Accuracy

    import ice_ignite as ice

    net = model()
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(dataset, batch_size=BATCH))
    g.add("net", ice.ModuleNode(net, forward=lambda n, x: n.module(x["data"][0]),
                                optimizers=ice.Optimizer(torch.optim.SGD, lr=0.05, momentum=0.9)))
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"].detach(), x["data"][1])))
    g.exec_tasks([ice.Task(train=True, epochs=epochs)], ice.Launcher())
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

    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Module(), torch.utils.data.DataLoader(dataset, batch_size=BATCH))
    return weights(net)


VARIANTS = {"torch loop": run_torch, "ignite Engine": run_ignite, "ice_ignite": run_ice, "Lightning": run_lightning}


def available() -> dict:
    """The variants whose packages are installed (Lightning is optional)."""
    try:
        import lightning
    except ImportError:
        return {k: v for k, v in VARIANTS.items() if k != "Lightning"}
    del lightning
    return dict(VARIANTS)
