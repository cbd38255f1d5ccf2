"""A training run for the kill and preemption tests, started as a subprocess.

    python checkpoint_child.py OUT_DIR RUN_ID WORKERS [--slow-save SECONDS | --slow-write SECONDS]

Trains a small model with shuffle, random augmentation, dropout, Adam, an LR scheduler and
gradient accumulation, checkpointing every few iterations from a handler, and resumes with
resume_from="auto". Prints STARTED once training runs, WRITE-START / WRITE-END around every
checkpoint write (--slow-save stretches writes so that a kill can land inside one; --slow-write
waits before each write into the file, inside torch.save), and at the
end writes OUT_DIR/RUN_ID-final.pt with the final weights and optimizer state.
"""

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from ignite.engine import Events
from ignite.handlers import CosineAnnealingScheduler

import ice_ignite as ice


class Noisy(torch.utils.data.Dataset):
    """Random augmentation: every sample gets fresh noise from the global (or worker) RNG."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 6, generator=g)
        self.y = (self.x.sum(1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.1 * torch.randn(6), self.y[i]


def main() -> None:
    out_dir, run_id, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    slow = float(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] in ("--slow-save", "--slow-write") else 0.0
    if slow and sys.argv[4] == "--slow-write":  # slow inside torch's zip writer: each write of the file waits
        real_save = torch.save

        class SlowFile:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                time.sleep(slow)
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

        def slow_write(obj, f, *args, **kwargs):
            print("WRITE-START", flush=True)
            if isinstance(f, (str, Path)):
                with open(f, "wb") as opened:
                    real_save(obj, SlowFile(opened), *args, **kwargs)
            else:
                real_save(obj, SlowFile(f), *args, **kwargs)
            print("WRITE-END", flush=True)

        torch.save = slow_write
    elif slow:
        real_save = torch.save

        def slow_save(obj, f, *args, **kwargs):
            print("WRITE-START", flush=True)
            real_save(obj, f, *args, **kwargs)
            time.sleep(slow)
            print("WRITE-END", flush=True)

        torch.save = slow_save

    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.set_gradient_accumulate(2)
    g.add("data", ice.DatasetNode(Noisy(96), batch_size=8, shuffle=True, num_workers=workers), tags="train")
    g.add("data", ice.DatasetNode(Noisy(32), batch_size=16), tags="val")
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 2))
    spec = ice.Optimizer(
        torch.optim.Adam, lr=1e-2, lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    )
    node = g.add("net", ice.ModuleNode(net, forward=lambda n, x: n.module(x["data"][0]), optimizers=spec))
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    train = ice.Task(train=True, epochs=2, tags="train")
    # an ignite scheduler attached the ignite way: its state travels in the checkpoints (B8)
    cosine = CosineAnnealingScheduler(node.optimizers[".*"], "weight_decay", 0.0, 0.05, cycle_size=17)
    train.engine.add_event_handler(Events.ITERATION_STARTED, cosine)
    train.engine.add_event_handler(Events.ITERATION_COMPLETED(every=5), lambda e: g.save_checkpoint())
    train.engine.add_event_handler(Events.STARTED, lambda e: print("STARTED", flush=True))
    val = ice.Task(train=False, epochs=1, tags="val")
    g.run(
        [ice.Repeat([train, val, ice.SaveCheckpointTask()], times=3)],
        devices="cpu",
        out_dir=out_dir,
        run_id=run_id,
        resume_from="auto",
    )
    final = {
        "module": net.state_dict(),
        "optimizer": node.optimizers[".*"].state_dict(),
        "counters": g.global_counters.state_dict(),
    }
    torch.save(final, Path(out_dir) / f"{run_id}-final.pt")
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
