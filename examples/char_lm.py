"""A GPT-style character language model on the standard library's own ``.py`` sources (no download).

    python examples/char_lm.py                                   # the full setting (~15 minutes on 2 CPU cores)
    python examples/char_lm.py steps=40 eval_every=20 width=64   # settings are key=value (--help lists them)
    python examples/char_lm.py run_id=lm resume_from=auto        # continue a run from its last checkpoint
    python examples/char_lm.py devices=cpu:0-1 parallel=fsdp     # two processes, parameters sharded

bf16 autocast, gradient accumulation, AdamW with a linear warm-up and a cosine decay, gradient clipping,
``compile=true`` as an option; a validation pass and a checkpoint every ``eval_every`` optimizer steps;
text sampled from the model at the end. Losses are in nats per character.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import ice_ignite as ice

# every character the model knows; any other character of the corpus becomes "?"
VOCAB = "\t\n" + "".join(chr(i) for i in range(32, 127))


def opt(default, help: str):
    """A setting with its ``--help`` text."""
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    """Settings of examples/char_lm.py (command line: key=value)."""

    megabytes: float = opt(4.0, "corpus size: the standard library's .py files in path order, cut here")
    context: int = opt(128, "characters the model sees")
    width: int = opt(128, "embedding width")
    depth: int = opt(4, "transformer blocks")
    heads: int = opt(4, "attention heads")
    batch_size: int = opt(16, "windows per micro-batch (per process)")
    grad_acc: int = opt(2, "micro-batches per optimizer step")
    steps: int = opt(500, "optimizer steps in all")
    eval_every: int = opt(50, "optimizer steps between validation + checkpoint")
    val_batches: int = opt(8, "validation batches (a fixed slice of the held-out text)")
    lr: float = opt(3e-3, "peak learning rate")
    warmup: int = opt(50, "warm-up steps (linear), then a cosine decay to 10 % of lr")
    weight_decay: float = opt(0.1, "AdamW's weight decay")
    clip: float = opt(1.0, "gradient norm clip")
    precision: str = opt("bf16", "bf16, fp16 (with a GradScaler) or fp32")
    compile: bool = opt(False, "torch.compile the model's forward")
    devices: str = opt("cpu", "cpu, cpu:0-1 (two processes), cuda:0, ...")
    parallel: str = opt("ddp", "with several processes: ddp or fsdp (sharded)")
    sample_chars: int = opt(400, "characters sampled at the end")
    seed: int = opt(0, "initial weights and data order")
    out_dir: str = opt("runs", "where run directories go")
    run_id: str | None = opt(None, "the run directory's name (default: a fresh timestamp)")
    resume_from: str | None = opt(None, "auto: continue run_id from its newest checkpoint")

    def __post_init__(self) -> None:
        for key, allowed in (("precision", ("bf16", "fp16", "fp32")), ("parallel", ("ddp", "fsdp"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r}: choose one of {', '.join(allowed)}")
        if self.steps % self.eval_every:
            raise ValueError(f"steps={self.steps} is not a multiple of eval_every={self.eval_every}")


def load_corpus(megabytes: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard library's ``.py`` files (tests and codec tables left out) in path order, cut at
    ``megabytes``, as character ids (uint8): (train, validation), every tenth file held out."""
    root, skip = os.path.dirname(os.__file__), {"site-packages", "test", "tests", "idlelib", "encodings"}
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in skip]
        files += [os.path.relpath(os.path.join(folder, n), root) for n in names if n.endswith(".py")]
    table = torch.full((256,), VOCAB.index("?"), dtype=torch.uint8)
    table[[ord(c) for c in VOCAB]] = torch.arange(len(VOCAB), dtype=torch.uint8)
    parts, size, limit = ([], []), 0, int(megabytes * 1e6)
    for i, name in enumerate(sorted(Path(f).as_posix() for f in files)):
        text = Path(root, name).read_text(encoding="utf-8", errors="replace")[: limit - size].encode("ascii", "replace")
        if text:
            parts[i % 10 == 9].append(table[torch.frombuffer(bytearray(text), dtype=torch.uint8).long()])
            size += len(text)
    return torch.cat(parts[0]), torch.cat(parts[1])


def decode(ids: torch.Tensor) -> str:
    return "".join(VOCAB[i] for i in ids.tolist())


class Windows(torch.utils.data.Dataset):
    """(input, target) pairs: ``context`` characters and the same shifted by one, every ``stride``."""

    def __init__(self, ids: torch.Tensor, context: int, stride: int = 1):
        self.ids, self.context, self.stride = ids, context, stride

    def __len__(self) -> int:
        return (len(self.ids) - self.context - 1) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.ids[i * self.stride : i * self.stride + self.context + 1].long()
        return chunk[:-1], chunk[1:]


