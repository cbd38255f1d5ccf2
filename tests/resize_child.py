"""One run for tests/checkpoint/test_resize.py, as a subprocess: a checkpoint of one number of processes
resumed with another.

    python resize_child.py OUT_DIR RUN_ID DEVICES [RESUME_FROM]

Two epochs, each followed by an eval task, of 64 samples in global batches of 16 (``batch_size=16, batch_size_in_total=True``:
the same global batch whatever the number of processes), 4 iterations an epoch, a ModuleNode
sharded with ``parallel="fsdp"`` (a plain module in one process), Adam; a checkpoint after
iteration 6, in the middle of the second epoch. Rank 0 writes OUT_DIR/RUN_ID.pt: the global mean
loss of each iteration run, each epoch's LossNode average, the counters, and the full weights and
optimizer state at the end. With RESUME_FROM the run resumes from that checkpoint.
"""

import sys
from pathlib import Path

import ignite.distributed as idist
import torch
import torch.nn.functional as F
from fsdp_child import Block  # the block of tests/distributed/test_fsdp.py
from ignite.engine import Events

import ice_ignite as ice


def data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, :3].sum(1, keepdim=True))


def main():
    out_dir, run_id, devices = sys.argv[1:4]
    resume_from = sys.argv[4] if len(sys.argv) > 4 else None
    torch.manual_seed(0)
    net = torch.nn.Sequential(Block(8), Block(8), torch.nn.Linear(8, 1))
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(data(), batch_size=16, batch_size_in_total=True, shuffle=True), tags="train")
    g.add("data", ice.DatasetNode(data(16), batch_size=8, batch_size_in_total=True), tags="val")
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: n.module(x["data"][0]),
            parallel=ice.FSDP(policy=Block),
            optimizers=ice.Optimizer(torch.optim.Adam, lr=0.01),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    losses, epochs = {}, {}

    def record(n, x):
        loss = x["mse"].detach().clone()
        losses[n.task.engine.state.iteration] = (idist.all_reduce(loss) / idist.get_world_size()).item()

    g.add("record", ice.Node(forward=record), tags="train")
    train, val = ice.Task(train=True, epochs=1, tags="train"), ice.Task(train=False, epochs=1, tags="val")

    def on_iteration(engine):
        if engine.state.iteration == 6:
            engine.hypergraph.save_checkpoint()

    def on_epoch(engine):
        epochs[engine.state.epoch] = engine.state.metrics["mse"]

    train.engine.add_event_handler(Events.ITERATION_COMPLETED, on_iteration)
    train.engine.add_event_handler(Events.EPOCH_COMPLETED, on_epoch)

    def report(g):
        state = g["*/net"].state_dict()
        if idist.get_rank() == 0:
            torch.save(
                {"losses": losses, "epochs": epochs, "state": state, "counters": g.context.counters.state_dict()},
                Path(out_dir) / f"{run_id}.pt",
            )

    g.run(
        [ice.Repeat([train, val], times=2), report],
        devices=devices,
        out_dir=out_dir,
        run_id=run_id,
        progress=False,
        resume_from=resume_from,
    )


if __name__ == "__main__":
    main()
