"""A two-process FSDP run whose checkpoints are sharded directories, for tests/checkpoint/test_sharded_run.py.
Started under torchrun (every process a worker; ``run`` joins):

    python -m torch.distributed.run --standalone --nproc_per_node 2 sharded_run_child.py OUT_DIR MODE [FILE]

MODE "ref": the run, uninterrupted (run_id "ref"). MODE "killed": the same run (run_id "killed"),
with rank 0 stalling inside the write of the third periodic checkpoint's state.pt, to be killed
there. MODE "resume": run "killed" again with resume_from="auto", then a fresh run "exported" with
resume_from=FILE. Every process writes OUT_DIR/<run_id>.pid<rank> when it starts; rank 0 writes
OUT_DIR/<run_id>-final.pt: the full weights and optimizer states at the end and the number of
``DTensor.full_tensor`` calls (gathers) the run made before that.

The graph: an encoder of two 256-wide blocks and a head, both ``parallel="fsdp"``, Adam (one with
a StepLR scheduler), clipping, gradient accumulation 2, shuffled data; a checkpoint every 4
iterations (n_saved=2), a validation MetricNode keeping its best checkpoint, a last checkpoint.
"""

import os
import sys
import time
from pathlib import Path

import ignite.distributed as idist
import torch
import torch.nn.functional as F
from fsdp_child import Block, Encoder, data  # the model of tests/distributed/test_fsdp.py, wider
from ignite.engine import Events
from ignite.metrics import Loss
from torch.distributed.tensor import DTensor

import ice_ignite as ice

WIDTH = 256  # tensors large enough that a shard file's size is its data, not its per-tensor headers
STALL_AT = 3  # the periodic checkpoint (1-based) whose write the "killed" run stalls in


def build():
    """The graph and its schedule (the same in every mode: a resume continues it)."""
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(data(64, 1), batch_size=8, shuffle=True, batch_size_in_total=True), tags="train")
    g.add("data", ice.DatasetNode(data(16, 2), batch_size=8, batch_size_in_total=True), tags="val")
    g.add(
        "enc",
        ice.ModuleNode(
            Encoder(WIDTH, depth=2),
            forward=lambda n, x: n.module(x["data"][0]),
            parallel=ice.FSDP(policy=Block),
            optimizers={
                r"inp\..*|blocks\.0\..*": ice.Optimizer(torch.optim.Adam, lr=0.002, grad_clip_norm=0.5),
                r"blocks\.1\..*|proj\..*": ice.Optimizer(
                    torch.optim.Adam, lr=0.004, lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5)
                ),
            },
        ),
    )
    g.add(
        "head",
        ice.ModuleNode(
            torch.nn.Linear(5, 1),
            forward=lambda n, x: n.module(torch.relu(x["enc"])),
            parallel=ice.FSDP(),
            optimizers=ice.Optimizer(torch.optim.Adam, lr=0.01),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["head"], x["data"][1])))
    g.add(
        "val_mse",
        ice.MetricNode(
            Loss(F.mse_loss),
            forward=lambda n, x: (x["head"], x["data"][1]),
            epoch_end=lambda n: n.save_best(n.value, higher_better=False, max_keep=1),
        ),
        tags="val",
    )
    g.set_gradient_accumulate(2)
    train = ice.Task(train=True, epochs=1, tags="train")  # 8 iterations: 4 optimizer steps
    train.engine.add_event_handler(Events.ITERATION_COMPLETED(every=4), lambda e: g.save_checkpoint())
    return g, [ice.Repeat([train, ice.Task(train=False, epochs=1, tags="val")], times=3), ice.SaveCheckpointTask()]


def stall_in_the_write(at, out):
    """Rank 0 sleeps once it wrote state.pt of the ``at``-th periodic checkpoint (inside its
    unpublished partial directory), so that the test can kill the run in the middle of a save; it
    writes that directory's path to OUT_DIR/stalled first."""
    real_save, seen = torch.save, []

    def save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        if (
            isinstance(f, (str, os.PathLike))
            and Path(f).name == "state.pt"
            and Path(f).parent.name.startswith(".ckpt-")
        ):
            seen.append(f)
            if len(seen) == at:
                Path(out, "stalled").write_text(str(Path(f).parent))
                time.sleep(300)

    torch.save = save


def count_gathers():
    calls = [0]
    real = DTensor.full_tensor

    def full_tensor(self, *args, **kwargs):
        calls[0] += 1
        return real(self, *args, **kwargs)

    DTensor.full_tensor = full_tensor
    return calls


def run(out, run_id, resume_from=None):
    Path(out, f"{run_id}.pid{os.environ['RANK']}").write_text(str(os.getpid()))  # torchrun's rank
    gathers = count_gathers()
    g, schedule = build()
    result = {}

    def final(g):
        result["gathers"] = gathers[0]  # before the gathers of this snapshot
        result["nodes"] = {uid: g[uid].state_dict() for uid in ("*/enc", "*/head")}  # full tensors
        result["counters"] = g.global_counters.state_dict()
        if idist.get_rank() == 0:
            torch.save(result, Path(out) / f"{run_id}-final.pt")

    g.run(
        [*schedule, final],
        devices="cpu:0-1",
        out_dir=out,
        run_id=run_id,
        n_saved=2,
        resume_from=resume_from,
        progress=False,
    )


def main():
    out, mode = sys.argv[1], sys.argv[2]
    if mode == "ref":
        run(out, "ref")
    elif mode == "killed":
        stall_in_the_write(STALL_AT, out)
        run(out, "killed")
    else:
        run(out, "killed", resume_from="auto")
        run(out, "exported", resume_from=sys.argv[3])


if __name__ == "__main__":
    main()
