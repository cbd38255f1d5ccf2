"""The run directory and its reuse rules (API.md B8); what a run finds wrong with it before it
trains, and a run directory deleted during its run."""

import os
import shutil

import pytest
from conftest import linear_graph
from ignite.engine import Events

import ice_ignite as ice


def schedule():
    return [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()]


def test_run_creates_the_layout_and_names_checkpoints_by_sequence_and_counters(tmp_path):
    g = linear_graph()
    run_dir = g.run(schedule() * 2, devices="cpu", run_id="exp", out_dir=tmp_path)
    assert run_dir == tmp_path / "exp"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "ckpts",
        "logs",
        "metrics.json",
        "packages.txt",
        "record.yaml",
        "run.lock",
        "src",
    ]
    assert (run_dir / "run.lock").read_text() == ""  # released: it names no holder
    assert sorted(p.name for p in (run_dir / "ckpts").iterdir()) == ["ckpt-000000-E1S5.pt", "ckpt-000001-E2S10.pt"]
    assert g.run_id == "exp" and g.run_dir == run_dir


def test_fresh_run_ids_are_timestamps_and_do_not_collide(tmp_path):
    first = linear_graph().run(schedule(), devices="cpu", out_dir=tmp_path)
    second = linear_graph().run(schedule(), devices="cpu", out_dir=tmp_path)
    assert first != second and first.parent == second.parent == tmp_path


def test_a_run_directory_with_checkpoints_is_never_reused_without_resume(tmp_path):
    linear_graph().run(schedule(), devices="cpu", run_id="exp", out_dir=tmp_path)
    before = sorted((tmp_path / "exp" / "ckpts").iterdir())
    with pytest.raises(FileExistsError, match="holds checkpoints; pass resume_from='auto'.*or another run_id"):
        linear_graph().run(schedule(), devices="cpu", run_id="exp", out_dir=tmp_path)
    assert sorted((tmp_path / "exp" / "ckpts").iterdir()) == before


def test_a_run_directory_without_checkpoints_may_be_reused(tmp_path):
    first = linear_graph().run(
        [ice.Task(train=True, epochs=1, tags="train")], devices="cpu", run_id="exp", out_dir=tmp_path
    )
    again = linear_graph()
    second = again.run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", run_id="exp", out_dir=tmp_path)
    assert first == second == tmp_path / "exp" and again.global_counters.steps.train == 5  # it trained there
    assert not any((tmp_path / "exp" / "ckpts").iterdir())


def test_resume_auto_with_nothing_to_resume_starts_fresh(tmp_path, caplog):
    g = linear_graph()
    with caplog.at_level("INFO", logger="ice_ignite"):
        g.run(schedule(), devices="cpu", out_dir=tmp_path, resume_from="auto")
    assert "holds no checkpoint; starting from the beginning" in caplog.text
    assert g.global_counters.steps.train == 5


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        linear_graph().run(schedule(), devices="cpu", out_dir=f)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"devices": "gpu"}, ValueError, "device kind must be 'cpu', 'cuda' or 'auto'"),
        ({"devices": "cpu:0-1", "nnodes": "2:1"}, ValueError, "nnodes must be 'N' or 'MIN:MAX'"),
        ({"seed": "0"}, TypeError, "seed must be an int"),
        ({"resume_from": 3}, TypeError, "resume_from must be None, 'auto' or a checkpoint path"),
        ({"run_id": "a/b"}, ValueError, "run_id must be a non-empty name"),
        ({"run_id": 5}, TypeError, r"run_id must be a str \(the run directory's name\), got int 5; pass run_id='5'"),
        ({"run_id": "a\0b"}, ValueError, "without '/' or NUL characters"),
        ({"run_id": "é" * 128}, ValueError, "is 256 bytes long; a directory name has at most 255 bytes"),
    ],
)
def test_bad_run_arguments(tmp_path, kwargs, error, words):
    with pytest.raises(error, match=words):
        linear_graph().run(schedule(), out_dir=tmp_path, **{"devices": "cpu", **kwargs})


def test_run_again_continues_counters_and_node_states(tmp_path):
    g = linear_graph()
    g.run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=tmp_path)
    w = g["*/net"].module.weight.detach().clone()
    g.run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=tmp_path)
    assert g.global_counters.steps.train == 10 and not g["*/net"].module.weight.equal(w)


UNWRITABLE = ["proc"] + ([] if os.geteuid() == 0 else ["read-only"])  # root writes into read-only directories


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="uses /proc as a directory nobody can create files in")
@pytest.mark.parametrize("how", UNWRITABLE)
@pytest.mark.parametrize("part", ["ckpts", "logs"])
def test_a_part_of_the_run_directory_that_cannot_be_written_is_found_before_training(tmp_path, part, how):
    run_dir = tmp_path / "exp"
    run_dir.mkdir()
    if how == "proc":  # e.g. a link to another disk that is gone: no one can write there, root included
        (run_dir / part).symlink_to("/proc")
    else:
        (run_dir / part).mkdir(mode=0o555)
    g = linear_graph()
    with pytest.raises(
        PermissionError,
        match=rf"the run directory's '.*/exp/{part}' cannot be written: .*; make it "
        "writable, or pass another out_dir / run_id",
    ):
        g.run(schedule(), devices="cpu", run_id="exp", out_dir=tmp_path)
    assert g.global_counters.steps.train == 0  # before any training, not at the first checkpoint


def test_a_file_where_the_run_directory_needs_a_folder_is_a_clear_error(tmp_path):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "ckpts").write_text("not a folder")
    with pytest.raises(
        PermissionError,
        match=r"cannot create the run directory's '.*/exp/ckpts'.*remove what is in "
        "its way",
    ):
        linear_graph().run(schedule(), devices="cpu", run_id="exp", out_dir=tmp_path)


@pytest.mark.parametrize("when", ["during a task", "after the last task"])
def test_a_run_directory_deleted_during_the_run_ends_it_with_an_error(tmp_path, when):
    g = linear_graph()
    task = ice.Task(train=True, epochs=3, tags="train")
    delete = lambda *_: shutil.rmtree(tmp_path / "exp")
    if when == "during a task":
        task.engine.add_event_handler(Events.ITERATION_COMPLETED(once=2), delete)
        tasks = [task]
    else:
        tasks = [task, delete]
    with pytest.raises(FileNotFoundError, match=r"the run directory '.*/exp' was deleted or replaced during the run"):
        g.run(tasks, devices="cpu", run_id="exp", out_dir=tmp_path)
    # during a task: the run ends at the end of that epoch, not after all of them
    assert g.global_counters.epochs.train == (1 if when == "during a task" else 3)
