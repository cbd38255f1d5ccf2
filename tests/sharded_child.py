"""Sharded checkpoints (ice_ignite.checkpoint.sharded) across world sizes, run by tests/distributed/test_fsdp.py.

    python sharded_child.py OUT_DIR RUN_ID DEVICES SAVE_TO [LOAD_FROM]

The encoder/head graph of fsdp_child.py with parallel="fsdp", two Adam optimizers (one with a StepLR scheduler).
Without LOAD_FROM: train 5 optimizer steps, save a sharded checkpoint to SAVE_TO. With LOAD_FROM:
train 1 step (the module is sharded in a multi-process run), load LOAD_FROM into it, save SAVE_TO,
train 3 more steps. Rank 0 writes OUT_DIR/RUN_ID.pt: the full states when saved / loaded / at the end.
"""

import copy
import sys
from pathlib import Path

import ignite.distributed as idist
import torch

import ice_ignite as ice
from ice_ignite.checkpoint import sharded

sys.path.insert(0, str(Path(__file__).parent))
from fsdp_child import Block, Encoder, data


def main():
    out_dir, run_id, devices, save_to = sys.argv[1:5]
    load_from = sys.argv[5] if len(sys.argv) > 5 else None
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(data(64, 1), batch_size=8, shuffle=True, batch_size_in_total=True))
    g.add(
        "enc",
        ice.ModuleNode(
            Encoder(),
            forward=lambda n, x: n.module(x["data"][0]),
            parallel=ice.FSDP(policy=Block),
            optimizers={
                r"inp\..*|blocks\.0\..*": ice.Optimizer(torch.optim.Adam, lr=0.01),
                r"blocks\.[12]\..*|proj\..*": ice.Optimizer(
                    torch.optim.AdamW, lr=0.02, lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 2)
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
    g.add("mse", ice.LossNode(forward=lambda n, x: torch.nn.functional.mse_loss(x["head"], x["data"][1])))
    result = {}

    def nodes(g):
        return {uid: g[uid] for uid in ("*/enc", "*/head")}

    def snapshot(key):
        def take(g):
            result[key] = copy.deepcopy({uid: node.state_dict() for uid, node in nodes(g).items()})  # not live
            result[key + "_sharded"] = [node.sharded for node in nodes(g).values()]

        return take

    def save(g):
        sharded.save(save_to, nodes(g), meta={"world": idist.get_world_size()})

    def load(g):
        result["meta"] = sharded.load(load_from, nodes(g))

    def write(g):
        if idist.get_rank() == 0:
            torch.save(result, Path(out_dir) / f"{run_id}.pt")

    if load_from is None:
        schedule = [ice.Task(train=True, steps=5), save, snapshot("saved"), write]
    else:
        schedule = [
            ice.Task(train=True, steps=1),
            load,
            snapshot("loaded"),
            save,
            ice.Task(train=True, steps=3),
            snapshot("end"),
            write,
        ]
    g.run(schedule, devices=devices, out_dir=out_dir, run_id=run_id, progress=False)


if __name__ == "__main__":
    main()
