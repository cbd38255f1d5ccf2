"""``ice.MLflow``: a run's configuration, metrics and checkpoints sent to MLflow through ignite's
own ``MLflowLogger`` and ``OutputHandler``, all against ``global_counters.steps.train`` (B4)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ignite.engine import Engine, Events

from ice_ignite.checkpoint.files import list_checkpoints
from ice_ignite.config.record import CONFIG_FILE
from ice_ignite.config.values import flatten, plain_values
from ice_ignite.engine.engine import TaskEngine
from ice_ignite.engine.roles import running_graph

__all__ = ["MLflow", "RECORD_NAME"]

logger = logging.getLogger("ice_ignite")

#: the file in the run directory that names the MLflow run, so that a resume logs into it again
RECORD_NAME = "mlflow.json"


class _Graph(Protocol):
    """What the tracker needs of a HyperGraph: attaching handlers to its task engines, and the
    callbacks its runs call when they end."""

    def on(self, event: Any, handler: Any, tags: Any = ..., train: bool | None = ...) -> None: ...

    @property
    def context(self) -> Any: ...


def _metric_prefix(task: Any) -> str:
    """The task's tags as one MLflow name part (MLflow refuses ``*`` and ``,``): ``train``, ``val``,
    ``train_aug``; a task of the default tag is ``train`` or ``eval``."""
    tags = [t for t in task.tags if t != "*"]
    return "_".join(t.replace("#", "") for t in tags) if tags else ("train" if task.train else "eval")


class MLflow:
    """Send a run to MLflow: the configuration (flattened to dotted keys) as the MLflow
    run's parameters, every task's epoch metrics (``engine.state.metrics``) and every ``log_every``
    optimizer steps the train losses as metrics whose step is ``global_counters.steps.train``, and
    at the end of the run the newest checkpoint and the best checkpoints as artifacts
    (``checkpoints/``). Metrics go through ignite's ``MLflowLogger`` and ``OutputHandler``
    (``ignite.handlers.mlflow_logger``), named as ignite names them: ``"<task tags> <metric>"``
    (``"val acc"``, ``"train ce"``; ``"train step ce"`` for the step losses).

    Global rank 0 logs; other ranks do nothing. Inside ``with mlflow.start_run():`` the run logs into
    that MLflow run and leaves it open. A resumed run (``resume_from``) logs into the same
    MLflow run, named in ``<run dir>/mlflow.json``: the steps between the last checkpoint and a
    crash are logged again, with the same values. The run's status is FINISHED, KILLED (preempted)
    or FAILED. MLflow's telemetry is switched off (``MLFLOW_DISABLE_TELEMETRY=true``, unless the
    environment sets it), so nothing leaves the machine for a ``file:`` store; MLflow's file store
    is allowed (``MLFLOW_ALLOW_FILE_STORE=true``, unless set).

    Args:
        tracking_uri: where MLflow stores runs: ``file:/path/mlruns``, ``sqlite:///mlflow.db``,
            ``http://server:5000``. None: ``MLFLOW_TRACKING_URI`` when set, else the file store
            ``mlruns/`` beside the run directories (``<out_dir>/mlruns``).
        experiment: the MLflow experiment's name (None: MLflow's default experiment, ``Default``).
        params: the configuration to record: a dataclass instance (``ice.config``'s) or a dict;
            None: the run's own (``run(config=cfg)``, as ``config.yaml`` of the run directory holds
            it), if it has one.
        log_every: log the train losses every this many optimizer steps (0: epoch values only).
        checkpoints: log the newest checkpoint and the best ones as artifacts when the run ends.

    Examples:
        >>> import ice_ignite as ice
        >>> tracker = ice.MLflow("file:/tmp/mlruns", experiment="digits", params={"lr": 1e-3})
        >>> tracker.attach(ice.HyperGraph())
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment: str | None = None,
        params: Any = None,
        log_every: int = 50,
        checkpoints: bool = True,
    ):
        if tracking_uri is not None and not isinstance(tracking_uri, str):
            raise TypeError(f"MLflow tracking_uri must be a str such as 'file:/path/mlruns', got {tracking_uri!r}")
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 0:
            raise ValueError(f"MLflow log_every must be an int >= 0, got {log_every!r}")
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.params = flatten(plain_values(params)) if params is not None else None
        self.log_every = log_every
        self.checkpoints = checkpoints
        self.logger: Any = None  # ignite's MLflowLogger while a run is open (global rank 0)
        self.run_dir: Path | None = None
        self._handlers: dict[str, Any] = {}
        self._last_step = -1
        self._owned = False  # whether the tracker started the MLflow run (and ends it)

    def attach(self, graph: _Graph) -> None:
        """Attach to every task engine of ``graph`` (``g.on``), and to the end of its runs."""
        graph.on(Events.STARTED, self._started)
        graph.on(Events.EPOCH_COMPLETED, self._epoch)
        if self.log_every:
            graph.on(Events.ITERATION_COMPLETED, self._step, train=True)
        graph.context.run_end.append(self._ended)

    # -- the MLflow run ---------------------------------------------------------------------------
    def _started(self, engine: TaskEngine) -> None:
        ctx = engine.hypergraph.context  # the run's context: its launcher and directory
        if ctx.launcher is None or ctx.launcher.rank != 0 or ctx.run_dir is None:
            return
        if self.logger is not None and self.run_dir == ctx.run_dir:
            return  # a later task of the same run
        if self.logger is not None:  # a run that ended without calling back (exec_tasks, a crash)
            self._end("FINISHED")
        self._open(Path(ctx.run_dir))

    def _open(self, run_dir: Path) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # read when mlflow is imported
        uri = (
            self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.parent / "mlruns").resolve().as_uri()
        )
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked: this is the store that needs no server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            import mlflow
            from ignite.handlers.mlflow_logger import MLflowLogger
        except ImportError as e:
            raise ModuleNotFoundError(
                f"ice.MLflow needs mlflow ({e}); install it with `pip install ice-ignite[mlflow]` "
                "(mlflow-skinny) or `pip install mlflow`"
            ) from e
        record = run_dir / RECORD_NAME
        previous = json.loads(record.read_text()) if record.is_file() else {}
        mlflow.set_tracking_uri(uri)
        # by name, also the default: MLflow keeps the last experiment's id across tracking URIs
        mlflow.set_experiment(self.experiment if self.experiment is not None else "Default")
        active = mlflow.active_run()
        resumed = previous.get("tracking_uri") == uri and previous.get("run_id")
        self._owned = active is None  # a run the user started (`with mlflow.start_run():`) stays theirs to end
        if active is not None:
            resumed = resumed and active.info.run_id == previous["run_id"]
        elif resumed:
            mlflow.start_run(run_id=previous["run_id"])
        else:
            mlflow.start_run(run_name=run_dir.name)
        if not resumed:
            mlflow.set_tags({"ice_ignite.run_dir": str(run_dir.resolve())})
        self.logger = MLflowLogger()  # ignite's logger, on the MLflow run started here
        self.run_dir = run_dir
        self._handlers, self._last_step = {}, -1
        tmp = record.with_name(record.name + ".tmp")
        tmp.write_text(json.dumps({"tracking_uri": uri, "run_id": self.logger.active_run.info.run_id}) + "\n")
        os.replace(tmp, record)
        self._log_params(mlflow, bool(resumed))

    def _log_params(self, mlflow: Any, resumed: bool) -> None:
        params = self.params
        if params is None:  # the run's config, as recorded when its first task started
            import yaml

            recorded = self.run_dir / CONFIG_FILE if self.run_dir is not None else None
            params = flatten(yaml.safe_load(recorded.read_text()) or {}) if recorded and recorded.is_file() else {}
        # MLflow keeps a parameter's first value; a resume with another value (strict_resume=False)
        # keeps the old one and says so
        params = {k: v if isinstance(v, (bool, int, float, str)) or v is None else str(v) for k, v in params.items()}
        if resumed:
            logged = mlflow.get_run(self.logger.active_run.info.run_id).data.params
            changed = sorted(k for k in params if k in logged and logged[k] != str(params[k]))
            if changed:
                warnings.warn(
                    f"ice.MLflow: the resumed MLflow run keeps its first values of {changed} (MLflow never changes a "
                    "parameter); the new values are in the run directory's record",
                    stacklevel=2,
                )
            params = {k: v for k, v in params.items() if k not in logged}
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            self.logger.log_params(dict(list(params.items())[start : start + 100]))

    def _ended(self, run_dir: Path, error: BaseException | None) -> None:
        if self.logger is None or self.run_dir != run_dir:
            return
        if self.checkpoints:
            ckpts = run_dir / "ckpts"
            newest = list_checkpoints(ckpts)[-1:] if ckpts.is_dir() else []
            best = [(n, p) for n, p in list_checkpoints(ckpts, best=True) if p.name.startswith("best-")]
            for _, path in newest + best:
                if path.is_dir():
                    self.logger.log_artifacts(str(path), f"checkpoints/{path.name}")
                else:
                    self.logger.log_artifact(str(path), "checkpoints")
        if error is None:
            status = "FINISHED"
        else:
            status = "KILLED" if isinstance(error, (SystemExit, KeyboardInterrupt)) else "FAILED"
        self._end(status)

    def _end(self, status: str) -> None:
        import mlflow

        if self._owned:
            mlflow.end_run(status=status)
        self.logger, self.run_dir = None, None

    # -- what is logged ---------------------------------------------------------------------------
    def _handler(self, key: str, make: Callable[[], Any]) -> Any:
        handler = self._handlers.get(key)
        if handler is None:
            handler = self._handlers[key] = make()
        return handler

    @staticmethod
    def _train_step(engine: Engine, event: Any) -> int:
        assert isinstance(engine, TaskEngine)  # ignite types the transform for any Engine; it gets a task's
        return int(engine.hypergraph.context.counters.steps.train)

    def _epoch(self, engine: TaskEngine) -> None:
        if self.logger is None:
            return
        from ignite.handlers.mlflow_logger import OutputHandler

        prefix = _metric_prefix(engine.task)
        handler = self._handler(
            prefix,
            lambda: OutputHandler(tag=prefix, metric_names="all", global_step_transform=self._train_step),
        )
        handler(engine, self.logger, Events.EPOCH_COMPLETED)

    def _step(self, engine: TaskEngine) -> None:
        step = engine.hypergraph.context.counters.steps.train
        if self.logger is None or step == self._last_step or step % self.log_every:
            return  # not an optimizer step (accumulation), or not one to log
        self._last_step = step
        from ignite.handlers.mlflow_logger import OutputHandler

        prefix = _metric_prefix(engine.task)
        names = [node.name for node in running_graph(engine.task).loss_nodes]
        handler = self._handler(
            prefix + " step",
            lambda: OutputHandler(
                tag=f"{prefix} step",
                output_transform=lambda output: {name: output[name] for name in names},
                global_step_transform=self._train_step,
            ),
        )
        handler(engine, self.logger, Events.ITERATION_COMPLETED)
