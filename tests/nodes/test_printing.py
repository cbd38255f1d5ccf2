"""print_forward_output: compact summaries of node outputs, prefixed with the counters."""

import pytest
import torch
from conftest import linear_graph

import ice_ignite as ice
from ice_ignite.nodes.printing import summarize


def test_summaries_count_nan_and_inf_and_describe_nested_outputs():
    text = summarize({"x": torch.tensor([1.0, float("inf"), float("nan")]), "n": [3, "a"]})
    assert "float32[3] cpu min 1 max 1 mean 1 nan 1 inf 1" in text
    assert "[2 items]" in text and "[0] 3" in text and "[1] 'a'" in text
    assert summarize(torch.tensor([True, False])) == "bool[2] cpu true 1/2"


def test_print_forward_output_every_and_total(capsys):
    g = linear_graph()
    probe = g.print_forward_output("net", "data", every=2, total=2, tags="train")
    assert probe.uid == "train/print_net_data"
    g.exec_tasks(
        [ice.Task(train=True, epochs=1, tags="train"), ice.Task(train=False, epochs=1, tags="val")], ice.Launcher()
    )
    out = capsys.readouterr().out.splitlines()
    firsts = [line for line in out if not line.startswith(" ")]
    assert [line.split(":")[0] for line in firsts] == ["E0S0 net", "E0S0 data", "E0S1 net", "E0S1 data"]
    assert "float32[8, 1] cpu min" in firsts[0]
    assert "[2 items]" in firsts[1]


def test_train_only_and_local_rank_0_only(capsys):
    g = linear_graph()
    g.print_forward_output("net", tags="val", train_only=True)
    g.exec_tasks([ice.Task(train=False, steps=2, tags="val")], ice.Launcher())
    assert capsys.readouterr().out == ""
    g.remove("val/print_net")
    g.print_forward_output("net", tags="val", train_only=False)
    g.exec_tasks([ice.Task(train=False, steps=1, tags="val")], ice.Launcher(local_rank=1))
    assert capsys.readouterr().out == ""
    g.exec_tasks([ice.Task(train=False, steps=1, tags="val")], ice.Launcher())
    assert capsys.readouterr().out.startswith("E0S0 net: float32[8, 1]")


def test_bad_arguments():
    g = linear_graph()
    with pytest.raises(TypeError, match="needs node names"):
        g.print_forward_output()
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        g.print_forward_output("net", every=0)
