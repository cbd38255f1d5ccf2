"""Large-model benchmarks (issue 16): steady-state time per optimizer step of ice_ignite against the
same training written by hand, (1) compiled (``ModuleNode(compile=...)`` against ``torch.compile`` of
the model's forward in a plain loop) and (2) sharded with FSDP2 in two gloo processes
(``parallel="fsdp"`` against ``fully_shard`` by hand, with the same per-block wrapping). Writes the
"Large models" section of benchmarks/RESULTS.md (``make bench`` runs it after bench.py).

Each variant runs in its own process (FSDP: two), times the steps after a warm-up (compilation,
allocator) with ``time.perf_counter`` from rank 0, and the variants are interleaved over repeats;
the minimum is reported.

    python benchmarks/large.py [--repeats 3] [--steps 200] [--backend inductor]
    python benchmarks/large.py --variant ice-fsdp --steps 200     # one measurement, printed as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
WARMUP = 20  # steps before the clock starts
WIDTH, DEPTH, BATCH = 256, 4, 64


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(WIDTH, WIDTH)

    def forward(self, x):
        return x + torch.tanh(self.lin(x))


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.Sequential(*(Block() for _ in range(DEPTH)))
        self.head = torch.nn.Linear(WIDTH, 1)

    def forward(self, x):
        return self.head(self.blocks(x))


def timed_steps(loader, model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    """A hand-written training loop over ``loader``: seconds per step after ``WARMUP`` steps."""
    start, steps = None, 0
    for i, (x, y) in enumerate(loader):
        if i == WARMUP:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(x), y).backward()
        opt.step()
        steps = i + 1
    return (time.perf_counter() - start) / (steps - WARMUP)


def dataset(n: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, WIDTH, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, :1] - x[:, 1:2])


# -- variants: each returns seconds per step after WARMUP steps -----------------------------------------
def hand(steps: int, backend: str | None) -> float:
    torch.manual_seed(0)
    model = Model()
    if backend:
        model.forward = torch.compile(model.forward, backend=backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset(BATCH * steps), batch_size=BATCH)
    return timed_steps(loader, model, opt)


def ice(steps: int, backend: str | None, devices: str = "cpu", parallel: str = "ddp") -> float:
    import ignite.distributed as idist
    from ignite.engine import Events

    import ice_ignite as ice_

    torch.manual_seed(0)
    g = ice_.HyperGraph()
    g.add("data", ice_.DatasetNode(dataset(BATCH * steps), batch_size=BATCH, batch_size_in_total=True))
    options = {"compile": {"backend": backend}} if backend else {}
    if parallel == "fsdp":
        options.update(parallel="fsdp", fsdp_policy=Block)
    g.add(
        "net",
        ice_.ModuleNode(
            Model(),
            forward=lambda n, x: n.module(x["data"][0]),
            **options,
            optimizers=ice_.Optimizer(torch.optim.Adam, lr=1e-3),
        ),
    )
    g.add("mse", ice_.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    clock = {}
    g.on(Events.ITERATION_COMPLETED(once=WARMUP), lambda e: clock.setdefault("start", time.perf_counter()))
    g.on(Events.COMPLETED, lambda e: clock.setdefault("end", time.perf_counter()), train=True)

    def report(g):
        if idist.get_rank() == 0:
            print(json.dumps({"s_per_step": (clock["end"] - clock["start"]) / (steps - WARMUP)}), flush=True)

    g.run(
        [ice_.Task(train=True, epochs=1), report],
        devices=devices,
        progress=False,
        outputs=ice_.OutputOptions(log_every=0),
        out_dir=os.environ.get("LARGE_BENCH_DIR", "runs"),
    )
    return float("nan")  # printed by rank 0


def hand_fsdp_worker(rank: int, steps: int, port: int) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Model()
    mesh = init_device_mesh("cpu", (2,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = dataset(BATCH * steps)
    sampler = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=rank, shuffle=False)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH // 2, sampler=sampler)
    seconds = timed_steps(loader, model, opt)
    if rank == 0:
        print(json.dumps({"s_per_step": seconds}), flush=True)
    dist.destroy_process_group()


def hand_fsdp(steps: int) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(hand_fsdp_worker, args=(steps, port), nprocs=2)


# -- the driver --------------------------------------------------------------------------------------------
def measure(variant: str, steps: int, backend: str) -> float:
    proc = subprocess.run(
        [sys.executable, __file__, "--variant", variant, "--steps", str(steps), "--backend", backend],
        capture_output=True,
        text=True,
        timeout=900,
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "LARGE_BENCH_DIR": os.environ.get("LARGE_BENCH_DIR", str(HERE / "out" / "large")),
        },
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
    values = [json.loads(line)["s_per_step"] for line in proc.stdout.splitlines() if line.startswith('{"s_per_step"')]
    if not values:
        values = [float(proc.stdout.strip().splitlines()[-1])]
    return values[0]


PAIRS = {"compiled": ("hand-compiled", "ice-compiled"), "fsdp (2 processes)": ("hand-fsdp", "ice-fsdp")}


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [
        "## Large models",
        "",
        f"`benchmarks/large.py`: a {DEPTH}-block MLP of width {WIDTH}, batches of {BATCH}, Adam; time per "
        f"optimizer step after {WARMUP} warm-up steps, {args.steps} steps, minimum of {args.repeats} interleaved "
        f"repeats, 1 thread per process. Compiled: backend `{args.backend}`, ice_ignite's "
        "`ModuleNode(compile=...)` against `torch.compile` of the model's forward in a plain loop. FSDP: two "
        "gloo processes, every block and then the model `fully_shard`ed, ice_ignite's `parallel=\"fsdp\"` "
        "against the same by hand (target: ice_ignite / hand ≤ 1.05).",
        "",
        "| pair | hand-written ms / step | ice_ignite ms / step | ice_ignite / hand |",
        "|---|---|---|---|",
    ]
    for name, (hand_name, ice_name) in PAIRS.items():
        h, i = min(results[hand_name]), min(results[ice_name])
        lines.append(f"| {name} | {h * 1e3:.3f} | {i * 1e3:.3f} | {i / h:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--variant", choices=["hand-compiled", "ice-compiled", "hand-fsdp", "ice-fsdp"])
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.variant == "hand-compiled":
        print(hand(args.steps, args.backend))
    elif args.variant == "ice-compiled":
        ice(args.steps, args.backend)
    elif args.variant == "hand-fsdp":
        hand_fsdp(args.steps)
    elif args.variant == "ice-fsdp":
        ice(args.steps, None, devices="cpu:0-1", parallel="fsdp")
    else:
        results: dict[str, list[float]] = {v: [] for pair in PAIRS.values() for v in pair}
        for _ in range(args.repeats):
            for variant in results:
                results[variant].append(measure(variant, args.steps, args.backend))
        text = report(results, args)
        print(text)
        if not args.no_write:
            path = HERE / "RESULTS.md"
            old = path.read_text() if path.exists() else ""
            head = old.split("## Large models")[0].rstrip("\n")
            path.write_text((head + "\n\n" if head else "") + text + "\n")


if __name__ == "__main__":
    main()
