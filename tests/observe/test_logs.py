"""Python logging into logs/run.log."""

import logging

from conftest import linear_graph

import ice_ignite as ice
from ice_ignite.observe.logs import run_logging


def test_the_run_logs_to_a_file_in_the_run_directory(tmp_path):
    g = linear_graph()
    run_dir = g.run(
        [ice.Task(train=True, epochs=1, tags="train"), ice.SaveCheckpointTask()], devices="cpu", out_dir=tmp_path
    )
    text = (run_dir / "logs" / "run.log").read_text()
    assert "saved checkpoint" in text and "train[train] epoch 1/1 done" in text
    assert not g.launcher  # handlers are removed after the run


def test_other_ranks_log_to_their_own_file(tmp_path):
    with run_logging(tmp_path, rank=1, bars=False):
        logging.getLogger("ice_ignite").warning("from rank 1")
    assert "from rank 1" in (tmp_path / "run.rank1.log").read_text() and not (tmp_path / "run.log").exists()
