"""What a checkpoint costs: ``save_checkpoint`` of a 50 M-parameter model against a hand-written
``torch.save`` of the same state, in one process, interleaved repeats, medians.

    python benchmarks/checkpoint_cost.py [--repeats 9] [--json]

Variants, each repeat in this order, every file deleted after it is timed:

* ``torch.save``: ``torch.save({"net": node.state_dict()}, path)``, what a script writes by hand;
* ``torch.save + fsync``: the same, then the file and its directory flushed to disk (what a
  checkpoint that survives a power cut needs, and what ``save_checkpoint`` does);
* ``save_checkpoint``: the whole checkpoint (counters, RNG streams, schedule, ...), durable: a
  temporary file, ``fsync``, rename, directory ``fsync``; every record with torch's CRC-32;
* ``save_checkpoint(async_=True)``: the stall (the call: state, CPU copy) and the whole write
  (the call, then waiting for the background write).

``make bench-checkpoint`` records the figures in results.json and RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import ice_ignite as ice


def build() -> tuple[ice.HyperGraph, ice.ModuleNode]:
    # 50 M parameters: 6 layers of 2887 x 2887
    net = torch.nn.Sequential(*[torch.nn.Linear(2887, 2887, bias=False) for _ in range(6)])
    g = ice.HyperGraph()
    node = g.add("net", ice.ModuleNode(net, forward=lambda n, x: 0, optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1)))
    return g, node


def _fsync(path: str | os.PathLike, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def measure(repeats: int = 9) -> dict:
    torch.set_num_threads(1)
    g, node = build()
    params = sum(p.numel() for p in node.module.parameters())
    times: dict[str, list[float]] = {
        k: [] for k in ("torch.save", "torch.save + fsync", "save_checkpoint", "async stall", "async total")
    }
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as out:

        def bare(i: int) -> None:
            torch.save({"net": node.state_dict()}, f"{out}/bare{i}.pt")

        def durable(i: int) -> None:
            torch.save({"net": node.state_dict()}, f"{out}/durable{i}.pt")
            _fsync(f"{out}/durable{i}.pt")
            _fsync(out, directory=True)

        def ours(i: int) -> None:
            g.save_checkpoint(save_to=f"{out}/ours{i}.pt")

        def in_background(i: int) -> float:
            t = time.perf_counter()
            g.save_checkpoint(save_to=f"{out}/async{i}.pt", async_=True)
            stall = time.perf_counter() - t
            g._checkpointer.wait()  # benchmark only: the next save or the run's end waits the same way
            return stall

        for i in range(-1, repeats):  # -1: warm-up, not recorded
            for name, fn in (("torch.save", bare), ("torch.save + fsync", durable), ("save_checkpoint", ours)):
                t = time.perf_counter()
                fn(i)
                elapsed = time.perf_counter() - t
                if i >= 0:
                    times[name].append(elapsed)
            t = time.perf_counter()
            stall = in_background(i)
            total = time.perf_counter() - t
            if i >= 0:
                times["async stall"].append(stall)
                times["async total"].append(total)
            for f in Path(out).iterdir():
                f.unlink()
    med = {k: statistics.median(v) for k, v in times.items()}
    # per repeat, against the hand-written save of the same repeat, then the median of those ratios
    paired = {k: statistics.median(a / b for a, b in zip(times[k], times["torch.save"])) for k in times}
    return {
        "parameters": params,
        "weights_mb": params * 4 / 2**20,
        "repeats": repeats,
        "median_s": med,
        "ratio_to_torch_save": paired,
        "ratio_to_torch_save_fsync": {
            k: statistics.median(a / b for a, b in zip(times[k], times["torch.save + fsync"])) for k in times
        },
        "async_stall_over_sync": statistics.median(
            a / b for a, b in zip(times["async stall"], times["save_checkpoint"])
        ),
        "times_s": times,
    }


def render(c: dict) -> list[str]:
    rows = [
        ("hand-written `torch.save`", "torch.save"),
        ("hand-written `torch.save` + `fsync` (file, directory)", "torch.save + fsync"),
        ("`save_checkpoint` (durable)", "save_checkpoint"),
        ("`save_checkpoint(async_=True)`: the stall", "async stall"),
        ("`save_checkpoint(async_=True)`: the whole write", "async total"),
    ]
    lines = [
        "## Checkpoint cost",
        "",
        f"`benchmarks/checkpoint_cost.py` (`make bench-checkpoint`): a {c['parameters'] / 1e6:.1f} M-parameter model "
        f"({c['weights_mb']:.0f} MB of weights), {c['repeats']} interleaved repeats in one process, 1 thread; "
        "ratios are medians of each repeat's time over the same repeat's hand-written save.",
        "",
        "| variant | median s | / `torch.save` | / `torch.save` + `fsync` |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        lines.append(
            f"| {label} | {c['median_s'][key]:.3f} | {c['ratio_to_torch_save'][key]:.2f} | "
            f"{c['ratio_to_torch_save_fsync'][key]:.2f} |"
        )
    lines += [
        "",
        f"The training stall of an asynchronous save is **{c['async_stall_over_sync']:.2f}** of a synchronous "
        "save (median of the per-repeat ratios).",
        "",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    results = measure(args.repeats)
    print(json.dumps(results) if args.json else "\n".join(render(results)))


if __name__ == "__main__":
    sys.exit(main())
