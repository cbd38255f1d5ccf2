"""Resuming with another number of processes (issue 16): 2 -> 1 and 1 -> 2 with FSDP in real gloo
processes, and the refusals, on checkpoints of one process rewritten as if several had written them."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import classification_set, max_diff
from ignite.engine import Events
from ignite.metrics import Accuracy

import ice_ignite as ice
from ice_ignite import ResumeTaskFailed
from ice_ignite.checkpoint.files import read_checkpoint
from ice_ignite.checkpoint.resize import METRIC_KEY, comparable_data_settings, merge_sums

CHILD = Path(__file__).resolve().parents[1] / "resize_child.py"


def start(out, run_id, devices, resume_from=None):
    args = [sys.executable, str(CHILD), str(out), run_id, devices] + ([str(resume_from)] if resume_from else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*procs):
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-4000:]


def checkpoint(out, run_id):
    return next((out / run_id / "ckpts").glob("ckpt-*"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Uninterrupted runs of 2 processes and of 1, each checkpointed after iteration 6 of 8; then
    each checkpoint resumed with the other number of processes."""
    out = tmp_path_factory.mktemp("resize")
    finish(start(out, "two", "cpu:0-1"), start(out, "one", "cpu"))
    finish(
        start(out, "two-to-one", "cpu", checkpoint(out, "two")),
        start(out, "one-to-two", "cpu:0-1", checkpoint(out, "one")),
    )
    return {
        name: torch.load(out / f"{name}.pt", weights_only=False) for name in ("two", "one", "two-to-one", "one-to-two")
    }


@pytest.mark.slow
@pytest.mark.parametrize("whole, resumed", [("two", "two-to-one"), ("one", "one-to-two")])
def test_a_checkpoint_resumes_with_another_number_of_processes(runs, whole, resumed):
    a, b = runs[whole], runs[resumed]
    assert sorted(b["losses"]) == [7, 8]  # the schedule continues after iteration 6 of the second epoch
    assert max(abs(a["losses"][i] - b["losses"][i]) for i in (7, 8)) < 1e-5
    # the second epoch's LossNode average covers all its iterations: the per-process sums were merged
    assert abs(a["epochs"][2] - b["epochs"][2]) < 1e-6 and list(b["epochs"]) == [2]
    assert b["counters"] == a["counters"]
    assert max_diff(a["state"], b["state"]) < 1e-5  # weights and all of Adam's state


def test_the_global_batch_is_what_must_not_change():
    assert comparable_data_settings({"batch_size": 8, "batch_size_in_total": False, "drop_last": True}, 2) == {
        "global batch": 16,
        "drop_last": True,
    }
    assert comparable_data_settings({"batch_size": 16, "batch_size_in_total": True}, 2)["global batch"] == 16


def test_summed_accumulators_merge_and_split_keeping_their_totals():
    saved = [{"_sum": torch.tensor(float(r + 1)), "_num_examples": 10 * (r + 1)} for r in range(3)]
    fewer = merge_sums(saved, 2)
    assert [s["_num_examples"] for s in fewer] == [40, 20] and float(fewer[0]["_sum"]) == 4.0
    more = merge_sums(saved[:1], 3)
    assert [s["_num_examples"] for s in more] == [10, 0, 0] and float(sum(s["_sum"] for s in more)) == 1.0


# -- one process, checkpoints rewritten as if two processes wrote them ----------------------


def graph(batch_size=8, metric=False):
    torch.manual_seed(0)
    g = ice.HyperGraph()
    g.add("data", ice.DatasetNode(classification_set(48), batch_size=batch_size), tags="train")
    g.add(
        "net",
        ice.ModuleNode(
            torch.nn.Linear(4, 3),
            forward=lambda n, x: n.module(x["data"][0]),
            optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1),
        ),
    )
    g.add("ce", ice.LossNode(forward=lambda n, x: F.cross_entropy(x["net"], x["data"][1])))
    if metric:
        g.add("acc", ice.MetricNode(Accuracy(), forward=lambda n, x: (x["net"], x["data"][1])), tags="train")
    return g


def train_and_save(tmp_path, run_id, metric=False, at=Events.ITERATION_COMPLETED(once=3), grad_acc=1):
    """2 epochs of 6 iterations, a checkpoint ``at`` an event; the epoch averages of 'ce'."""
    g = graph(metric=metric)
    g.set_gradient_accumulate(grad_acc)
    task, averages = ice.Task(train=True, epochs=2, tags="train"), []
    task.engine.add_event_handler(at, lambda e: e.hypergraph.save_checkpoint())
    task.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: averages.append(e.state.metrics["ce"]))
    g.run([task], devices="cpu", out_dir=tmp_path, run_id=run_id, progress=False)
    return next((tmp_path / run_id / "ckpts").glob("ckpt-*.pt")), averages, g


