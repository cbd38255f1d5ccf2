"""Real workloads (issue 25): ``examples/char_lm.py`` at its full model size, ice_ignite against the same
training written by hand (same model, initial weights, data order, bf16 autocast, gradient accumulation,
AdamW with warm-up + cosine, clipping). Writes the "Workloads" section of benchmarks/RESULTS.md
(``make bench-workloads``).

Pairs: eager and compiled in one process, and DDP on two gloo processes (a hand-written DDP loop with
``no_sync`` on the micro-batches that do not step). Each measurement runs in a fresh process (DDP: three,
the launcher and two workers), 1 thread per process; the variants are interleaved over the repeats and
the time per optimizer step is taken after ``--warmup`` steps (compilation, allocator). Both the minimum
and the median over the repeats are given. The eager single-process pair also checks that ice_ignite's
losses equal the hand-written loop's, bit for bit. PyTorch Lightning runs beside them when installed.

    python benchmarks/workloads.py [--repeats 3] [--steps 14] [--warmup 4]
    python benchmarks/workloads.py --variant ice-eager --steps 8       # one measurement, printed as JSON
    python benchmarks/workloads.py --render-only                       # RESULTS.md from workloads.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
import char_lm  # noqa: E402

SIZES = {
    "full": char_lm.Config(),  # the example's own defaults
    "tiny": char_lm.Config(megabytes=0.2, context=32, width=32, depth=1, heads=2, batch_size=4, grad_acc=2),
}


def setting(size: str, steps: int) -> char_lm.Config:
    """The example's settings at ``size``, its schedule over ``steps`` optimizer steps."""
    base = SIZES[size]
    return char_lm.Config(**{**base.__dict__, "steps": steps, "warmup": max(1, steps // 4), "eval_every": steps})


def ordered_data(cfg: char_lm.Config, steps: int, world: int = 1) -> torch.utils.data.Dataset:
    """The training windows of ``steps`` optimizer steps (on ``world`` processes) in one fixed random
    order, the same for every variant (each then reads it in order)."""
    windows = char_lm.Windows(char_lm.load_corpus(cfg.megabytes)[0], cfg.context)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(cfg.seed))
    return torch.utils.data.Subset(windows, order[: steps * cfg.grad_acc * cfg.batch_size * world].tolist())


class Clock:
    """Time stamps (wall clock and this process's CPU time) at the end of optimizer step ``warmup`` and of
    the last step (``steps``), the device synchronised first; and the micro-batch losses, read at the end
    (no host sync per step)."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.done = 0  # optimizer steps ended
        self.stamps: list[float] = []
        self.cpu_stamps: list[float] = []  # this process's CPU time: what a shared machine's load leaves alone
        self.losses: list[torch.Tensor] = []

    def step(self) -> None:
        """An optimizer step has ended."""
        self.done += 1
        if self.done in (self.warmup, self.steps):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.stamps.append(time.perf_counter())
            self.cpu_stamps.append(time.process_time())

    def result(self) -> dict:
        n = self.steps - self.warmup
        return {
            "s_per_step": (self.stamps[-1] - self.stamps[0]) / n,
            "cpu_s_per_step": (self.cpu_stamps[-1] - self.cpu_stamps[0]) / n if self.cpu_stamps else None,
            "losses": [float(x) for x in self.losses],
        }


def autocast_dtype(cfg: char_lm.Config) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)


# -- hand-written ------------------------------------------------------------------------------------------
def hand(cfg: char_lm.Config, data, warmup: int, rank: int | None = None) -> dict:
    """The training loop a user would write for char_lm on ``cfg.devices`` (one device); ``rank``: one
    process of a DDP run."""
    device = torch.device(cfg.devices.split(":0-")[0])
    torch.manual_seed(cfg.seed)
    model = char_lm.GPT(cfg).to(device)
    if cfg.compile:
        model.forward = torch.compile(model.forward)
    sampler = None
    if rank is not None:
        model = torch.nn.parallel.DistributedDataParallel(model)
        sampler = torch.utils.data.DistributedSampler(data, shuffle=False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: char_lm.lr_factor(step, cfg))
    dtype = autocast_dtype(cfg)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    pin = device.type == "cuda"
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, pin_memory=pin)
    k = cfg.grad_acc
    clock = Clock(warmup, len(loader) // k, device)
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
        if i % k == 0:
            opt.zero_grad(set_to_none=True)
        steps_now = i % k == k - 1
        with model.no_sync() if rank is not None and not steps_now else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = char_lm.next_char_loss(model(x), y)
            (loss / k if scaler is None else scaler.scale(loss / k)).backward()
        clock.losses.append(loss.detach())
        if steps_now:
            if scaler is not None:
                scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            if scaler is None:
                opt.step()
            else:
                scaler.step(opt)
                scaler.update()
            sched.step()
            clock.step()
    return clock.result()


def hand_ddp_worker(rank: int, size: str, steps: int, warmup: int, port: int) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    cfg = setting(size, steps)
    out = hand(cfg, ordered_data(cfg, steps, world=2), warmup, rank=rank)
    if rank == 0:
        print(json.dumps(out), flush=True)
    dist.destroy_process_group()


def hand_ddp(size: str, steps: int, warmup: int) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(hand_ddp_worker, args=(size, steps, warmup, port), nprocs=2)


# -- ice_ignite --------------------------------------------------------------------------------------------
def ice(cfg: char_lm.Config, data, warmup: int, out_dir: str | os.PathLike | None = None) -> dict | None:
    """The same training as ``examples/char_lm.py`` builds it (its graph, one train task) on
    ``cfg.devices``. Returns the result on global rank 0 (None elsewhere)."""
    from ignite.engine import Events

    import ice_ignite

    world = 2 if cfg.devices == "cpu:0-1" else 1
    steps = len(data) // (cfg.batch_size * cfg.grad_acc * world)
    torch.manual_seed(cfg.seed)
    g = char_lm.build_graph(cfg, data, data, shuffle=False)
    clock, out = None, {}

    def start(engine) -> None:
        nonlocal clock
        clock = Clock(warmup, steps, engine.hypergraph["*/gpt"].device)

    g.on(Events.STARTED, start, train=True)
    g.on(Events.ITERATION_COMPLETED, lambda e: clock.losses.append(e.state.output["ce"]), train=True)
    g.on(ice_ignite.StepEvents.OPTIM_STEP_COMPLETED, lambda e: clock.step(), train=True)

    def keep(g, launcher) -> None:
        if launcher.rank == 0:
            out.update(clock.result())

    g.run(
        [ice_ignite.Task(train=True, steps=steps, tags="train"), keep],
        devices=cfg.devices,
        out_dir=out_dir or os.environ.get("WORKLOADS_DIR", HERE / "out" / "workloads"),
        progress=False,
    )
    return out or None


# -- PyTorch Lightning (optional) --------------------------------------------------------------------------
def lightning(cfg: char_lm.Config, data, warmup: int) -> dict:
    import lightning as L

    class LM(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = char_lm.GPT(cfg)
            self.stamps, self.losses = [], []

        def training_step(self, batch, i):
            loss = char_lm.next_char_loss(self.model(batch[0]), batch[1])
            self.losses.append(loss.item())
            return loss

        def on_train_batch_end(self, outputs, batch, i):
            if (i + 1) % cfg.grad_acc == 0:  # an optimizer step ended this batch
                self.stamps.append(time.perf_counter())

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: char_lm.lr_factor(step, cfg))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    torch.manual_seed(cfg.seed)
    module = LM()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            precision="bf16-mixed",
            accumulate_grad_batches=cfg.grad_acc,
            gradient_clip_val=cfg.clip,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp,
        )
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=cfg.batch_size))
    clock = Clock(warmup, len(module.stamps), torch.device("cpu"))
    clock.stamps, clock.losses = [module.stamps[warmup - 1], module.stamps[-1]], module.losses
    return clock.result()


def lightning_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("lightning") is not None


# -- one measurement in this process -------------------------------------------------------------------------
def run_variant(variant: str, size: str, steps: int, warmup: int) -> None:
    """Measure ``variant`` and print its result as one JSON line (from rank 0)."""
    torch.set_num_threads(1)
    cfg = setting(size, steps)
    if variant == "hand-ddp":
        return hand_ddp(size, steps, warmup)
    cfg.compile = variant.endswith("-compiled")
    if variant == "ice-ddp":
        cfg.devices = "cpu:0-1"
        out = ice(cfg, ordered_data(cfg, steps, world=2), warmup)
    elif variant in ("hand-eager", "hand-compiled"):
        out = hand(cfg, ordered_data(cfg, steps), warmup)
    elif variant in ("ice-eager", "ice-compiled"):
        out = ice(cfg, ordered_data(cfg, steps), warmup)
    elif variant == "lightning-eager":
        out = lightning(cfg, ordered_data(cfg, steps), warmup)
    if out is not None:
        print(json.dumps(out), flush=True)


def profile(variant: str, size: str, steps: int, warmup: int) -> str:
    """Where ``variant``'s CPU time goes: cProfile (timed by this process's CPU clock) of one
    measurement, its own time summed by package; a Markdown line."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile(time.process_time)
    prof.runcall(run_variant, variant, size, steps, warmup)
    groups: dict[str, float] = {}
    stats = pstats.Stats(prof, stream=io.StringIO())
    for (path, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        key = next(
            (k for k in ("ice_ignite", "ignite", "torch") if f"/{k}/" in path),
            "torch ops (C++)" if name.startswith("<built-in method") or name.startswith("<method") else "other Python",
        )
        groups[key] = groups.get(key, 0.0) + tottime
    total = sum(groups.values())
    parts = ", ".join(
        f"{k} {v:.2f} s ({100 * v / total:.1f} %)" for k, v in sorted(groups.items(), key=lambda x: -x[1])
    )
    return f"Profile of `{variant}` ({steps} steps, CPU time by package, own time): {parts}."


def measure(variant: str, size: str, steps: int, warmup: int) -> dict:
    """``variant`` in a fresh process: its result."""
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--size",
            size,
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"s_per_step"')]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[0])


PAIRS = {
    "eager, 1 process": ("hand-eager", "ice-eager"),
    "compiled, 1 process": ("hand-compiled", "ice-compiled"),
    "DDP, 2 gloo processes": ("hand-ddp", "ice-ddp"),
}
TARGETS = {"eager, 1 process": 1.02, "compiled, 1 process": 1.02, "DDP, 2 gloo processes": 1.03}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return (
        f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, ignite {__import__('ignite').__version__}, 1 thread per process"
    )


def render(results: dict) -> str:
    cfg, times = SIZES["full"], results["s_per_step"]
    lines = [
        "## Workloads",
        "",
        f"`benchmarks/workloads.py` (`make bench-workloads`): `examples/char_lm.py` at its full model size (context "
        f"{cfg.context}, width {cfg.width}, {cfg.depth} blocks, {cfg.heads} heads, micro-batches of {cfg.batch_size} "
        f"windows, {cfg.grad_acc} per optimizer step, bf16 autocast, AdamW + warm-up/cosine, clipping) against the "
        "same training written by hand. Time per optimizer step after "
        f"{results['warmup']} warm-up steps of {results['steps']} ({results['eager_steps']} for the eager pairs), "
        f"{results['repeats']} interleaved repeats, each "
        "in a fresh process. Compiled: `ModuleNode(compile=True)` against `torch.compile` of the forward. DDP: "
        "`devices=\"cpu:0-1\"` against a hand-written DDP loop (`DistributedSampler`, `no_sync` between steps), "
        "the same micro-batch per process.",
        "",
        f"Machine: {results['machine']}. {results.get('note', '')}".rstrip(),
        "",
        "| pair | hand s / step (min) | ice_ignite s / step (min) | wall ratio min | wall ratio median "
        "| CPU ratio min | CPU ratio median | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cpu = results.get("cpu_s_per_step", {})
    for name, (h, i) in PAIRS.items():
        if h in times and i in times:
            hm, im = min(times[h]), min(times[i])
            med = statistics.median(times[i]) / statistics.median(times[h])
            c_min = f"{min(cpu[i]) / min(cpu[h]):.3f}" if cpu.get(h) else ""
            c_med = f"{statistics.median(cpu[i]) / statistics.median(cpu[h]):.3f}" if cpu.get(h) else ""
            lines.append(
                f"| {name} | {hm:.3f} | {im:.3f} | {im / hm:.3f} | {med:.3f} | {c_min} | {c_med} | ≤ {TARGETS[name]} |"
            )
    if "lightning-eager" in times:
        lm, hm = min(times["lightning-eager"]), min(times["hand-eager"])
        lines.append(f"| PyTorch Lightning, eager | {hm:.3f} | Lightning {lm:.3f} | {lm / hm:.3f} |  |  |  |  |")
    else:
        lines.append("| PyTorch Lightning | not installed (the `bench` extra) |  |  |  |  |  |  |")
    same = results["identical_losses"]
    lines += [
        "",
        f"Losses: the first {same['compared']} micro-batch losses of ice_ignite (eager, 1 process) "
        f"{'equal' if same['equal'] else 'DIFFER from'} the hand-written loop's bit for bit in every repeat.",
        "",
    ]
    if results.get("profile"):
        lines += [results["profile"], ""]
    return "\n".join(lines)


def write_section(text: str) -> None:
    """Replace the Workloads section of RESULTS.md (or append it), leaving the others alone."""
    path = HERE / "RESULTS.md"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if "## Workloads" in old:
        head, rest = old.split("## Workloads", 1)
        tail = rest[rest.index("\n## ") + 1 :] if "\n## " in rest else ""
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=4, help="steps before the clock starts")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--variant")
    parser.add_argument("--only", nargs="*", help="measure these variants only")
    parser.add_argument("--render-only", action="store_true", help="rewrite the section from workloads.json")
    parser.add_argument("--profile", help="profile this variant in-process and print where its CPU time goes")
    parser.add_argument("--note", default="", help="a sentence on the conditions, written under the machine line")
    args = parser.parse_args()
    if args.variant:
        return run_variant(args.variant, args.size, args.steps, args.warmup)
    if args.profile:
        print(profile(args.profile, args.size, args.steps, args.warmup))
        return None
    store = HERE / "workloads.json"
    if args.render_only:
        results = json.loads(store.read_text())
    else:
        variants = args.only or [v for pair in PAIRS.values() for v in pair]
        if not args.only and lightning_installed():
            variants.append("lightning-eager")
        times: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        losses: dict[str, list[list[float]]] = {v: [] for v in variants}
        for r in range(args.repeats):
            for v in variants:
                steps = max(args.steps, 25) if v.endswith("-eager") else args.steps  # eager: 50 losses to compare
                out = measure(v, args.size, steps, args.warmup)
                times[v].append(out["s_per_step"])
                cpu[v].append(out["cpu_s_per_step"])
                losses[v].append(out["losses"][:50])
                print(
                    f"repeat {r + 1}/{args.repeats}  {v:16s} {out['s_per_step']:.4f} s/step, cpu {out['cpu_s_per_step']:.4f}",
                    flush=True,
                )
        compared = min(len(x) for x in losses.get("hand-eager", [[]]) + losses.get("ice-eager", [[]]))
        equal = bool(losses.get("ice-eager")) and all(a == b for a, b in zip(losses["hand-eager"], losses["ice-eager"]))
        results = {
            "machine": machine(),
            "note": args.note,
            "repeats": args.repeats,
            "steps": args.steps,
            "eager_steps": max(args.steps, 25),
            "warmup": args.warmup,
            "s_per_step": times,
            "cpu_s_per_step": cpu,
            "identical_losses": {"compared": compared, "equal": equal},
        }
        if args.size != "full":
            print(json.dumps(results))
            return None
        store.write_text(json.dumps(results, indent=1) + "\n")
    text = render(results)
    write_section(text)
    print(text)
    return None


if __name__ == "__main__":
    main()
