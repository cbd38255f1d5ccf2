"""A conditional GAN on scikit-learn's 8x8 digits, judged by the digits CNN of examples/digits.py.

    python examples/gan_digits.py                        # the full setting of docs/gallery.md
    python examples/gan_digits.py rounds=2 steps=20      # a quick look

Two ModuleNodes, a generator (noise + class -> image) and a discriminator (image + class -> real or
fake), are trained by two alternating train tasks, tagged "D" and "G": one optimizer step of the
discriminator, then one of the generator, as in a hand-written GAN loop. Each node is present in the
other's task too, without optimizers (frozen). Before that, a "clf" task trains the digits CNN on the
real images; after every round a "judge" task generates 100 images of each class and the CNN says
which class it sees. It prints the judge's accuracy: the share of generated images classified as the
class they were conditioned on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import matplotlib
import torch
import torch.nn.functional as F
from digits import Net, digits_split  # examples/digits.py: the judge's CNN and the data
from ignite.metrics import Accuracy

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt

import ice_ignite as ice


@dataclass
class Config:
    """Settings of examples/gan_digits.py (``key=value`` on the command line)."""

    rounds: int = field(default=30, metadata={"help": "rounds of `steps` D/G step pairs, each followed by the judge"})
    steps: int = field(default=100, metadata={"help": "discriminator and generator steps per round"})
    clf_epochs: int = field(default=10, metadata={"help": "epochs of the judge's CNN on the real digits"})
    batch_size: int = 64
    noise: int = field(default=32, metadata={"help": "size of the generator's noise vector"})
    hidden: int = 256
    lr: float = 2e-4
    seed: int = 0
    out_dir: str = "runs"
    run_id: str | None = None


class Generator(torch.nn.Module):
    """Noise and a class -> an 8x8 image with pixels in [0, 1]."""

    def __init__(self, noise: int, hidden: int, classes: int = 10):
        super().__init__()
        self.embed = torch.nn.Embedding(classes, noise)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2 * noise, hidden),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Linear(hidden, hidden),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Linear(hidden, 64),
            torch.nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, self.embed(y)], 1)).view(-1, 1, 8, 8)


class Discriminator(torch.nn.Module):
    """An 8x8 image and a class -> a logit: real (> 0) or generated."""

    def __init__(self, hidden: int, classes: int = 10):
        super().__init__()
        self.embed = torch.nn.Embedding(classes, 64)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(128, hidden),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(hidden, hidden),
            torch.nn.LeakyReLU(0.2),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(hidden, 1),
        )

    def forward(self, image: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image.flatten(1), self.embed(y)], 1)).squeeze(1)


def build_graph(cfg: Config) -> ice.HyperGraph:
    train_set, val_set = digits_split()
    gen, disc, cnn = Generator(cfg.noise, cfg.hidden), Discriminator(cfg.hidden), Net()
    adam = ice.Optimizer(torch.optim.Adam, lr=cfg.lr, betas=(0.5, 0.999))
    bce = F.binary_cross_entropy_with_logits
    g = ice.HyperGraph()

    # the judge: the digits CNN, trained on the real images ("clf"), checked on held-out ones ("val")
    g.add("real", ice.DatasetNode(train_set, batch_size=32, shuffle=True), tags="clf")
    g.add("real", ice.DatasetNode(val_set, batch_size=256), tags="val")
    classify = lambda n, x: n.module(x["real"][0])
    g.add("cnn", ice.ModuleNode(cnn, forward=classify, optimizers=ice.Optimizer(torch.optim.Adam, lr=2e-3)), tags="clf")
    g.add("cnn", ice.ModuleNode(cnn, forward=classify), tags="val")
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["cnn"], x["real"][1])), tags="clf")
    g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["cnn"], x["real"][1])), tags="val")

    # the GAN: real images with their classes, noise with random classes, the two networks
    g.add("real", ice.DatasetNode(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True), tags="D")
    draw = lambda n, x: (torch.randn(cfg.batch_size, cfg.noise), torch.randint(0, 10, (cfg.batch_size,)))
    for tag in ("D", "G"):
        g.add("cond", ice.Node(forward=draw), tags=tag)
    generate = lambda n, x: n.module(*x["cond"])
    g.add("fake", ice.ModuleNode(gen, forward=generate, optimizers=adam), tags="G")
    g.add("fake", ice.ModuleNode(gen, forward=generate), tags="D")  # frozen in D's task
    judge_both = lambda n, x: (n.module(*x["real"]), n.module(x["fake"], x["cond"][1]))
    g.add("critic", ice.ModuleNode(disc, forward=judge_both, optimizers=adam), tags="D")
    g.add("critic", ice.ModuleNode(disc, forward=lambda n, x: n.module(x["fake"], x["cond"][1])), tags="G")

    def d_loss(n, x):
        real, fake = x["critic"]
        return bce(real, torch.full_like(real, 0.9)) + bce(fake, torch.zeros_like(fake))  # one-sided label smoothing

    g.add("d_loss", ice.LossNode(forward=d_loss), tags="D")
    g.add("g_loss", ice.LossNode(forward=lambda n, x: bce(x["critic"], torch.ones_like(x["critic"]))), tags="G")

    # the judge's test: 100 generated images per class, fixed noise, classified by the CNN
    probe = torch.utils.data.TensorDataset(
        torch.randn(1000, cfg.noise, generator=torch.Generator().manual_seed(1)), torch.arange(1000) % 10
    )
    g.add("cond", ice.DatasetNode(probe, batch_size=500), tags="judge")
    g.add("fake", ice.ModuleNode(gen, forward=generate), tags="judge")
    g.add("cnn", ice.ModuleNode(cnn, forward=lambda n, x: n.module(x["fake"])), tags="judge")
    g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["cnn"], x["cond"][1])), tags="judge")
    return g


def look_at_samples(gen: Generator, real: torch.utils.data.TensorDataset, cfg: Config, png: str) -> tuple[float, float]:
    """Draw 8 samples of each class into ``png``; return the pixels' standard deviation within a class,
    averaged, for generated and for real images (a generator that ignores its noise scores 0)."""
    with torch.no_grad():
        images = gen(torch.randn(1000, cfg.noise), torch.arange(1000) % 10).view(100, 10, 64)
    x, y = real.tensors
    spread_real = sum(x[y == c].flatten(1).std(0).mean() for c in range(10)) / 10
    fig, axes = plt.subplots(8, 10, figsize=(5, 4))
    for i, ax in enumerate(axes.flat):
        ax.imshow(images[i // 10, i % 10].view(8, 8), cmap="gray_r", vmin=0, vmax=1)
        ax.axis("off")
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return images.std(0).mean().item(), float(spread_real)


def main(cfg: Config) -> dict[str, float]:
    torch.manual_seed(cfg.seed)  # the initial weights and the run's seed
    g = build_graph(cfg)
    clf, val = ice.Task(train=True, epochs=cfg.clf_epochs, tags="clf"), ice.Task(train=False, epochs=1, tags="val")
    d_step, g_step = ice.Task(train=True, steps=1, tags="D"), ice.Task(train=True, steps=1, tags="G")
    judge = ice.Task(train=False, epochs=1, tags="judge")

    def report() -> None:
        print(
            f"step {g.global_counters.steps.train:6d}  d_loss {d_step.engine.state.metrics['d_loss']:.3f}  "
            f"g_loss {g_step.engine.state.metrics['g_loss']:.3f}  judge accuracy {judge.engine.state.metrics['acc']:.3f}",
            flush=True,
        )

    start = time.perf_counter()
    run_dir = g.run(
        [
            clf,
            val,
            lambda: print(f"judge CNN: validation accuracy {val.engine.state.metrics['acc']:.4f}", flush=True),
            ice.Repeat([ice.Repeat([d_step, g_step], times=cfg.steps), judge, report], times=cfg.rounds),
            ice.SaveCheckpointTask(),
        ],
        devices="cpu",
        out_dir=cfg.out_dir,
        run_id=cfg.run_id,
        outputs=ice.OutputOptions(
            log_every=0
        ),  # per-step values need no extra tags: a one-step task logs its loss at every epoch end
        progress=False,  # a bar or a log line per one-step task would drown the report
    )
    result = {"cnn_accuracy": val.engine.state.metrics["acc"], "judge_accuracy": judge.engine.state.metrics["acc"]}
    result["spread"], result["spread_real"] = look_at_samples(
        g["G/fake"].module, digits_split()[0], cfg, str(run_dir / "samples.png")
    )
    print(
        f"pixel standard deviation within a class: generated {result['spread']:.3f}, real {result['spread_real']:.3f}; "
        f"samples drawn in {run_dir / 'samples.png'}"
    )
    print(
        f"generated digits classified as their class: {result['judge_accuracy']:.4f} "
        f"(judge CNN validation accuracy {result['cnn_accuracy']:.4f}) after {cfg.rounds * cfg.steps} D/G steps "
        f"({time.perf_counter() - start:.1f} s); run directory: {run_dir}"
    )
    return result


if __name__ == "__main__":
    main(ice.config(Config))
