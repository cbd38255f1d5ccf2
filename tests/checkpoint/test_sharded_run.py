"""A run with FSDP-sharded ModuleNodes checkpoints into directories (``ckpt-...dcp``, B8 and
issue 16): every process writes its own shards, nothing is gathered, and ``read_checkpoint`` gives
them back in the form of a file, so that resume, ``"auto"``, ``load_checkpoint`` and ``export``
take them. The two-process runs go under torchrun, with timeouts, in two waves of launches shared
by the tests (the fixture); the rest is one process, on directories written by one process."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import linear_graph, saved_checkpoint
from test_checkpoint import assert_identical

import ice_ignite as ice
from ice_ignite import CheckpointError
from ice_ignite.checkpoint import sharded
from ice_ignite.checkpoint.files import (
    FORMAT,
    STATE,
    best_files,
    latest_valid_checkpoint,
    list_checkpoints,
    next_sequence,
    prune_checkpoints,
    read_checkpoint,
    remove_partial_writes,
    write_sharded_checkpoint,
)

CHILD = Path(__file__).resolve().parents[1] / "sharded_run_child.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(CHILD)]
TIMEOUT = 240  # one launch takes 10-40 s on a loaded 2-core machine
SHARDS = [".metadata", "CHECKSUMS", "__0_0.distcp", "__1_0.distcp", STATE]


def start(out, *args):
    return subprocess.Popen(
        [*TORCHRUN, str(out), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc):
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err[-4000:]
    return err


def kill(proc, out, *run_ids):
    """SIGKILL torchrun's agent and the workers of its runs at once (workers run in sessions of
    their own)."""
    os.killpg(proc.pid, signal.SIGKILL)
    for run_id in run_ids:
        for pid_file in Path(out).glob(f"{run_id}.pid*"):
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    proc.communicate(timeout=60)


def wait_for_stall(proc, out):
    """The partial directory of the save the run stalls in (rank 0 wrote its state.pt there)."""
    deadline, marker = time.monotonic() + TIMEOUT, Path(out) / "stalled"
    while time.monotonic() < deadline:
        if marker.exists():
            time.sleep(0.2)  # the path is written
            return Path(marker.read_text())
        if proc.poll() is not None:
            pytest.fail(f"the run to kill ended before its stalled save: {proc.communicate()[1][-4000:]}")
        time.sleep(0.1)
    pytest.fail("no stalled save within the timeout")


def final(out, run_id):
    return torch.load(Path(out) / f"{run_id}-final.pt", weights_only=True)


def names(ckpts):
    return sorted(p.name for p in ckpts.iterdir())


def tensors(tree):
    """The tensors in nested dicts and lists."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in tensors(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in tensors(v)]
    return []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Wave 1: the reference run, and the same run killed (SIGKILL, every process) in the middle of
    its third periodic save. Then the newest checkpoint the killed run published is corrupted and
    the one before is exported to a file. Wave 2: the killed run resumed with "auto", and a fresh
    run resumed from the exported file."""
    out = tmp_path_factory.mktemp("sharded_run")
    ckpts = out / "killed" / "ckpts"
    ref, killed = start(out, "ref"), start(out, "killed")
    try:
        partial = wait_for_stall(killed, out)
        kill(killed, out, "killed")
        finish(ref)
    finally:  # after a failure: no process left behind
        for proc, run_id in ((ref, "ref"), (killed, "killed")):
            if proc.poll() is None:
                kill(proc, out, run_id)
    at_kill = {"partial": partial.name, "holds": names(partial), "listed": [p.name for _, p in list_checkpoints(ckpts)]}
    (older, _), (newest, last) = [(p, s) for s, p in list_checkpoints(ckpts)[-2:]]
    shutil.copytree(older, out / "older.dcp")  # the run resumed below prunes it
    # "auto" resumes from best-* checkpoints too: the best one after the newest periodic one is damaged as well
    for path in [newest] + [p for s, p in list_checkpoints(ckpts, best=True) if s > last]:
        shard = path / "__1_0.distcp"
        shard.write_bytes(shard.read_bytes()[:1000])
    exported = sharded.export(older, out / "exported.pt")
    resume = start(out, "resume", exported)
    try:
        err = finish(resume)
    finally:
        if resume.poll() is None:
            kill(resume, out, "killed", "exported")
    return out, {"at_kill": at_kill, "older": older.name, "newest": newest.name, "resume_stderr": err}


@pytest.mark.slow
def test_a_sharded_run_checkpoints_into_directories_of_per_process_shards(runs):
    out, _ = runs
    ckpts = out / "ref" / "ckpts"
    # n_saved=2 periodic ones (the last at the end) and the best of the validation metric
    assert [p.name for _, p in list_checkpoints(ckpts)] == ["ckpt-000006-E2S12.dcp", "ckpt-000008-E3S12.dcp"]
    assert [p.name.split("-val%2Fval_mse=")[0] for p in best_files(ckpts, "val/val_mse")] == ["best-000007-E3S12"]
    assert len(names(ckpts)) == 3  # nothing else: no partial directory left
    for path in ckpts.iterdir():
        assert names(path) == SHARDS  # rank 0's state.pt, and one file of shards per process
    newest = ckpts / "ckpt-000008-E3S12.dcp"
    rest = torch.load(newest / STATE, weights_only=True)
    assert rest["format"] == FORMAT and rest["sharded_nodes"] == ["*/enc", "*/head"]
    assert tensors(rest["nodes"]["*/enc"]) == tensors(rest["nodes"]["*/head"]) == []  # all in the shards
    state = read_checkpoint(newest)  # consolidated: the full weights and Adam states of the run's end
    ref = final(out, "ref")
    for uid in ("*/enc", "*/head"):
        assert_identical(state["nodes"][uid], ref["nodes"][uid])
    total = sum(t.numel() * t.element_size() for uid in ("*/enc", "*/head") for t in tensors(state["nodes"][uid]))
    for rank in (0, 1):  # each process wrote its half, nothing gathered anywhere
        share = (newest / f"__{rank}_0.distcp").stat().st_size / total
        assert 0.45 < share < 0.6, share
    assert ref["gathers"] == 0  # no DTensor.full_tensor in the whole run, saves included


@pytest.mark.slow
def test_a_run_killed_in_a_sharded_save_resumes_bit_exactly_past_a_corrupted_newest_checkpoint(runs):
    out, r = runs
    at_kill = r["at_kill"]
    # killed inside the third periodic save: its directory was still partial, and not a checkpoint
    assert at_kill["partial"] == ".ckpt-000003-E1S6.dcp.partial"
    assert at_kill["holds"] == [n for n in SHARDS if n != "CHECKSUMS"]  # CHECKSUMS: written when published
    assert at_kill["listed"] == ["ckpt-000000-E0S2.dcp", "ckpt-000001-E0S4.dcp"] == [r["older"], r["newest"]]
    assert f"skipping checkpoint {r['newest']}" in r["resume_stderr"]
    assert "truncated or corrupted" in r["resume_stderr"]
    ref, resumed = final(out, "ref"), final(out, "killed")
    assert_identical(resumed["nodes"], ref["nodes"])  # weights, Adam moments and steps, schedulers: bit for bit
    assert resumed["counters"] == ref["counters"]
    ckpts = out / "killed" / "ckpts"
    assert not list(ckpts.glob(".*"))  # the partial directory was cleared
    assert [p.name.split("-")[2] for _, p in list_checkpoints(ckpts)] == ["E2S12.dcp", "E3S12.dcp"]  # n_saved=2


@pytest.mark.slow
def test_an_exported_sharded_checkpoint_is_a_file_that_resumes(runs):
    out, _ = runs
    exported = out / "exported.pt"
    assert torch.load(exported, weights_only=True)["format"] == FORMAT
    assert_identical(read_checkpoint(exported), read_checkpoint(out / "older.dcp"))
    ref, resumed = final(out, "ref"), final(out, "exported")
    assert_identical(resumed["nodes"], ref["nodes"])
    assert resumed["counters"] == ref["counters"]
    with pytest.raises(CheckpointError, match="exists; save to another path"):
        sharded.export(out / "older.dcp", exported)


@pytest.mark.slow
def test_a_sharded_checkpoint_loads_into_one_process(runs):
    from sharded_run_child import build

    out, _ = runs
    g, _ = build()
    report = g.load_checkpoint(out / "ref" / "ckpts" / "ckpt-000008-E3S12.dcp", tags="*", optimizers=True)
    assert sorted(report["loaded"]) == ["*/enc", "*/head"]
    ref = final(out, "ref")
    for uid in ("*/enc", "*/head"):
        assert not g[uid].sharded
        assert_identical(dict(g[uid].state_dict()), dict(ref["nodes"][uid]))


# -- one process: directories written by write_sharded_checkpoint in one process ------------------------
def directory_checkpoint(tmp_path, name="ckpt-000001-E1S5.dcp"):
    """A file checkpoint of a small run and the same state as a checkpoint directory beside it."""
    _, file = saved_checkpoint(tmp_path)
    state = read_checkpoint(file)
    return file, write_sharded_checkpoint(state, ["*/net"], file.parent / name)


def test_a_directory_reads_as_the_file_of_the_same_state(tmp_path):
    file, directory = directory_checkpoint(tmp_path)
    assert names(directory) == [".metadata", "CHECKSUMS", "__0_0.distcp", STATE]
    assert_identical(read_checkpoint(directory), read_checkpoint(file))
    g = linear_graph()
    g.run(
        [
            ice.Task(train=True, epochs=1, tags="train"),
            ice.SaveCheckpointTask(),
            ice.Task(train=True, epochs=1, tags="train"),
        ],
        devices="cpu",
        out_dir=tmp_path,
        run_id="src",
        resume_from=directory,
    )
    assert g.global_counters.epochs.train == 2  # resumed after epoch 1
    with pytest.raises(CheckpointError, match="exists already; give a new directory"):
        write_sharded_checkpoint(read_checkpoint(file), ["*/net"], directory)


def test_listing_pruning_and_cleaning_take_files_and_directories_in_sequence_order(tmp_path):
    file, directory = directory_checkpoint(tmp_path)
    ckpts = file.parent
    state = read_checkpoint(file)
    write_sharded_checkpoint(state, ["*/net"], ckpts / "best-000002-E1S5-mse=0.5.dcp")
    (ckpts / ".ckpt-000003-E2S10.dcp.partial").mkdir()  # a save killed before it was published
    (ckpts / "tmpab12cd").write_bytes(b"half a file")
    assert [p.name for _, p in list_checkpoints(ckpts)] == ["ckpt-000000-E1S5.pt", "ckpt-000001-E1S5.dcp"]
    assert [p.name for p in best_files(ckpts, "mse")] == ["best-000002-E1S5-mse=0.5.dcp"]
    assert next_sequence(ckpts) == 3
    assert sorted(p.name for p in remove_partial_writes(ckpts)) == [".ckpt-000003-E2S10.dcp.partial", "tmpab12cd"]
    write_sharded_checkpoint(state, ["*/net"], ckpts / "ckpt-000004-E2S10.dcp")
    assert prune_checkpoints(ckpts, 1) == [ckpts / "ckpt-000000-E1S5.pt", directory]
    assert names(ckpts) == ["best-000002-E1S5-mse=0.5.dcp", "ckpt-000004-E2S10.dcp"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / STATE).unlink(), "has no state.pt"),
        (lambda d: (d / ".metadata").unlink(), "has no .metadata"),
        (lambda d: (d / "__0_0.distcp").write_bytes((d / "__0_0.distcp").read_bytes()[:300]), "truncated or corrupted"),
        (lambda d: (d / "__0_0.distcp").unlink(), "truncated or corrupted"),
        (lambda d: (d / STATE).write_bytes((d / STATE).read_bytes()[:100]), "truncated or corrupted"),
    ],
)
def test_a_broken_directory_is_an_error_and_auto_falls_back_past_it(tmp_path, damage, message):
    file, directory = directory_checkpoint(tmp_path)
    damage(directory)
    with pytest.raises(CheckpointError, match=message) as info:
        read_checkpoint(directory)
    assert str(directory) in str(info.value)
    with pytest.warns(UserWarning, match=f"skipping checkpoint {directory.name}.*falling back"):
        found = latest_valid_checkpoint(file.parent)
    assert found[0] == file


def test_the_partial_directory_of_an_unfinished_save_is_refused(tmp_path):
    _file, directory = directory_checkpoint(tmp_path)
    partial = directory.rename(directory.with_name(f".{directory.name}.partial"))
    with pytest.raises(CheckpointError, match="partial write of a save that did not finish"):
        read_checkpoint(partial)


def test_a_directory_whose_dcp_part_holds_more_than_tensors_is_refused_unread(tmp_path):
    import torch.distributed.checkpoint as dcp

    _, directory = directory_checkpoint(tmp_path)
    for item in (directory / ".metadata", directory / "__0_0.distcp"):
        item.unlink()
    marker = tmp_path / "ran"
    with pytest.warns(UserWarning, match="single process"):  # DCP's own, without a process group
        dcp.save(
            {"*/net": {"module": {"weight": torch.zeros(1, 3)}, "note": Marker(marker)}},
            checkpoint_id=directory,
            no_dist=True,
        )
    with pytest.raises(
        CheckpointError, match="holds pickled objects, not only tensors .*open only a checkpoint you trust"
    ):
        read_checkpoint(directory)
    assert not marker.exists()


class Marker:
    """Unpickled, it creates a file: the proof that a load ran code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))
