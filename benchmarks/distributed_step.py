"""Per-iteration time of the same training on 1 and 2 CPU processes (gloo).

    python benchmarks/distributed_step.py            # prints a table
    python benchmarks/distributed_step.py --worker   # (internal) one measured run

An MLP (784-1024-1024-10, 1.8 M parameters) trains on a fixed global batch of 64 random samples;
the 2-process run gives each process half of every batch. Iterations 21..120 are timed on rank 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from ignite.engine import Events

import ice_ignite as ice


def worker(devices: str, out: str) -> None:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64 * 120, 784), torch.randint(0, 10, (64 * 120,)))
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(data, batch_size=64, batch_size_in_total=True))
    net = torch.nn.Sequential(
        torch.nn.Linear(784, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    )
    g.add(
        "net",
        ice.ModuleNode(
            net, forward=lambda n, x: n.module(x["data"][0]), optimizers=ice.Optimizer(torch.optim.SGD, lr=0.01)
        ),
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    task = ice.Task(train=True, epochs=1)
    stamps = []
    task.engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: stamps.append(time.perf_counter()))

    def report(g):
        if g["*/net"].launcher.rank == 0:
            per_iter = (stamps[119] - stamps[19]) / 100
            with open(out, "w") as f:
                json.dump(
                    {"ms": per_iter * 1e3, "threads": torch.get_num_threads(), "world": g["*/net"].launcher.world_size},
                    f,
                )

    g.run([task, report], devices=devices, out_dir=os.path.join(os.path.dirname(out), "runs"))


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3])
        return
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for devices, threads in (("cpu", "1"), ("cpu", "2"), ("cpu:0-1", "1")):
            out = os.path.join(tmp, "result.json")
            env = dict(os.environ, OMP_NUM_THREADS=threads)
            subprocess.run(
                [sys.executable, __file__, "--worker", devices, out],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            with open(out) as f:
                rows.append((devices, json.load(f)))
    print("| processes | threads each | ms / iteration (global batch 64) |")
    print("|---|---|---|")
    for _devices, r in rows:
        print(f"| {r['world']} | {r['threads']} | {r['ms']:.2f} |")


if __name__ == "__main__":
    main()
