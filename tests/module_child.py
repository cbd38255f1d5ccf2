"""A ModuleNode in two gloo processes, run as a subprocess by tests/distributed/test_module_distributed.py.

    python module_child.py OUT_DIR RUN_ID MODE      # MODE: "heads" or "sync-batchnorm"

"heads": one module with two heads trained with unused_parameters="skip" and
parallel=ice.DDP(bucket_cap_mb=1, gradient_as_bucket_view=True), beside a BatchNorm ModuleNode
without sync_batchnorm. Task "b" trains head 2, task "a" head 1, task "c" head 2 on rank 0 and
head 1 on rank 1. Every rank writes OUT_DIR/RUN_ID-rank{r}.pt.
"sync-batchnorm": the BatchNorm ModuleNode with ice.DDP(sync_batchnorm=True) on the CPU.
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import ice_ignite as ice


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Linear(3, 4)
        self.head1 = torch.nn.Linear(4, 1)
        self.head2 = torch.nn.Linear(4, 1)

    def forward(self, x, head):
        return (self.head1 if head == 1 else self.head2)(torch.tanh(self.trunk(x)))


def main():
    out_dir, run_id, mode = sys.argv[1:4]
    torch.manual_seed(0)
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(data, batch_size=8, batch_size_in_total=True))
    bn = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    g.add(
        "bn",
        ice.ModuleNode(
            bn,
            forward=lambda n, x: n.module(x["data"][0]),
            parallel=ice.DDP(sync_batchnorm=mode != "heads"),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1),
        ),
    )
    g.add("bn_loss", ice.LossNode(forward=lambda n, x: x["bn"].pow(2).mean()))
    net = TwoHeads()
    g.add("head", ice.Node(forward=lambda n, x: 1), tags="a")
    g.add("head", ice.Node(forward=lambda n, x: 2), tags="b")
    g.add("head", ice.Node(forward=lambda n, x: 2 if n.launcher.rank == 0 else 1), tags="c")
    g.add(
        "net",
        ice.ModuleNode(
            net,
            forward=lambda n, x: n.module(x["data"][0], x["head"]),
            unused_parameters="skip",
            parallel=ice.DDP(bucket_cap_mb=1, gradient_as_bucket_view=True),
            optimizers=ice.Optimizer(torch.optim.Adam, lr=0.1, weight_decay=0.1),
        ),
    )
    g.add("mse", ice.LossNode(forward=lambda n, x: F.mse_loss(x["net"], x["data"][1])))
    result = {}

    def snapshot(key):
        def take(g):
            opt = g["*/net"].optimizers[".*"]
            result[key] = {
                "head2": net.head2.weight.detach().clone(),
                "trunk": net.trunk.weight.detach().clone(),
                **{k: v.clone() for k, v in opt.state[net.head2.weight].items()},
            }

        return take

    def save(g):
        node = g["*/net"]
        result["ddp"] = {
            "bucket_bytes_cap": node.ddp.bucket_bytes_cap,
            "gradient_as_bucket_view": node.ddp.gradient_as_bucket_view,
            "find_unused_parameters": node.ddp.find_unused_parameters,
        }
        result["batchnorm"] = type(bn[1]).__name__
        torch.save(result, Path(out_dir) / f"{run_id}-rank{node.launcher.rank}.pt")

    g.run(
        [
            ice.Task(train=True, steps=2, tags="b"),
            snapshot("after_b"),
            ice.Task(train=True, steps=3, tags="a"),
            snapshot("after_a"),
            ice.Task(train=True, steps=2, tags="c"),
            snapshot("after_c"),
            save,
        ],
        devices="cpu:0-1",
        out_dir=out_dir,
        run_id=run_id,
    )


if __name__ == "__main__":
    main()
