"""A run that logs to the board every optimizer step, for the board's crash tests.

    python board_child.py OUT_DIR RUN_ID [--kill-after STEP] [--fsize-limit-at STEP]

Checkpoints every 10 iterations with resume_from="auto". --kill-after N: SIGKILLs itself 7
iterations after the checkpoint of step N (events logged after a checkpoint, then a crash).
--fsize-limit-at N: at step N lowers RLIMIT_FSIZE to just above the board's file size, so that
its later writes fail (EFBIG), and takes no checkpoints (they would fail too). Prints DONE.
"""

import os
import resource
import signal
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Events

import ice_ignite as ice


def main() -> None:
    out_dir, run_id = sys.argv[1], sys.argv[2]
    options = dict(zip(sys.argv[3::2], (int(v) for v in sys.argv[4::2])))
    kill_after, limit_at = options.get("--kill-after"), options.get("--fsize-limit-at")
    torch.manual_seed(0)
    g = ice.HyperGraph()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(80, 4, generator=gen)
    g.add("data", ice.DatasetNode(torch.utils.data.TensorDataset(x, (x.sum(1) > 0).long()), batch_size=4, shuffle=True))
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(4, 2),
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1),
        ),
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    train = ice.Task(train=True, epochs=3)

    def every(engine):
        step = g.global_counters.steps.train
        if limit_at is None and step % 10 == 0:
            g.save_checkpoint()
        if kill_after is not None and step == kill_after + 7:
            os.kill(os.getpid(), signal.SIGKILL)
        if limit_at is not None and step == limit_at:
            size = sum(p.stat().st_size for p in (Path(out_dir) / run_id / "logs").glob("events.out.tfevents.*"))
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 300, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    train.engine.add_event_handler(Events.ITERATION_COMPLETED, every)
    g.run([train], devices="cpu", out_dir=out_dir, run_id=run_id, resume_from="auto", log_every=1, progress=False)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
