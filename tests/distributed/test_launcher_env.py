"""Launcher helpers that need no second process: worker detection, device choice, sharding."""

import pytest
import torch

import ice_ignite as ice
from ice_ignite.distributed.launcher import _worker_device, in_worker, script_command


def test_in_worker_reads_the_environment(monkeypatch):
    for key in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert not in_worker()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert in_worker()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert in_worker()


@pytest.mark.parametrize(
    "devices, local_rank, local_world, expected",
    [("cpu:0-1", 1, 2, "cpu"), ("cpu", 1, 4, "cpu"), ("auto", 0, 2, "cuda:0" if torch.cuda.is_available() else "cpu")],
)
def test_worker_device(devices, local_rank, local_world, expected):
    assert _worker_device(devices, local_rank, local_world) == torch.device(expected)


def test_the_entry_point_of_an_installed_tool_is_not_rerun():
    assert script_command() is None  # under pytest, __main__ is pytest's: workers are forked


def shard_batches(world_size, batch_size, in_total, n=10, shuffle=True, drop_last=False):
    """The index batches every rank sees in one epoch, as if the run had ``world_size`` processes."""
    per_rank, scales = [], []
    for rank in range(world_size):
        g = ice.HyperGraph()
        g.add(
            "data",
            ice.DatasetNode(
                torch.utils.data.TensorDataset(torch.arange(n)),
                batch_size=batch_size,
                shuffle=shuffle,
                batch_size_in_total=in_total,
                drop_last=drop_last,
            ),
        )
        seen, scale = [], []
        g.add(
            "rec",
            ice.Node(
                forward=lambda node, x: (
                    seen.append(x["data"][0].tolist()),
                    scale.append(node.hypergraph["*/data"].last_loss_scale),
                )
            ),
        )
        g.exec_tasks([ice.Task(train=False, epochs=1)], ice.Launcher(rank=rank, world_size=world_size))
        per_rank.append(seen)
        scales.append(scale)
    return per_rank, scales


@pytest.mark.parametrize("in_total, batch_size", [(True, 4), (False, 2), (True, 5)])
def test_ranks_split_the_global_batches_of_one_process(in_total, batch_size):
    (single,), _ = shard_batches(1, batch_size if in_total else batch_size * 2, True)
    (r0, r1), (s0, s1) = shard_batches(2, batch_size, in_total)
    assert len(r0) == len(r1) == len(single)  # every rank runs the same number of iterations
    for a, b, whole in zip(r0, r1, single):
        assert sorted(a + b) == sorted(whole)  # each global batch is the single process's batch
    for k in range(len(single)):  # DDP's mean of the scaled rank means is the global batch's mean
        assert s0[k] == pytest.approx(2 * len(r0[k]) / len(single[k]))
        assert s1[k] == pytest.approx(2 * len(r1[k]) / len(single[k]))
        assert (s0[k] + s1[k]) / 2 == pytest.approx(1.0)


def test_a_tiny_last_batch_pads_so_that_every_rank_gets_a_sample():
    (r0, r1), _ = shard_batches(2, 3, True, n=7, shuffle=False)  # global batches of 3: last one has 1 sample
    assert r0 == [[0, 1], [3, 4], [6]] and r1 == [[2], [5], [0]]
