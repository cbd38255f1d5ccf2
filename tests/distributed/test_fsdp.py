"""ModuleNode(parallel="fsdp"): FSDP2 in two gloo processes against DDP and one process (issue 16).
Real processes, with a timeout; the three runs of the fixture go at once."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import max_diff

import ice_ignite as ice
from ice_ignite.errors import CheckpointError

CHILD = Path(__file__).resolve().parents[1] / "fsdp_child.py"
PAGE = Path(__file__).resolve().parents[2] / "docs" / "large-models.md"
RUNS = {
    "fsdp": ("fsdp", "cpu:0-1"),
    "ddp": ("ddp", "cpu:0-1"),
    "single": ("fsdp", "cpu"),
    "composed": ("fsdp-ac-compile", "cpu:0-1"),
    "bf16": ("fsdp-bf16", "cpu:0-1"),
    "bf16-single": ("fsdp-bf16", "cpu"),
}


def start(out, run_id, mode, devices, *extra):
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(out), run_id, mode, devices, *map(str, extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc):
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    return err


def load(out, run_id, world):
    return [torch.load(out / f"{run_id}-rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    procs = {name: start(out, name, *spec) for name, spec in RUNS.items()}
    for proc in procs.values():
        finish(proc)
    return out, {name: load(out, name, 2 if devices != "cpu" else 1) for name, (_, devices) in RUNS.items()}


@pytest.mark.slow
def test_fsdp_ddp_and_one_process_train_alike(runs):
    _, r = runs
    fsdp, ddp, single = r["fsdp"][0], r["ddp"][0], r["single"][0]
    assert fsdp["wrapper"] == "FSDP_ShardedProxy" and fsdp["sharded"] == [True, True]
    assert ddp["wrapper"] == "DistributedDataParallel" and single["sharded"] == [False, False]
    assert len(single["losses"]) == 40  # 20 optimizer steps of 2 micro-batches
    for other in (ddp, single):
        assert max(abs(a - b) for a, b in zip(fsdp["losses"], other["losses"])) < 1e-5
        assert max(abs(a - b) for a, b in zip(fsdp["evals"], other["evals"])) < 1e-5
        assert max_diff(fsdp["state"], other["state"]) < 1e-5  # weights, Adam moments, steps (full tensors)
    assert max_diff(r["fsdp"][0]["state"], r["fsdp"][1]["state"]) == 0.0  # every rank gathers the same state


@pytest.mark.slow
def test_fsdp_trains_after_an_evaluation_as_ddp_and_one_process_do(runs):
    out, _ = runs
    fsdp, ddp, single = (torch.load(out / f"{name}-after-rank0.pt") for name in ("fsdp", "ddp", "single"))
    assert len(fsdp["losses"]) == 42 and len(fsdp["evals"]) == 4  # 2 more steps (no accumulation), eval again
    for other in (ddp, single):
        assert max(abs(a - b) for a, b in zip(fsdp["losses"], other["losses"])) < 1e-5
        assert max(abs(a - b) for a, b in zip(fsdp["evals"], other["evals"])) < 1e-5


@pytest.mark.slow
def test_fsdp_composes_with_activation_checkpointing_and_compile(runs):
    _, r = runs
    composed, single = r["composed"][0], r["single"][0]
    assert composed["sharded"] == [True, True] and composed["compiled_graphs"] >= 1
    assert single["compiled_graphs"] == 0
    assert max(abs(a - b) for a, b in zip(composed["losses"], single["losses"])) < 1e-5
    assert max(abs(a - b) for a, b in zip(composed["evals"], single["evals"])) < 1e-5
    assert max_diff(composed["state"], single["state"]) < 1e-5


@pytest.mark.slow
def test_fsdp_under_bf16_autocast_trains_as_one_process_does(runs):
    _, r = runs
    sharded, single = r["bf16"][0], r["bf16-single"][0]
    assert sharded["sharded"] == [True, True] and single["sharded"] == [False, False]
    # parameters gathered in bfloat16 and gradients reduced in float32 (the MixedPrecisionPolicy from
    # autocast): the losses follow the single process's bf16 run to bf16 rounding, not the float32 run's
    assert max(abs(a - b) for a, b in zip(sharded["losses"], single["losses"])) < 2e-2
    assert max(abs(a - b) for a, b in zip(sharded["losses"], r["fsdp"][0]["losses"])) > 1e-5
    assert max_diff(sharded["state"]["enc"]["module"], single["state"]["enc"]["module"]) < 2e-2


@pytest.mark.slow
def test_fsdp_holds_half_the_parameter_and_optimizer_bytes_of_ddp_per_rank(runs):
    _, r = runs
    for rank in (0, 1):
        ratio = r["fsdp"][rank]["bytes"] / r["ddp"][rank]["bytes"]
        assert 0.45 < ratio < 0.6, ratio  # 1/2, plus the padding of uneven shards (5-row and 1-row tensors)
    assert r["ddp"][0]["bytes"] == r["single"][0]["bytes"]


@pytest.mark.slow
def test_fsdp_accumulates_without_a_reduce_scatter_per_micro_batch(runs):
    _, r = runs
    # the sharded gradients appear at the last micro-batch of each cycle only: before, FSDP keeps them unsharded
    assert r["fsdp"][0]["synced"] == [False, True] * 20
    assert r["ddp"][0]["synced"] == [True] * 40  # DDP's parameters hold their (local) gradients all along


@pytest.mark.slow
def test_an_fsdp_state_in_the_middle_of_an_accumulation_cycle_is_refused(runs):
    _, r = runs
    for rank in (0, 1):
        assert r["fsdp"][rank]["mid_cycle"] == [
            "ModuleNode '*/enc': a checkpoint in the middle of a gradient accumulation cycle of a parallel='fsdp' "
            "module would lose the gradients accumulated so far (FSDP holds them unsharded); checkpoint at the end "
            "of a cycle (after a multiple of grad_acc_steps iterations) or use parallel='ddp'"
        ]
    assert r["ddp"][0]["mid_cycle"] == r["single"][0]["mid_cycle"] == [None]


@pytest.mark.slow
def test_an_fsdp_checkpoint_loads_into_one_process(runs):
    out, r = runs
    ckpt = next((out / "fsdp" / "ckpts").glob("ckpt-*.dcp"))  # sharded: a directory of per-process shards
    finish(start(out, "loaded", "none", "cpu", ckpt))
    loaded = load(out, "loaded", 1)[0]
    assert max(abs(a - b) for a, b in zip(loaded["evals"], r["fsdp"][0]["evals"])) < 1e-6
    assert max_diff(loaded["state"]["enc"]["module"], r["fsdp"][0]["state"]["enc"]["module"]) == 0.0


def test_fsdp_options_are_checked_by_name():
    net = torch.nn.Linear(2, 2)
    fwd = lambda n, x: n.module(x["data"][0])
    node = ice.ModuleNode(
        net, forward=fwd, parallel="fsdp", fsdp_policy=torch.nn.Linear, fsdp_kwargs={"reshard_after_forward": False}
    )
    assert node.parallel == "fsdp" and node.fsdp_kwargs == {"reshard_after_forward": False} and not node.sharded
    with pytest.raises(
        TypeError,
        match="fsdp_kwargs of ModuleNode\\(Linear\\) has 'reshard_after_froward', which "
        "is not a fully_shard option: did you mean 'reshard_after_forward'",
    ):
        ice.ModuleNode(net, forward=fwd, parallel="fsdp", fsdp_kwargs={"reshard_after_froward": False})
    with pytest.raises(TypeError, match="fsdp_kwargs of ModuleNode\\(Linear\\) sets 'mesh': ice_ignite shards over"):
        ice.ModuleNode(net, forward=fwd, parallel="fsdp", fsdp_kwargs={"mesh": None})
    with pytest.raises(TypeError, match="got fsdp_policy/fsdp_kwargs with parallel='ddp'"):
        ice.ModuleNode(net, forward=fwd, fsdp_policy=torch.nn.Linear)
    with pytest.raises(
        TypeError, match="DistributedDataParallel options \\(static_graph, ddp_kwargs\\) with parallel='fsdp'"
    ):
        ice.ModuleNode(net, forward=fwd, parallel="fsdp", static_graph=True, ddp_kwargs={"bucket_cap_mb": 1})
    with pytest.raises(ValueError, match=r"parallel must be ice.DDP\(...\), ice.FSDP\(...\) or None, got 'FSDP'"):
        ice.ModuleNode(net, forward=fwd, parallel="FSDP")
    with pytest.raises(TypeError, match="fsdp_policy of ModuleNode\\(Linear\\) must be a torch.nn.Module class"):
        ice.ModuleNode(net, forward=fwd, parallel="fsdp", fsdp_policy="Linear")
    with pytest.raises(TypeError, match="did you mean fsdp_policy"):
        ice.ModuleNode(net, forward=fwd, parallel="fsdp", fsdp_polcy=torch.nn.Linear)


@pytest.mark.slow
def test_the_large_models_page_script_runs_in_two_processes(tmp_path):
    scripts = [
        code
        for code in re.findall(r"<!-- fragment -->\n```python\n(.*?)```", PAGE.read_text(), re.S)
        if 'if __name__ == "__main__":' in code
    ]
    assert len(scripts) == 1
    (tmp_path / "large.py").write_text(scripts[0])
    proc = subprocess.run([sys.executable, "large.py"], cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    values = re.findall(r"^val mse (\S+)$", proc.stdout, re.M)
    assert len(values) == 1, proc.stdout  # printed by rank 0
    assert float(values[0]) < 5


SHARDED = Path(__file__).resolve().parents[1] / "sharded_child.py"


def sharded_run(out, run_id, devices, save_to, *load_from):
    proc = subprocess.run(
        [sys.executable, str(SHARDED), str(out), run_id, devices, str(save_to), *map(str, load_from)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out / f"{run_id}.pt", weights_only=False)


@pytest.mark.slow
def test_sharded_checkpoints_reshard_from_two_processes_to_one_and_back(tmp_path):
    from ice_ignite.checkpoint import sharded

    two = sharded_run(tmp_path, "two", "cpu:0-1", tmp_path / "ckpt-2")  # FSDP, 2 processes: one shard file each
    assert two["saved_sharded"] == [True, True]
    assert sorted(p.name for p in (tmp_path / "ckpt-2").iterdir()) == [
        ".metadata",
        "CHECKSUMS",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]
    one = sharded_run(tmp_path, "one", "cpu", tmp_path / "ckpt-1", tmp_path / "ckpt-2")  # 2 -> 1
    assert one["meta"] == {"world": 2} and one["loaded_sharded"] == [False, False]
    assert max_diff(one["loaded"], two["saved"]) == 0.0  # weights, Adam moments and steps, the scheduler
    back = sharded_run(tmp_path, "back", "cpu:0-1", tmp_path / "ckpt-3", tmp_path / "ckpt-1")  # 1 -> 2, sharded
    assert back["meta"] == {"world": 1} and back["loaded_sharded"] == [True, True]
    assert max_diff(back["loaded"], two["saved"]) == 0.0
    assert max_diff(back["end"], one["end"]) < 1e-5  # and both train on alike
    assert not list(tmp_path.glob(".*partial"))  # published: no temporary directory left
    full = torch.load(sharded.export(tmp_path / "ckpt-2", tmp_path / "model.pt"), weights_only=True)
    assert max_diff(dict(full["*/enc"]["module"]), two["saved"]["*/enc"]["module"]) == 0.0
    with pytest.raises(CheckpointError, match="exists already; give a new directory"):
        sharded.save(tmp_path / "ckpt-2", {})
    with pytest.raises(CheckpointError, match="is not a sharded checkpoint"):
        sharded.load(tmp_path / "model.pt", {})
