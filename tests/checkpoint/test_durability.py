"""Nothing lost: the board survives a crash (B8), checkpoints carry checksums verified on load,
are flushed to disk around the rename that publishes them, can be written in the background,
and paths that cannot work are refused when the run starts. Real files and processes."""

import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import linear_graph, saved_checkpoint
from ignite.engine import Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import ice_ignite as ice
from ice_ignite import CheckpointError
from ice_ignite.checkpoint.files import read_checkpoint, write_checkpoint, write_sharded_checkpoint

BOARD_CHILD = Path(__file__).resolve().parents[1] / "board_child.py"


# -- the board ----------------------------------------------------------------------------------
def board_child(out_dir, run_id, *args, timeout=120):
    return subprocess.run(
        [sys.executable, "-u", str(BOARD_CHILD), str(out_dir), run_id, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scalars(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_and_resumed_has_the_board_of_an_uninterrupted_run(tmp_path):
    ref = board_child(tmp_path, "ref")
    assert ref.returncode == 0, ref.stderr
    killed = board_child(tmp_path, "killed", "--kill-after", 20)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    before = scalars(tmp_path / "killed" / "logs")  # on disk with the checkpoint of step 20: steps 1-20
    assert [s for s, _ in before["_/ce/step"]][:20] == list(range(1, 21)), before
    resumed = board_child(tmp_path, "killed")
    assert resumed.returncode == 0, resumed.stderr
    expected, got = scalars(tmp_path / "ref" / "logs"), scalars(tmp_path / "killed" / "logs")
    assert [s for s, _ in expected["_/ce/step"]] == list(range(1, 61))
    assert got.keys() == expected.keys()
    for tag in expected:  # the same steps, each once, with the same values
        assert got[tag] == expected[tag], tag


@pytest.mark.slow
def test_a_board_that_cannot_be_written_is_a_warning_and_the_run_goes_on(tmp_path):
    proc = board_child(tmp_path, "full", "--fsize-limit-at", 5, timeout=90)  # tensorboardX's writer hung here
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stderr[-3000:]
    assert "the board's event file" in proc.stderr and "File too large" in proc.stderr, proc.stderr[-3000:]
    assert "TensorBoard logging stops for the rest of this run and training goes on" in proc.stderr


# -- checksums --------------------------------------------------------------------------------------
def flip_byte_in_tensor_data(path: Path) -> None:
    """Flip one byte in the middle of the largest tensor record of a torch.save file."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        with z.open(info) as member:
            start = member._orig_compress_start if hasattr(member, "_orig_compress_start") else None
    data = bytearray(path.read_bytes())
    if start is None:  # the local header: 30 bytes, the name and the extra field
        offset = info.header_offset
        name_len = int.from_bytes(data[offset + 26 : offset + 28], "little")
        extra_len = int.from_bytes(data[offset + 28 : offset + 30], "little")
        start = offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_checkpoint_file_is_an_error_naming_it_and_auto_falls_back(tmp_path):
    g = linear_graph()
    g.run(
        [
            ice.Task(train=True, epochs=1, tags="train"),
            ice.SaveCheckpointTask(),
            ice.Task(train=True, epochs=1, tags="train"),
            ice.SaveCheckpointTask(),
        ],
        devices="cpu",
        out_dir=tmp_path,
        run_id="r",
    )
    ckpts = tmp_path / "r" / "ckpts"
    newest = ckpts / "ckpt-000001-E2S10.pt"
    flip_byte_in_tensor_data(newest)
    with pytest.raises(
        CheckpointError,
        match=r"ckpt-000001-E2S10\.pt.* is corrupted: its record .*data/.* does not "
        r"match the CRC-32 checksum",
    ):
        read_checkpoint(newest)
    resumed = linear_graph()
    with pytest.warns(UserWarning, match=r"skipping checkpoint ckpt-000001-E2S10\.pt: .*CRC-32"):
        resumed.run(
            [
                ice.Task(train=True, epochs=1, tags="train"),
                ice.SaveCheckpointTask(),
                ice.Task(train=True, epochs=1, tags="train"),
                ice.SaveCheckpointTask(),
            ],
            devices="cpu",
            out_dir=tmp_path,
            run_id="r",
            resume_from="auto",
        )
    assert resumed.global_counters.steps.train == 10  # from the older checkpoint (step 5), one more epoch


def test_a_flipped_byte_in_a_shard_of_a_checkpoint_directory_is_an_error_naming_it(tmp_path):
    _, path = saved_checkpoint(tmp_path)
    directory = write_sharded_checkpoint(read_checkpoint(path), ["*/net"], tmp_path / "ckpt.dcp")
    assert (directory / "CHECKSUMS").is_file()
    read_checkpoint(directory)
    shard = next(p for p in directory.iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError,
        match=rf"ckpt\.dcp.* is corrupted: its file '{shard.name}' does not match "
        r"the CRC-32 checksum",
    ):
        read_checkpoint(directory)


# -- flushed around the rename ------------------------------------------------------------------------
def test_a_checkpoint_is_flushed_to_disk_before_and_after_the_rename_that_publishes_it(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        calls.append(("fsync", "dir" if os.path.isdir(target) else Path(target).name))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("rename", Path(dst).name))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_checkpoint({"format": "ice_ignite.checkpoint.v1", "w": torch.ones(3)}, tmp_path / "c.pt")
    rename = calls.index(("rename", "c.pt"))
    assert any(op == "fsync" and name.startswith("tmp") for op, name in calls[:rename]), calls  # the data
    assert ("fsync", "dir") in calls[rename + 1 :], calls  # the directory entry


# -- asynchronous checkpoints ----------------------------------------------------------------------
def test_an_async_checkpoint_holds_the_state_at_the_call_and_its_error_comes_at_the_next_save(tmp_path):
    g = linear_graph()
    seen = {}

    def save(engine):
        seen["path"] = g.save_checkpoint(async_=True)
        seen["weights"] = {k: v.clone() for k, v in g["*/net"].module.state_dict().items()}
        with torch.no_grad():
            for p in g["*/net"].module.parameters():
                p.add_(1.0)  # training goes on while the copy is written

    train = ice.Task(train=True, epochs=1, tags="train")
    train.engine.add_event_handler(Events.ITERATION_COMPLETED(once=2), save)
    g.run([train], devices="cpu", out_dir=tmp_path, run_id="a")
    saved = read_checkpoint(seen["path"])["nodes"]["*/net"]
    module = saved.get("module", saved)
    for key, value in seen["weights"].items():
        assert torch.equal(module[key], value), key

    g = linear_graph()
    (tmp_path / "blocked").write_text("a file where the checkpoint's directory should be")

    def save_twice(engine):
        g.save_checkpoint(tmp_path / "blocked" / "x.pt", async_=True)  # fails in the background
        g.save_checkpoint()

    train = ice.Task(train=True, epochs=1, tags="train")
    train.engine.add_event_handler(Events.ITERATION_COMPLETED(once=2), save_twice)
    with pytest.raises(CheckpointError, match=r"blocked/x\.pt.*failed.*an asynchronous checkpoint write"):
        g.run([train], devices="cpu", out_dir=tmp_path, run_id="b")


def test_the_end_of_a_run_waits_for_an_async_checkpoint_and_raises_its_error(tmp_path):
    g = linear_graph()
    (tmp_path / "blocked").write_text("a file")
    with pytest.raises(CheckpointError, match=r"blocked/x\.pt.*an asynchronous checkpoint write"):
        g.run(
            [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask(tmp_path / "blocked" / "x.pt")],
            devices="cpu",
            out_dir=tmp_path,
            run_id="c",
            async_checkpoints=True,
        )
    g = linear_graph()
    g.run(
        [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()],
        devices="cpu",
        out_dir=tmp_path,
        run_id="d",
        async_checkpoints=True,
        n_saved=1,
    )
    assert [p.name for p in (tmp_path / "d" / "ckpts").iterdir()] == ["ckpt-000000-E1S5.pt"]  # written when run ends
