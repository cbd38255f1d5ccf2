"""A ModuleNode's DDP options, unused_parameters="skip" and BatchNorm in two gloo processes
(issue 14, items 4, 5 and 10). Real processes, with a timeout."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

CHILD = Path(__file__).resolve().parents[1] / "module_child.py"
pytestmark = pytest.mark.slow


def child(out_dir, run_id, mode):
    return subprocess.run(
        [sys.executable, str(CHILD), str(out_dir), run_id, mode], capture_output=True, text=True, timeout=180
    )


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    proc = child(out, "heads", "heads")
    assert proc.returncode == 0, proc.stderr
    return proc, [torch.load(out / f"heads-rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_ddp_kwargs_reach_distributed_data_parallel(heads):
    _, ranks = heads
    for r in ranks:
        assert r["ddp"] == {
            "bucket_bytes_cap": 1024 * 1024,
            "gradient_as_bucket_view": True,
            "find_unused_parameters": True,
        }  # "skip" needs DDP to look for unused parameters


def test_skip_under_ddp_leaves_the_other_head_untouched_and_keeps_ranks_in_step(heads):
    _, ranks = heads
    for r in ranks:
        b, a = r["after_b"], r["after_a"]
        assert b["step"].item() == 2
        for key in ("head2", "step", "exp_avg", "exp_avg_sq"):  # task "a" never touched head 2 or its Adam state
            assert torch.equal(a[key], b[key]), key
        assert not torch.equal(a["trunk"], b["trunk"])
        # task "c": head 2 used on rank 0 only; DDP gives rank 1 the averaged gradient, so both step it
        assert r["after_c"]["step"].item() == 4
    for key in ("head2", "trunk", "exp_avg"):
        assert torch.equal(ranks[0]["after_c"][key], ranks[1]["after_c"][key]), key


def test_batchnorm_training_in_several_processes_without_sync_batchnorm_warns_once(heads):
    proc, ranks = heads
    assert proc.stderr.count("BatchNorm layer(s)") == 1, proc.stderr  # once, on local rank 0, in three train tasks
    assert (
        "ModuleNode '*/bn': BatchNorm layer(s) 1 (BatchNorm1d) of Sequential train with per-process batch "
        "statistics in this 2-process run. Pass sync_batchnorm=True" in proc.stderr
    )
    assert ranks[0]["batchnorm"] == "BatchNorm1d"


def test_sync_batchnorm_on_the_cpu_is_a_clear_error_before_any_step(tmp_path):
    proc = child(tmp_path, "sync", "sync-batchnorm")
    assert proc.returncode != 0
    assert (
        "ModuleNode '*/bn': sync_batchnorm=True, but torch 2.13.0+cpu's SyncBatchNorm trains only on GPUs "
        "(cuda, xpu, hpu) and this run is on cpu (layers 1)"
    ) in proc.stderr
    assert "SyncBatchNorm expected input tensor" not in proc.stderr  # torch's own error, mid-forward