def as_if_two_processes(path, tmp_path):
    """The checkpoint as two processes with half the batch each would have written it: every
    per-process entry split in halves (the same totals), global batch the same."""
    state = read_checkpoint(path)
    state["world_size"] = 2
    state["ranks"] = state["ranks"] * 2
    for settings in state["data_settings"].values():
        settings["batch_size_in_total"] = True

    def halve(value):
        if isinstance(value, dict) and list(value) == [METRIC_KEY]:
            (mine,) = value[METRIC_KEY]
            return {METRIC_KEY: [{k: v / 2 if isinstance(v, torch.Tensor) else v // 2 for k, v in mine.items()}] * 2}
        return {k: halve(v) for k, v in value.items()} if isinstance(value, dict) else value

    state["nodes"] = halve(state["nodes"])
    forged = tmp_path / "two-processes.pt"
    torch.save(state, forged)
    return forged


def resume(tmp_path, path, run_id, g=None, **kwargs):
    g = g or graph()
    task, averages = ice.Task(train=True, epochs=2, tags="train"), []
    task.engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: averages.append(e.state.metrics["ce"]))
    g.run([task], devices="cpu", out_dir=tmp_path, run_id=run_id, progress=False, resume_from=path, **kwargs)
    return averages, g


def test_a_resume_with_fewer_processes_merges_the_loss_accumulators(tmp_path):
    path, averages, whole = train_and_save(tmp_path, "whole")
    resumed, g = resume(tmp_path, as_if_two_processes(path, tmp_path), "resumed")
    assert resumed == pytest.approx(averages, abs=1e-7)  # the first epoch's average, from merged sums
    assert torch.equal(g["*/net"].module.weight, whole["*/net"].module.weight)


def test_a_changed_global_batch_is_refused_with_the_batch_that_keeps_it(tmp_path):
    path, _, _ = train_and_save(tmp_path, "whole")
    state = read_checkpoint(path)
    state["world_size"], state["ranks"] = 2, state["ranks"] * 2  # 2 processes of batch 8: global 16
    torch.save(state, tmp_path / "forged.pt")
    with pytest.raises(
        ResumeTaskFailed,
        match=r"'train/data': global batch was 16 and is now 8 \(2 process\(es\) "
        r"then, 1 now: keep the global batch, with batch_size=16",
    ):
        resume(tmp_path, tmp_path / "forged.pt", "resumed")


def test_a_checkpoint_inside_an_accumulation_cycle_is_refused(tmp_path):
    path, _, _ = train_and_save(tmp_path, "whole", grad_acc=2)
    g = graph()
    g.set_gradient_accumulate(2)
    with pytest.raises(
        ResumeTaskFailed,
        match="written by 2 process.*1, but it was taken in the middle of a gradient "
        "accumulation cycle.*resume with 2 process",
    ):
        resume(tmp_path, as_if_two_processes(path, tmp_path), "resumed", g=g)


def test_other_metrics_of_the_unfinished_epoch_are_refused_or_restarted_on_request(tmp_path):
    path, whole, _ = train_and_save(tmp_path, "whole", metric=True)
    forged = as_if_two_processes(path, tmp_path)
    with pytest.raises(
        ResumeTaskFailed,
        match=r"accumulators of node 'train/acc'\['metric'\] in the unfinished "
        "epoch are per process.*strict_resume=False",
    ):
        resume(tmp_path, forged, "strict", g=graph(metric=True))
    with pytest.warns(UserWarning, match=r"accumulators of node 'train/acc'\['metric'\] restart"):
        averages, _g = resume(tmp_path, forged, "lenient", g=graph(metric=True), strict_resume=False)
    assert averages == pytest.approx(whole, abs=1e-7)  # the LossNode's sums still merge; both epochs ran


def test_finished_epochs_carry_no_accumulators_across_a_resize(tmp_path):
    path, averages, _ = train_and_save(tmp_path, "whole", metric=True, at=Events.EPOCH_COMPLETED(once=1))
    resumed, _ = resume(tmp_path, as_if_two_processes(path, tmp_path), "resumed", g=graph(metric=True))
    assert resumed == pytest.approx(averages[1:], abs=1e-7)


def test_a_saved_handler_state_without_its_handler_is_named_by_its_task(tmp_path):
    g, task = graph(), ice.Task(train=True, epochs=2, tags="train")
    Accuracy(output_transform=lambda out: (out["net"], out["data"][1])).attach(task.engine, "acc")
    task.engine.add_event_handler(Events.ITERATION_COMPLETED(once=3), lambda e: e.hypergraph.save_checkpoint())
    g.run([task], devices="cpu", out_dir=tmp_path, run_id="whole", progress=False)
    with pytest.warns(
        UserWarning,
        match=r"saved state of handler\(s\) Accuracy #0 of Task\(train=True, epochs=2, "
        r"tags='train'\) has no handler in this run",
    ):
        resume(tmp_path, next((tmp_path / "whole" / "ckpts").glob("ckpt-*.pt")), "resumed")
