"""HyperGraph.run inside ignite's launchers (``idist.Parallel``): spawned workers, and a script
under torchrun; the process group is theirs, and ice_ignite joins it without destroying it. The
multi-process tests start 2 real gloo processes with a timeout."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ice_ignite.distributed.launcher import _group_devices, free_port, join

CHILD = Path(__file__).resolve().parents[1] / "idist_child.py"
sys.path.insert(0, str(CHILD.parent))
import idist_child  # noqa: E402


def run_child(cmd, timeout=120):
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc, time.monotonic() - start


def assert_the_group_was_freed_before_exit(proc):
    """Once idist.Parallel destroyed the group, nothing of ice_ignite held it: its threads (and rank
    0's TCPStore server) were gone at exit. A held group kept them, and a gloo thread releasing a
    collective's last tensor while Python shut down aborted rank 0 ("terminate called without an
    active exception") now and then, after correct results."""
    for rank in (0, 1):
        assert f"rank {rank}: communication threads at exit: []" in proc.stdout, proc.stdout[-3000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same graph and schedule in one process with the same global batch."""
    g, net = idist_child.build()
    seen = idist_child.train(g, tmp_path_factory.mktemp("single"), "single")
    assert seen["world_size"] == 1
    return net.state_dict()


def assert_two_ranks_trained_as_one_process(out, run_id, single):
    ranks = [torch.load(out / f"{run_id}-rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r, seen in enumerate(ranks):
        assert (seen["rank"], seen["world_size"], seen["local_rank"], seen["local_world_size"], seen["node_rank"]) == (
            r,
            2,
            r,
            2,
            0,
        )
        assert seen["parallel_local_rank"] == r  # what idist.Parallel passed to the function
        assert (seen["backend"], seen["device"]) == ("gloo", "cpu")
        # the group idist.Parallel created outlives g.run: an all-reduce of rank + 1 over both ranks
        assert seen["group_alive_after_run"] and seen["all_reduce"] == 3.0
    a, b = ranks[0]["final"], ranks[1]["final"]
    for key in a:
        assert torch.equal(a[key], b[key]), key  # DDP kept the ranks in step
        assert not torch.equal(a[key], ranks[0]["initial"][key]), key  # and they trained
        assert torch.allclose(a[key], single[key], rtol=0, atol=1e-6), key  # as one process with the global batch
    assert len(list((out / run_id / "ckpts").glob("ckpt-*.pt"))) == 1  # rank 0 wrote it, once


@pytest.mark.slow
def test_a_graph_runs_in_workers_that_idist_parallel_spawns(tmp_path, single):
    cmd = [sys.executable, str(CHILD), "spawn", str(tmp_path), "spawned", str(free_port())]
    proc, elapsed = run_child(cmd)
    assert_the_group_was_freed_before_exit(proc)
    assert "rank 0 of 2: done" in proc.stdout and "rank 1 of 2: done" in proc.stdout
    assert_two_ranks_trained_as_one_process(tmp_path, "spawned", single)
    assert elapsed < 110


@pytest.mark.slow
def test_a_script_with_idist_parallel_under_torchrun(tmp_path, single):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(CHILD),
        "torchrun",
        str(tmp_path),
        "torchrun",
    ]
    proc, elapsed = run_child(cmd)
    assert_the_group_was_freed_before_exit(proc)
    assert "rank 0 of 2: done" in proc.stdout and "rank 1 of 2: done" in proc.stdout
    assert_two_ranks_trained_as_one_process(tmp_path, "torchrun", single)
    assert elapsed < 110


def test_a_group_the_user_created_is_joined_and_left_initialised(tmp_path, monkeypatch):
    """torch.distributed.init_process_group before run (one process, so that it runs in the test's)."""
    import torch.distributed as dist

    monkeypatch.setenv("LOCAL_RANK", "0")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        g, _net = idist_child.build()
        seen = idist_child.train(g, tmp_path, "user")
        assert (seen["rank"], seen["world_size"], seen["local_world_size"], seen["backend"]) == (0, 1, 1, "gloo")
        assert dist.is_initialized()
        total = torch.tensor([2.0])
        dist.all_reduce(total)
        assert total.item() == 2.0
    finally:
        dist.destroy_process_group()
        import ignite.distributed as idist

        idist.sync()  # ignite adopted the group: tell it that it is gone


def test_run_in_a_group_that_exists_checks_devices_and_backend(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _group_devices("auto", "auto", "gloo", 1, 2) == [cpu, cpu]
    assert _group_devices("cpu", "gloo", "gloo", 0, 2) == [cpu, cpu]
    with pytest.raises(ValueError, match="dist_backend='nccl', but this process is local rank 0 of 2 .* 'gloo'"):
        _group_devices("cpu", "nccl", "gloo", 0, 2)
    with pytest.raises(ValueError, match="local rank is out of range"):
        _group_devices("cpu", "auto", "gloo", 2, 2)
    with pytest.raises(ValueError, match="nccl needs one GPU of its own per process"):
        _group_devices("cpu", "auto", "nccl", 0, 2)
    # with CUDA (pretended: no GPU is touched), each local rank gets its own GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    gpus = [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert _group_devices("auto", "auto", "nccl", 1, 2) == gpus
    assert _group_devices("cuda", "auto", "cpu:gloo,cuda:nccl", 0, 2) == gpus
    assert _group_devices("cuda:0-1", "auto", "gloo", 0, 2) == gpus
    with pytest.raises(ValueError, match=r"on CUDA device\(s\) \[2\], but this machine has 2"):
        _group_devices("auto", "auto", "nccl", 0, 3)


def test_a_worker_environment_without_the_local_world_size_is_a_clear_error(monkeypatch):
    import torch.distributed as dist

    assert not dist.is_initialized()
    for key in ("LOCAL_WORLD_SIZE", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(RuntimeError, match="local rank 1 is not below the 1 processes per machine"):
        join("cpu")
    assert not dist.is_initialized()
