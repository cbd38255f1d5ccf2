"""Progress bars on a terminal, summary lines elsewhere, and the switch that turns them off."""

import io
import logging
import sys

from conftest import linear_graph

import ice_ignite as ice
from ice_ignite.observe.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_per_task_shows_kind_tags_epoch_iterations_and_loss(tmp_path, monkeypatch):
    g = linear_graph()
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    g.run(
        [ice.Task(train=True, epochs=2, tags="train"), ice.Task(train=False, epochs=1, tags="val")],
        devices="cpu",
        out_dir=tmp_path,
    )
    text = screen.getvalue()
    assert "train[train] [1/2]" in text and "train[train] [2/2]" in text and "/5]" in text and "mse=" in text
    assert "eval[val]" in text and "/3]" in text


def test_without_a_terminal_progress_is_a_periodic_line(tmp_path, caplog, monkeypatch):
    g = linear_graph()
    monkeypatch.setattr(Progress, "line_every", 0.0)
    with caplog.at_level(logging.INFO, logger="ice_ignite"):
        g.run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=tmp_path)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("train[train] epoch 1/1 iteration 3/5 mse ") and "it/s" in line for line in lines)
    assert any(line.startswith("train[train] epoch 1/1 done: mse ") for line in lines)


def test_run_shows_progress_unless_switched_off(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ice_ignite"):
        linear_graph().run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=tmp_path)
    assert any("train[train] epoch 1/1 done" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ice_ignite"):
        linear_graph().run(
            [ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=tmp_path, progress=False
        )
    assert not any("train[train]" in r.getMessage() for r in caplog.records)
