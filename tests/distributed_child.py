"""A training script for the multi-process tests, run as a subprocess: directly (run() starts the
workers), under torchrun, or with `python -c` (forked workers).

    python distributed_child.py OUT_DIR RUN_ID [--devices cpu:0-1] [--fail-rank R] [--max-restarts N]
        [--die-at-step S] [--nnodes N --node-rank R --master-port P] [--rdzv-endpoint H:P]
        [--tee T] [--omp-num-threads N] [--workers N]
        [--stuck-rank R --collective-timeout SECONDS]

Trains a small classifier with a global batch of 8 (batch_size_in_total) and evaluates it; global
rank 0 writes OUT_DIR/RUN_ID-result.pt with the final weights and the eval metrics. Every process
that gets past run() prints what run returned (its rank, whether it is the main process).
"""

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Events
from ignite.metrics import Accuracy

import ice_ignite as ice


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())


def build(args):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add(
        "data",
        ice.DatasetNode(data(64, 1), batch_size=8, shuffle=True, batch_size_in_total=True, num_workers=args.workers),
        tags="train",
    )
    g.add("data", ice.DatasetNode(data(30, 2), batch_size=4), tags="val")
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    extra = {}
    if args.unused:  # a branch the forward never uses
        net.add_module("unused", torch.nn.Linear(2, 2))
        extra["unused_parameters"] = args.unused
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: n.module[2](n.module[1](n.module[0](x["data"][0]))),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.2, momentum=0.5, weight_decay=0.01),
            **extra,
        ),
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"], x["data"][1])), tags="val")

    def maybe_fail(n, x):
        launcher = n.launcher
        if launcher.rank == args.fail_rank and n.global_train_steps == 3:
            raise ValueError(f"planned failure on rank {launcher.rank}")
        if (
            args.die_at_step is not None
            and launcher.rank == 1
            and n.global_train_steps == args.die_at_step
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        ):
            os._exit(9)  # a crash: no exception, no clean-up

    g.add("fault", ice.Node(forward=maybe_fail), tags="train")
    if args.stuck_rank is not None:

        def stuck_forward(n, x):  # user code that blocks on one rank: the others wait in the all-reduce
            if n.launcher.rank == args.stuck_rank and n.global_train_steps == 3:
                time.sleep(40)

        g.add("stuck", ice.Node(forward=stuck_forward), tags="train")
    return g, net


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("run_id")
    p.add_argument("--devices", default="cpu:0-1")
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--die-at-step", type=int, default=None)
    p.add_argument("--max-restarts", type=int, default=0)
    p.add_argument("--nnodes", default="1:1")
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-port", type=int, default=None)
    p.add_argument("--rdzv-endpoint", default="")
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--slow", type=float, default=0.0, help="seconds of sleep per train iteration")
    p.add_argument("--unused", choices=["error", "zero"], default=None)
    p.add_argument("--tee", default="0")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the train data")
    p.add_argument("--stuck-rank", type=int, default=None, help="this rank sleeps 40 s in a forward at step 3")
    p.add_argument("--collective-timeout", type=float, default=None)
    p.add_argument("--omp-num-threads", type=int, default=None)
    args = p.parse_args()

    g, net = build(args)
    g.set_gradient_accumulate(args.accumulate)
    allreduces = []

    def count_allreduces(n):  # a DDP communication hook that counts the gradient all-reduces
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        ddp = n.hypergraph["*/net"].ddp
        if ddp is not None and not allreduces:
            allreduces.append(0)

            def hook(state, bucket):
                allreduces[0] += 1
                return allreduce_hook(state, bucket)

            ddp.register_comm_hook(None, hook)

    g.add(
        "probe",
        ice.Node(prepare=count_allreduces, update=lambda n: time.sleep(args.slow) if args.slow else None),
        tags="train",
    )
    train = ice.Task(train=True, epochs=3, tags="train")
    train.engine.add_event_handler(Events.ITERATION_COMPLETED(every=4), lambda e: g.save_checkpoint())
    val = ice.Task(train=False, epochs=1, tags="val")

    def save_result(g):  # in the schedule, so that forked workers run it too
        launcher = g["*/net"].launcher
        checksum = sum(p.double().sum().item() for p in net.parameters())
        print(
            f"rank {launcher.rank} of {launcher.world_size} (local {launcher.local_rank} of "
            f"{launcher.local_world_size}, node {launcher.node_rank}) on {launcher.device} with {launcher.backend}: done; all-reduces {allreduces[0] if allreduces else 0}; "
            f"board {type(g.context.board).__name__}; threads {torch.get_num_threads()}; weights {checksum:.12f}",
            flush=True,
        )
        if launcher.rank == 0:
            print(
                f"lock: {(g.context.run_dir / 'run.lock').read_text().strip()}; I am pid {os.getpid()}, child of "
                f"{os.getppid()}",
                flush=True,
            )
            torch.save(
                {
                    "module": net.state_dict(),
                    "metrics": dict(val.engine.state.metrics),
                    "steps": g.global_counters.steps.train,
                    "world_size": launcher.world_size,
                },
                Path(args.out_dir) / f"{args.run_id}-result.pt",
            )

    run_dir = g.run(
        [train, val, ice.SaveCheckpointTask(), save_result],
        devices=args.devices,
        out_dir=args.out_dir,
        run_id=args.run_id,
        resume_from="auto",
        launch=ice.LaunchOptions(
            max_restarts=args.max_restarts,
            nnodes=args.nnodes,
            node_rank=args.node_rank,
            master_port=args.master_port,
            rdzv_endpoint=args.rdzv_endpoint,
            rdzv_backend="c10d" if args.rdzv_endpoint else "static",
            tee=args.tee,
            omp_num_threads=args.omp_num_threads,
            collective_timeout=args.collective_timeout,
        ),
    )
    print(f"after run: pid {os.getpid()} rank {run_dir.rank} main {run_dir.is_main}", flush=True)


if __name__ == "__main__":
    main()
