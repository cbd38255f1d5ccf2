"""Runs over streams and samplers for the data tests, started as subprocesses; also home of the
counting stream the tests share.

    python data_child.py OUT_DIR RUN_ID kill WORKERS
    python data_child.py OUT_DIR RUN_ID ranks WORKERS [--resume CHECKPOINT]

``kill``: one process trains a tiny model on a resumable counting stream (``WORKERS`` DataLoader
workers), checkpointing every 3 iterations, and resumes with ``resume_from="auto"``; prints
STARTED once training runs and writes OUT_DIR/RUN_ID-final.pt (elements consumed, weights).

``ranks``: two processes; a DatasetNode with a WeightedRandomSampler and one over the counting
stream (``WORKERS`` workers in each process), two eval tasks with a checkpoint between them; each
rank writes OUT_DIR/RUN_ID-rank<r>.pt with the batches it saw.
"""

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Events

import ice_ignite as ice
from ice_ignite.distributed.streams import stream_shard


class CountingStream(torch.utils.data.IterableDataset):
    """0 .. n-1, sharded over processes and DataLoader workers, resumable. Every element it
    produces is appended to ``log_dir/<pid>`` (when given), and ``produced`` counts them in this
    process."""

    def __init__(self, n, log_dir=None):
        self.n = n
        self.log_dir = log_dir
        self.produced = 0
        self._next = None  # the next element of this shard, once iterating
        self._resume = None  # where the next iteration starts (from load_state_dict)

    def __iter__(self):
        index, count = stream_shard()
        start = self._resume if self._resume is not None else index
        self._resume, self._next = None, start
        log = open(Path(self.log_dir) / str(os.getpid()), "a") if self.log_dir else None
        try:
            for i in range(start, self.n, count):
                self._next = i + count
                self.produced += 1
                if log:
                    log.write(f"{i}\n")
                    log.flush()
                yield i
        finally:
            if log:
                log.close()

    def state_dict(self):  # a loaded position not yet iterated from is still the position
        return {"next": self._resume if self._resume is not None else self._next}

    def load_state_dict(self, state):
        self._resume = state["next"]


class Recorder(ice.Node):
    """Keeps every element the graph consumed (checkpointed); raises if one comes twice in a pass."""

    def __init__(self, n, source="data"):
        super().__init__()
        self.n = n
        self.source = source
        self.seen = []

    def forward_impl(self, x):
        batch = x[self.source].tolist()
        this_pass = set(self.seen[len(self.seen) // self.n * self.n :])
        again = this_pass.intersection(batch)
        if again:
            raise AssertionError(f"elements produced twice in a pass: {sorted(again)}")
        self.seen += batch
        return batch

    def state_dict(self):
        return {"seen": list(self.seen)}

    def load_state_dict(self, state, strict=True):
        self.seen = list(state["seen"])


def kill(args):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(CountingStream(96), batch_size=4, num_workers=args.workers))
    recorder = g.add("rec", Recorder(96))
    net = torch.nn.Linear(1, 1)
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: n.module(x["data"].float().unsqueeze(1) / 96),
            optimizers=ice.Optimizer(torch.optim.Adam, lr=1e-2),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], torch.ones_like(x["net"]))))
    g.add("slow", ice.Node(update=lambda n: time.sleep(0.03)))
    train = ice.Task(train=True, steps=10)
    train.engine.add_event_handler(Events.ITERATION_COMPLETED(every=3), lambda e: g.save_checkpoint())
    train.engine.add_event_handler(Events.STARTED, lambda e: print("STARTED", flush=True))
    g.run(
        [ice.Repeat([train], times=3)],
        devices="cpu",
        out_dir=args.out_dir,
        run_id=args.run_id,
        resume_from="auto",
        progress=False,
    )
    torch.save({"seen": recorder.seen, "module": net.state_dict()}, Path(args.out_dir) / f"{args.run_id}-final.pt")


def ranks(args):
    g = ice.HyperGraph()
    sampler = torch.utils.data.WeightedRandomSampler(torch.linspace(0.1, 1.0, 30), num_samples=26)
    g.add("sampled", ice.DatasetNode(torch.utils.data.TensorDataset(torch.arange(30)), batch_size=3, sampler=sampler))
    g.add("stream", ice.DatasetNode(CountingStream(64), batch_size=4, num_workers=args.workers))
    records = g.add(
        "rec",
        ice.Node(forward=lambda n, x: n.batches.append((x["sampled"][0].tolist(), x["stream"].tolist())), batches=[]),
    )

    def save(g):  # in the schedule, so that every rank runs it
        rank = g["*/rec"].launcher.rank
        torch.save({"batches": records.batches}, Path(args.out_dir) / f"{args.run_id}-rank{rank}.pt")

    tasks = [ice.Task(train=False, steps=3), ice.SaveCheckpointTask(), ice.Task(train=False, steps=9), save]
    g.run(
        tasks,
        devices="cpu:0-1",
        out_dir=args.out_dir,
        run_id=args.run_id,
        resume_from=args.resume,
        progress=False,
        start_method="fork",
        seed=0,
    )  # forked workers: no second import of torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("run_id")
    p.add_argument("mode", choices=["kill", "ranks"])
    p.add_argument("workers", type=int)
    p.add_argument("--resume", default=None)
    args = p.parse_args()
    {"kill": kill, "ranks": ranks}[args.mode](args)


if __name__ == "__main__":
    main()
