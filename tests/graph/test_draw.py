"""The graph as DOT, Mermaid and a picture."""

import matplotlib
from conftest import linear_graph

import ice_ignite as ice


def test_draw_writes_dot_mermaid_and_a_png_with_the_recorded_edges(tmp_path, svg_backend):
    g = linear_graph()
    g.exec_tasks([ice.Task(train=True, steps=1, tags="train")], ice.Launcher())
    written = g.draw("train", tmp_path / "graph.png")
    assert [p.name for p in written] == ["graph.dot", "graph.mmd", "graph.png"]
    dot = (tmp_path / "graph.dot").read_text()
    assert '"data" -> "net";' in dot and '"net" -> "mse";' in dot and '"data" -> "mse";' in dot
    assert "shape=cylinder" in dot and "shape=octagon" in dot and "train" in dot
    mermaid = (tmp_path / "graph.mmd").read_text()
    assert mermaid.startswith("flowchart LR") and "n0 --> n1" in mermaid
    assert (tmp_path / "graph.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == "svg"  # the user's backend (a notebook's) is left alone


def test_draw_before_running_shows_the_nodes_without_edges(tmp_path):
    written = linear_graph().draw("val", tmp_path / "g.dot")
    dot = written[0].read_text()
    assert '"data"' in dot and "->" not in dot