class Block(torch.nn.Module):
    """Pre-norm causal self-attention and an MLP, each added to the residual stream."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.proj = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(torch.nn.Module):
    """Character embeddings + learned positions, ``depth`` blocks, a linear read-out to the vocabulary."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.tok = torch.nn.Embedding(len(VOCAB), cfg.width)
        self.pos = torch.nn.Parameter(torch.randn(cfg.context, cfg.width) * 0.02)
        self.blocks = torch.nn.Sequential(*(Block(cfg.width, cfg.heads) for _ in range(cfg.depth)))
        self.ln = torch.nn.LayerNorm(cfg.width)
        self.head = torch.nn.Linear(cfg.width, len(VOCAB), bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln(self.blocks(self.tok(ids) + self.pos[: ids.shape[1]])))


def lr_factor(step: int, cfg: Config) -> float:
    """Linear warm-up to 1 over ``cfg.warmup`` steps, then a cosine decay to 0.1 at ``cfg.steps``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def next_char_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per character, in nats (computed in float32)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def build_graph(cfg: Config, train_set, val_set, shuffle: bool = True) -> ice.HyperGraph:
    """The model, its data and its loss as a HyperGraph: tag "train" trains, tag "val" validates."""
    g = ice.HyperGraph()
    pin = cfg.devices.startswith("cuda")  # page-locked batches: faster copies to the GPU
    g.add("data", ice.DatasetNode(train_set, batch_size=cfg.batch_size, shuffle=shuffle, pin_memory=pin), tags="train")
    g.add("data", ice.DatasetNode(val_set, batch_size=cfg.batch_size), tags="val")
    optimizer = ice.Optimizer(
        torch.optim.AdamW,
        lr=cfg.lr,
        betas=(0.9, 0.95),
        weight_decay=cfg.weight_decay,
        grad_clip_norm=cfg.clip,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg)),
    )
    # FSDP: each block is sharded on its own, and so is the model (so that sample() can call it directly)
    parallel = {"ddp": ice.DDP(), "fsdp": ice.FSDP(policy=(Block, GPT))}[cfg.parallel]
    forward = lambda n, x: n.module(x["data"][0])
    g.add("gpt", ice.ModuleNode(GPT(cfg), forward, optimizer, parallel=parallel, compile=cfg.compile))
    g.add("ce", ice.LossNode(forward=lambda n, x: next_char_loss(x["gpt"], x["data"][1])))
    if cfg.precision != "fp32":
        g.init_autocast(autocast_dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision])
    g.set_gradient_accumulate(cfg.grad_acc)
    return g


@torch.no_grad()
def sample(model: torch.nn.Module, prompt: torch.Tensor, chars: int, seed: int, temperature: float = 0.8) -> str:
    """``chars`` characters drawn from the model, one at a time, after ``prompt`` (a window of ids)."""
    model.eval()
    device = next(model.parameters()).device
    ids, out, gen = prompt[None].long().to(device), [], torch.Generator().manual_seed(seed)
    for _ in range(chars):
        logits = model(ids[:, -prompt.numel() :])[0, -1].float().cpu()
        nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)
        out.append(nxt.item())
        ids = torch.cat([ids, nxt.to(device)[None]], 1)
    return decode(torch.tensor(out))


def main(cfg: Config) -> float:
    """Train as ``cfg`` says; returns the last validation loss (nats/char)."""
    train_ids, val_ids = load_corpus(cfg.megabytes)
    spread = (len(val_ids) - cfg.context - 1) // (cfg.val_batches * cfg.batch_size - 1)  # windows spread over it
    torch.manual_seed(cfg.seed)  # the initial weights and the run's seed
    g = build_graph(cfg, Windows(train_ids, cfg.context), Windows(val_ids, cfg.context, stride=spread))
    train = ice.Task(train=True, steps=cfg.eval_every, tags="train")
    val = ice.Task(train=False, epochs=1, tags="val")

    def report(g: ice.HyperGraph, launcher: ice.Launcher) -> None:
        if launcher.rank == 0:
            train_loss, val_loss = train.engine.state.metrics["ce"], val.engine.state.metrics["ce"]
            print(f"step {g.global_counters.steps.train:5d}  train {train_loss:.4f}  val {val_loss:.4f}", flush=True)

    def write_sample(g: ice.HyperGraph, launcher: ice.Launcher) -> None:
        text = sample(g["*/gpt"].module, val_ids[: cfg.context], cfg.sample_chars, cfg.seed)  # every rank (FSDP)
        if launcher.rank == 0:
            print(f"--- {cfg.sample_chars} characters sampled after a validation prompt ---\n{text}\n--- end ---")

    start = time.perf_counter()
    run_dir = g.run(
        [ice.Repeat([train, val, report, ice.SaveCheckpointTask()], times=cfg.steps // cfg.eval_every), write_sample],
        devices=cfg.devices,
        out_dir=cfg.out_dir,
        run_id=cfg.run_id,
        resume_from=cfg.resume_from,
        progress=False,
    )
    loss = val.engine.state.metrics.get("ce", float("nan"))
    if run_dir.is_main:
        steps, seconds = g.global_counters.steps.train, time.perf_counter() - start
        print(f"val loss {loss:.4f} nats/char after {steps} steps ({seconds:.0f} s); run directory: {run_dir}")
    return loss


if __name__ == "__main__":
    main(ice.config(Config))
