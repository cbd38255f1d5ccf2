"""A script for tests/distributed/test_idist.py: ``HyperGraph.run`` inside a function that ignite's launcher
runs in every worker, the process group created by ``idist.Parallel``.

    python idist_child.py spawn OUT_DIR RUN_ID PORT     # idist.Parallel(backend="gloo", nproc_per_node=2)
    python -m torch.distributed.run --standalone --nproc_per_node=2 idist_child.py torchrun OUT_DIR RUN_ID
                                                        # idist.Parallel(backend="gloo"): torchrun's environment

Every rank writes OUT_DIR/RUN_ID-rank<R>.pt: what its nodes saw as ``n.launcher``, the final
weights, and whether the process group still worked after ``run`` returned. At exit (after
idist.Parallel destroyed the group) every rank prints the communication threads still alive:
none, as in a plain ignite script, once nothing holds the group.
"""

import atexit
import os
import sys
from pathlib import Path

import ignite.distributed as idist
import torch
import torch.distributed as dist
import torch.nn.functional as F

import ice_ignite as ice


def regression_set(n=48, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.arange(1.0, d + 1).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return torch.utils.data.TensorDataset(x, y)


def build():
    """tests/conftest.py's linear_graph with a global batch of 8 (4 a rank with 2 processes), shuffled."""
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(regression_set(), batch_size=8, shuffle=True, batch_size_in_total=True), tags="train")
    net = torch.nn.Linear(3, 1)
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.05, momentum=0.5),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    return g, net


def train(g, out_dir, run_id, devices="cpu"):
    """The schedule of every test: 2 epochs, a checkpoint, and what a node saw as its launcher."""
    seen = {}

    def record(g):
        launcher = g["*/net"].launcher
        seen.update(
            rank=launcher.rank,
            local_rank=launcher.local_rank,
            world_size=launcher.world_size,
            local_world_size=launcher.local_world_size,
            node_rank=launcher.node_rank,
            device=str(launcher.device),
            backend=launcher.backend,
        )

    g.run(
        [ice.Task(train=True, epochs=2, tags="train"), ice.SaveCheckpointTask(), record],
        devices=devices,
        out_dir=out_dir,
        run_id=run_id,
        progress=False,
    )
    return seen


#: threads of a process group (gloo's loop and workers) and of the TCPStore server (torch names them)
COMMUNICATION_THREADS = ("gloo", "pt_")


def report_threads_at_exit(rank):
    """Print the communication threads alive when the interpreter starts to exit. One of them
    releasing the last reference to a collective's tensor as Python shuts down aborts the process."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            names.append(f.read().strip())
    alive = sorted(n for n in names if n.startswith(COMMUNICATION_THREADS))
    print(f"rank {rank}: communication threads at exit: {alive}", flush=True)


def worker(local_rank, out_dir, run_id):
    """What idist.Parallel runs in every process: its group exists before ``g.run``."""
    atexit.register(report_threads_at_exit, idist.get_rank())  # runs after idist.Parallel destroyed the group
    g, net = build()
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    seen = train(g, out_dir, run_id)
    # ice_ignite did not create the group: it must still work (idist.Parallel destroys it later)
    alive = dist.is_initialized() and idist.get_world_size() == 2
    total = idist.all_reduce(torch.tensor([idist.get_rank() + 1.0])).item() if alive else None
    torch.save(
        {
            **seen,
            "parallel_local_rank": local_rank,
            "group_alive_after_run": alive,
            "all_reduce": total,
            "initial": initial,
            "final": {k: v.clone() for k, v in net.state_dict().items()},
        },
        Path(out_dir) / f"{run_id}-rank{idist.get_rank()}.pt",
    )
    print(f"rank {seen['rank']} of {seen['world_size']}: done, all_reduce {total}", flush=True)


def main():
    mode, out_dir, run_id = sys.argv[1:4]
    if mode == "spawn":  # ignite spawns the 2 workers and initialises their group
        with idist.Parallel(backend="gloo", nproc_per_node=2, master_port=int(sys.argv[4])) as parallel:
            parallel.run(worker, out_dir, run_id)
    elif mode == "torchrun":  # torchrun started this process; Parallel initialises the group from its environment
        with idist.Parallel(backend="gloo") as parallel:
            parallel.run(worker, out_dir, run_id)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
