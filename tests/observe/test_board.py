"""What a run writes to TensorBoard, read back with the tensorboard package's own reader."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import classification_set
from ignite.metrics import Accuracy, Metric
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ice_ignite as ice


class Seen(Metric):
    """A metric whose value is a dict."""

    def reset(self):
        self.n = 0

    def update(self, output):
        self.n += len(output[1])

    def compute(self):
        return {"samples": self.n, "batches": self.n / 4}


def events(directory: Path) -> EventAccumulator:
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("board")
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(classification_set(40), batch_size=4), tags="train")  # 10 iterations an epoch
    g.add("data", ice.DatasetNode(classification_set(12, seed=1), batch_size=4), tags="val")
    spec = ice.Optimizer(
        torch.optim.SGD, lr=0.1, lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.9)
    )
    g.add("net", ice.ModuleNode(torch.nn.Linear(4, 3), forward=lambda n, x: n.module(x["data"][0]), optimizers=spec))
    g.add(
        "ce", ice.LossNode(forward=lambda n, x: (F.cross_entropy(x["net"], x["data"][1]), {"maxlogit": x["net"].max()}))
    )
    g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"], x["data"][1])), tags="val")
    g.add("seen", ice.MetricNode(Seen(), forward=lambda n, x: (x["net"], x["data"][1])), tags="val")
    g.init_grad_scaler(True, init_scale=8.0)
    g.set_gradient_accumulate(2)
    tasks = [
        ice.Repeat([ice.Task(train=True, epochs=1, tags="train"), ice.Task(train=False, epochs=1, tags="val")], times=2)
    ]
    run_dir = g.run(tasks, devices="cpu", out_dir=out, run_id="r", log_every=2, hparams={"lr": 0.1, "opt": "SGD"})
    return tasks[0].tasks[1], run_dir


def test_losses_aux_lr_and_scale_every_n_optimizer_steps(logged_run):
    _val, run_dir = logged_run
    acc = events(run_dir / "logs")
    tags = set(acc.Tags()["scalars"])
    assert {"train/ce/step", "train/ce/maxlogit/step", "lr/net", "grad_scale"} <= tags
    # 2 epochs of 10 iterations with accumulation 2 = 10 optimizer steps, logged at steps 2, 4, ..., 10
    assert [e.step for e in acc.Scalars("train/ce/step")] == [2, 4, 6, 8, 10]
    lrs = [e.value for e in acc.Scalars("lr/net")]
    assert lrs == pytest.approx([0.1 * 0.9**s for s in (2, 4, 6, 8, 10)])


def test_epoch_values_of_losses_and_metrics_against_train_steps(logged_run):
    val, run_dir = logged_run
    acc = events(run_dir / "logs")
    assert [e.step for e in acc.Scalars("train/ce")] == [5, 10]
    assert [e.step for e in acc.Scalars("val/acc")] == [5, 10]  # eval metrics, logged against steps.train
    assert [e.step for e in acc.Scalars("val/ce/maxlogit")] == [5, 10]
    assert acc.Scalars("val/acc")[-1].value == pytest.approx(val.engine.state.metrics["acc"])
    # a dict value: one scalar per key per epoch (state.metrics holds it whole and by key)
    assert [(e.step, e.value) for e in acc.Scalars("val/seen/samples")] == [(5, 12), (10, 12)]
    assert [(e.step, e.value) for e in acc.Scalars("val/seen/batches")] == [(5, 3), (10, 3)]


def test_hparams_are_recorded_with_the_final_metrics(logged_run):
    _val, run_dir = logged_run
    runs = [p for p in (run_dir / "logs").iterdir() if p.is_dir()]
    assert len(runs) == 1
    acc = events(runs[0])
    assert "val/acc" in acc.Tags()["scalars"]
    assert "_hparams_/session_start_info" in acc.summary_metadata


def test_no_board_outside_global_rank_0(tmp_path):
    g = ice.HyperGraph()
    g.add("n", ice.Node(forward=lambda n, x: n.board.add_scalar("x", 1.0, 0)))
    g.run(
        [ice.Task(train=False, steps=1)],
        devices="cpu",
        out_dir=tmp_path,
        run_id="r0",
        launcher=ice.Launcher(rank=1, world_size=1),
    )
    assert not list((tmp_path / "r0" / "logs").glob("events.*"))


def test_tasks_taking_turns_each_log_every_n_of_their_own_steps(tmp_path):
    """Two one-step train tasks in turn (a GAN's schedule), ``log_every=2``: each task's loss and
    learning rate reach the board at its own 2nd, 4th... step, as ``ITERATION_COMPLETED(every=2)``
    on each ignite trainer would; the global count alone would log one task only."""
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(torch.utils.data.TensorDataset(torch.randn(64, 3)), batch_size=8))
    for tag in ("A", "B"):
        net = torch.nn.Linear(3, 1)
        forward = lambda n, x: n.module(x["data"][0])
        g.add(f"net{tag}", ice.ModuleNode(net, forward, ice.Optimizer(torch.optim.SGD, lr=0.1)), tags=tag)
        g.add(f"loss{tag}", ice.LossNode(forward=lambda n, x, t=tag: x[f"net{t}"].pow(2).mean()), tags=tag)
    schedule = [ice.Repeat([ice.Task(train=True, steps=1, tags=t) for t in ("A", "B")], times=6)]
    run_dir = g.run(
        schedule,
        devices="cpu",
        out_dir=tmp_path,
        run_id="turns",
        outputs=ice.OutputOptions(log_every=2),
        progress=False,
    )
    acc = events(run_dir / "logs")
    # A's own steps 2, 4, 6 are global steps 3, 7, 11; B's are global 4, 8, 12
    assert [e.step for e in acc.Scalars("A/lossA/step")] == [3, 7, 11]
    assert [e.step for e in acc.Scalars("B/lossB/step")] == [4, 8, 12]
    assert [e.step for e in acc.Scalars("lr/netA")] == [3, 7, 11]


class Complex(Metric):
    """A metric whose value is a complex number: a Number, but not one a board can log."""

    def reset(self):
        self.n = 0

    def update(self, output):
        self.n += len(output[1])

    def compute(self):
        return complex(self.n, 1)


def test_a_complex_metric_value_is_left_out_and_the_others_are_logged(tmp_path):
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(classification_set(8), batch_size=4))
    g.add("z", ice.MetricNode(Complex(), forward=lambda n, x: x["data"]))
    g.add("seen", ice.MetricNode(Seen(), forward=lambda n, x: x["data"]))
    task = ice.Task(train=False, epochs=1)
    run_dir = g.run([task], devices="cpu", out_dir=tmp_path, run_id="c")  # float(complex) raised TypeError here
    assert task.engine.state.metrics["z"] == complex(8, 1)
    tags = set(events(run_dir / "logs").Tags()["scalars"])
    assert {"_/seen/samples", "_/seen/batches"} <= tags  # tags "*" are written "_"
    assert not any(tag.startswith("_/z") for tag in tags)


def test_the_record_checksum_is_tensorboardx_s():
    """The board frames each event as tensorboardX does: its masked CRC-32C, here computed in C."""
    import random

    from tensorboardX.record_writer import masked_crc32c as tensorboardx_crc

    from ice_ignite.observe.board import masked_crc32c

    rng = random.Random(0)
    for n in [*range(80), 1000, 4096]:
        data = bytes(rng.randrange(256) for _ in range(n))
        assert masked_crc32c(data) == tensorboardx_crc(data), n
