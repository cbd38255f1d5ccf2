"""ice.MLflow: a run's configuration, metrics and checkpoints in MLflow's local file store, read back
with MLflow's own client (no server, nothing leaves the machine)."""

from __future__ import annotations

import dataclasses
import os

import mlflow  # the mlflow extra (mlflow-skinny), installed by make test
import pytest
from conftest import linear_graph
from ignite.engine import Events

import ice_ignite as ice


@dataclasses.dataclass
class Data:
    batch_size: int = 8


@dataclasses.dataclass
class Config:
    lr: float = 0.1
    name: str = "linear"
    data: Data = dataclasses.field(default_factory=Data)


def schedule(times: int) -> list:
    train = ice.Task(train=True, epochs=1, tags="train")  # 5 steps an epoch (40 samples, batches of 8)
    return [ice.Repeat([train, ice.Task(train=False, epochs=1, tags="val"), ice.SaveCheckpointTask()], times=times)]


def test_params_metrics_and_checkpoints_reach_mlflow_and_a_resume_logs_into_the_same_run(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    config = Config()
    g = linear_graph()
    ice.MLflow(uri, experiment="linear", log_every=2).attach(g)  # params: the run's config
    seen = []  # (steps.train, val mse) at each val epoch end
    g.on(
        Events.EPOCH_COMPLETED,
        lambda e: seen.append((g.global_counters.steps.train, e.state.metrics["mse"])),
        tags="val",
    )
    run_dir = g.run(schedule(2), devices="cpu", out_dir=tmp_path / "runs", run_id="a", progress=False, config=config)

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("linear").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "a"
    assert run.data.params == {"lr": "0.1", "name": "linear", "data.batch_size": "8"}
    history = client.get_metric_history(run.info.run_id, "val mse")
    assert [(m.step, m.value) for m in history] == [(5, pytest.approx(seen[0][1])), (10, pytest.approx(seen[1][1]))]
    assert [step for step, _ in seen] == [5, 10]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train mse")] == [5, 10]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train step mse")] == [2, 4, 6, 8, 10]
    newest = sorted(p.name for p in (run_dir / "ckpts").glob("ckpt-*"))[-1]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [f"checkpoints/{newest}"]

    # a resume with one more repetition continues the same MLflow run
    g = linear_graph()
    ice.MLflow(uri, experiment="linear", params=config, log_every=2).attach(g)  # the same, given
    g.run(schedule(3), devices="cpu", out_dir=tmp_path / "runs", run_id="a", resume_from="auto", progress=False)
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val mse")] == [5, 10, 15]
    assert os.environ.get("MLFLOW_DISABLE_TELEMETRY") == "true"


def test_a_failed_run_is_marked_failed(tmp_path):
    uri = (tmp_path / "mlruns").as_uri()
    g = linear_graph()
    ice.MLflow(uri).attach(g)  # MLflow's default experiment

    def fail(engine):
        raise RuntimeError("boom")

    g.on(Events.EPOCH_COMPLETED, fail, tags="val")
    with pytest.raises(RuntimeError, match="boom"):
        g.run(schedule(1), devices="cpu", out_dir=tmp_path / "runs", run_id="b", progress=False)
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("Default").experiment_id])
    assert run.info.status == "FAILED"
    assert client.list_artifacts(run.info.run_id, "checkpoints") == []  # failed before its first checkpoint


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="log_every"):
        ice.MLflow(log_every=-1)
    with pytest.raises(TypeError, match="config must be a dataclass instance"):
        ice.MLflow(params=[1, 2])


def test_inside_a_users_mlflow_run_the_run_logs_there_and_leaves_it_open(tmp_path, monkeypatch):
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the user's own start_run on a file store
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("users")
    g = linear_graph()
    ice.MLflow(uri, params={"lr": 0.1}).attach(g)
    with mlflow.start_run(run_name="mine") as mine:
        g.run(schedule(1), devices="cpu", out_dir=tmp_path / "runs", run_id="c", progress=False)
        assert mlflow.active_run().info.run_id == mine.info.run_id  # still open: it is the user's
    client = mlflow.MlflowClient(uri)
    run = client.get_run(mine.info.run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert [m.step for m in client.get_metric_history(mine.info.run_id, "val mse")] == [5]
