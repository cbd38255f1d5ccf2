"""Opt-in per-node timing."""

import csv

import matplotlib
from conftest import linear_graph

import ice_ignite as ice


def test_timing_writes_a_table_and_a_chart(tmp_path, svg_backend):
    g = linear_graph()
    run_dir = g.run(
        [ice.Task(train=True, epochs=2, tags="train"), ice.Task(train=False, epochs=1, tags="val")],
        devices="cpu",
        out_dir=tmp_path,
        timing=True,
    )
    rows = list(csv.DictReader(open(run_dir / "timing.csv")))
    keys = {(r["task"], r["node"], r["phase"]) for r in rows}
    assert {
        ("train[train]", "train/data", "forward"),
        ("train[train]", "*/net", "forward"),
        ("train[train]", "(summed loss)", "backward"),
        ("train[train]", "(optimizers)", "update"),
        ("eval[val]", "val/data", "forward"),
    } <= keys
    calls = {(r["task"], r["node"], r["phase"]): int(r["calls"]) for r in rows}
    assert calls[("train[train]", "*/net", "forward")] == 10 and calls[("eval[val]", "*/mse", "forward")] == 3
    assert abs(sum(float(r["share"]) for r in rows) - 1.0) < 1e-3
    assert (run_dir / "timing.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == "svg"  # the user's backend is left alone


def test_no_timing_files_unless_asked(tmp_path):
    run_dir = linear_graph().run([ice.Task(train=True, epochs=1, tags="train")], devices="cpu", out_dir=tmp_path)
    assert not (run_dir / "timing.csv").exists()
