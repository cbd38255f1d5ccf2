"""The run directory and its reuse rules (API.md B8)."""

import pytest

import ice_ignite as ice

from conftest import linear_graph


def schedule():
    return [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()]


def test_run_creates_the_layout_and_names_checkpoints_by_sequence_and_counters(tmp_path):
    g = linear_graph()
    run_dir = g.run(schedule() * 2, devices="cpu", run_id="exp", out_dir=tmp_path)
    assert run_dir == tmp_path / "exp"
    assert sorted(p.name for p in run_dir.iterdir()) == ["ckpts", "logs", "src"]
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
    linear_graph().run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", run_id="exp", out_dir=tmp_path)
    linear_graph().run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", run_id="exp", out_dir=tmp_path)


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
    [({"devices": "gpu"}, ValueError, "device kind must be 'cpu', 'cuda' or 'auto'"),
     ({"devices": "cpu:0-1", "nnodes": "2:1"}, ValueError, "nnodes must be 'N' or 'MIN:MAX'"),
     ({"seed": "0"}, TypeError, "seed must be an int"),
     ({"resume_from": 3}, TypeError, "resume_from must be None, 'auto' or a checkpoint path"),
     ({"run_id": "a/b"}, ValueError, "run_id must be a non-empty name")],
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
