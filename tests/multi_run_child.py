"""A script that calls ``HyperGraph.run`` three times in a row, as pretrain → finetune → evaluate,
for tests/distributed/test_multi_run.py: run directly (each run() in the launching process starts 2 workers
that re-run this script) or under torchrun.

    python multi_run_child.py OUT_DIR [--devices cpu:0-1]
    python -m torch.distributed.run --nproc_per_node 2 multi_run_child.py OUT_DIR

After every run each process prints what run returned (rank, is_main); the main process of the
run, and only it, creates OUT_DIR/export-<i>.txt (mode "x": a second writer fails the script).
"""

import argparse
import os
from pathlib import Path

import ignite.distributed as idist
import torch
import torch.nn.functional as F

import ice_ignite as ice


def build():
    torch.manual_seed(0)
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    g = ice.HyperGraph()
    g.add(
        "data",
        ice.DatasetNode(
            torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8, batch_size_in_total=True
        ),
    )
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(3, 1),
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.05),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    return g


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--devices", default="cpu:0-1")
    args = p.parse_args()
    out = Path(args.out_dir)
    g = build()
    runs = [
        ("pretrain", [ice.Task(train=True, epochs=2), ice.SaveCheckpointTask()]),
        (None, [ice.Task(train=True, epochs=1)]),  # a fresh timestamped run directory
        ("evaluate", [ice.Task(train=False, epochs=1)]),
    ]
    for i, (run_id, tasks) in enumerate(runs):
        run_dir = g.run(tasks, devices=args.devices, out_dir=out, run_id=run_id, progress=False)
        world = run_dir.launcher.world_size
        line = (
            f"run {i}: pid {os.getpid()} rank {run_dir.rank} of {world} main {run_dir.is_main} "
            f"idist rank {idist.get_rank()} dir {run_dir.name}\n"
        )
        os.write(1, line.encode())  # one write: the processes share the pipe (print may write text and newline apart)
        if run_dir.is_main:
            with open(out / f"export-{i}.txt", "x") as f:
                f.write(f"{run_dir.name} {g['*/net'].module.weight.sum().item():.6f}\n")


if __name__ == "__main__":
    main()
