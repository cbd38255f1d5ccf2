"""One small run for tests/distributed/test_fsdp.py, as a subprocess.

    python fsdp_child.py OUT_DIR RUN_ID MODE DEVICES [LOAD]

MODE: "fsdp", "ddp" or "none" (the ModuleNodes' ``parallel``; in one process nothing is wrapped), or
"fsdp-ac-compile": "fsdp" with the encoder's blocks under activation checkpointing and its forward
compiled (backend aot_eager), or "fsdp-bf16": "fsdp" under bfloat16 autocast.
Two ModuleNodes (an encoder of blocks sharded block by block, with two Adam optimizers over regex
groups, and a head), gradient accumulation 2, clipping; 40 iterations (20 optimizer steps), a
checkpoint, an eval task; then 2 more optimizer steps without accumulation and another eval task. After the first eval
every rank writes OUT_DIR/RUN_ID-rank{r}.pt: the global mean loss of each iteration, the eval
loss, the full weights and optimizer states (``state_dict``), and the bytes of parameters and
optimizer state this rank holds; at the end OUT_DIR/RUN_ID-after-rank{r}.pt, all losses and eval
losses. With LOAD (a checkpoint file), the run loads its weights with
``g.load_checkpoint`` and only evaluates.
"""

import sys
from pathlib import Path

import ignite.distributed as idist
import torch
import torch.nn.functional as F
from ignite.engine import Events
from torch._dynamo.utils import counters

import ice_ignite as ice
from ice_ignite.distributed import parallel


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = torch.nn.Linear(width, width)

    def forward(self, x):
        return x + torch.tanh(self.lin(x))


class Encoder(torch.nn.Module):
    def __init__(self, width=12, depth=3):
        super().__init__()
        self.inp = torch.nn.Linear(6, width)
        self.blocks = torch.nn.Sequential(*(Block(width) for _ in range(depth)))
        self.proj = torch.nn.Linear(width, 5)  # 5 rows: uneven shards over 2 processes

    def forward(self, x):
        return self.proj(self.blocks(self.inp(x)))


def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return torch.utils.data.TensorDataset(x, x[:, :2].sum(1, keepdim=True) - x[:, 2:3])


def main():
    out_dir, run_id, mode, devices = sys.argv[1:5]
    load = sys.argv[5] if len(sys.argv) > 5 else None
    torch.manual_seed(0)
    enc, head = Encoder(), torch.nn.Linear(5, 1)
    fsdp = {}
    bf16 = mode == "fsdp-bf16"  # autocast: parameters gathered in bfloat16, gradients reduced in float32
    if bf16:
        mode = "fsdp"
    if mode == "fsdp-ac-compile":  # composed: blocks sharded and checkpointed, the encoder's forward compiled
        fsdp.update(activation_checkpointing=Block, compile={"backend": "aot_eager"})
        mode = "fsdp"
    strategy = {"fsdp": ice.FSDP(policy=Block), "ddp": ice.DDP(), "none": None}[mode]
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(data(64, 1), batch_size=8, shuffle=True, batch_size_in_total=True), tags="train")
    g.add("data", ice.DatasetNode(data(16, 2), batch_size=8, batch_size_in_total=True), tags="val")
    g.add(
        "enc",
        ice.ModuleNode(
            enc,
            forward=lambda n, x: n.module(x["data"][0]),
            parallel=strategy,
            **fsdp,
            optimizers={
                r"inp\..*|blocks\.0\..*": ice.Optimizer(torch.optim.Adam, lr=0.01, grad_clip_norm=0.05),
                (r"blocks\.[12]\..*", r"proj\..*"): ice.Optimizer(torch.optim.Adam, lr=0.02, weight_decay=0.01),
            },
        ),
    )
    g.add(
        "head",
        ice.ModuleNode(
            head,
            forward=lambda n, x: n.module(torch.relu(x["enc"])),
            parallel=ice.FSDP() if strategy is not None and mode == "fsdp" else strategy,
            optimizers=ice.Optimizer(torch.optim.Adam, lr=0.01, grad_clip_norm=0.1),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["head"], x["data"][1])))
    losses, evals = [], []

    def record(into):
        def forward(n, x):
            loss = x["mse"].detach().clone()
            into.append((idist.all_reduce(loss) / idist.get_world_size()).item())

        return forward

    g.add("record", ice.Node(forward=record(losses)), tags="train")
    g.add("record", ice.Node(forward=record(evals)), tags="val")
    g.set_gradient_accumulate(2)
    if bf16:
        g.init_autocast(True, torch.bfloat16)
    synced = []  # per train iteration: whether the sharded parameters hold gradients after the backward

    def after_backward(engine):
        synced.append(all(p.grad is not None for p in engine.hypergraph["*/enc"].trainable_parameters()))

    g.on(ice.StepEvents.BACKWARD_COMPLETED, after_backward, train=True)
    mid_cycle = []  # what the encoder's state_dict does after the first micro-batch of a cycle

    def state_mid_cycle(engine):
        try:
            engine.hypergraph["*/enc"].state_dict()
            mid_cycle.append(None)
        except ice.GraphError as e:
            mid_cycle.append(str(e))

    g.on(Events.ITERATION_COMPLETED(once=1), state_mid_cycle, train=True)

    def save(g):
        rank = idist.get_rank()
        nodes = {name: g[f"*/{name}"] for name in ("enc", "head")}
        held = []
        for node in nodes.values():
            held += list(node.module.parameters())
            held += [
                v
                for opt in node.optimizers.values()
                for st in opt.state.values()
                for v in st.values()
                if isinstance(v, torch.Tensor) and v.dim() > 0
            ]
        result = {
            "losses": losses,
            "evals": evals,
            "synced": synced,
            "mid_cycle": mid_cycle,
            "bytes": parallel.local_bytes(held),
            "state": {name: node.state_dict() for name, node in nodes.items()},
            "compiled_graphs": counters["stats"]["unique_graphs"],
            "sharded": [node.sharded for node in nodes.values()],
            "wrapper": type(nodes["enc"].ddp).__name__,
        }
        torch.save(result, Path(out_dir) / f"{run_id}-rank{rank}.pt")

    def save_after(g):  # training again after an evaluation (a forward without backward through FSDP's root)
        torch.save({"losses": losses, "evals": evals}, Path(out_dir) / f"{run_id}-after-rank{idist.get_rank()}.pt")

    if load is not None:
        g.load_checkpoint(load, tags="*")
    train = [] if load else [ice.Task(train=True, steps=20, tags="train"), lambda g: g.save_checkpoint()]
    again = (
        []
        if load
        else [
            lambda g: g.set_gradient_accumulate(1),
            ice.Task(train=True, steps=2, tags="train"),
            ice.Task(train=False, epochs=1, tags="val"),
            save_after,
        ]
    )
    g.run(
        [*train, ice.Task(train=False, epochs=1, tags="val"), save, *again],
        devices=devices,
        out_dir=out_dir,
        run_id=run_id,
        progress=False,
    )


if __name__ == "__main__":
    main()
