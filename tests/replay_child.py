"""A training script for tests/test_replay.py and tests/test_sweep.py: its settings from the command
line (``ice.config``), checkpoints after every epoch, its final weights in ``weights.pt`` of the run
directory. With ``REPLAY_KILL_AT_STEP=n`` in the environment, global rank 0 SIGKILLs the run after
optimizer step n: the process that started the workers (they die with it), then its own process group
(the test starts the script in a session of its own)."""

import dataclasses
import os
import signal

import torch
from conftest import linear_graph
from ignite.engine import Events

import ice_ignite as ice


@dataclasses.dataclass
class Config:
    lr: float = 0.1
    seed: int = 0
    times: int = 4
    devices: str = "cpu"
    out_dir: str = "runs"
    run_id: str | None = None


cfg = ice.config(Config)
g = linear_graph(lr=cfg.lr)
kill_at = int(os.environ.get("REPLAY_KILL_AT_STEP", "0"))


def kill(engine):
    if g.global_counters.steps.train == kill_at and g.context.launcher.rank == 0:
        if g.context.launcher.world_size > 1:  # the launching process first (its workers die with it)
            os.kill(os.getppid(), signal.SIGKILL)
        os.killpg(os.getpgid(0), signal.SIGKILL)


if kill_at:
    g.on(Events.ITERATION_COMPLETED, kill, train=True)
train = ice.Task(train=True, epochs=1, tags="train")
schedule = [ice.Repeat([train, ice.Task(train=False, epochs=1, tags="val"), ice.SaveCheckpointTask()], times=cfg.times)]
run_dir = g.run(
    schedule, devices=cfg.devices, out_dir=cfg.out_dir, run_id=cfg.run_id, seed=cfg.seed, progress=False, config=cfg
)
if run_dir.is_main:
    torch.save(g["*/net"].module.state_dict(), run_dir / "weights.pt")
