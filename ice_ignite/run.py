"""The run: its options (``RunOptions``, ``OutputOptions``, and ``LaunchOptions`` from
``distributed.launcher``), the keywords ``HyperGraph.run`` still takes for them (deprecated),
where a run starts or joins processes and prepares the run directory, and what it attaches around
its schedule (logging, board, progress, timing, preemption)."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events

from ice_ignite.checkpoint.checkpointer import Checkpointer
from ice_ignite.checkpoint.rundir import DEFAULT_OUT_DIR, RunDir, check_run_id, prepare_run_dir
from ice_ignite.config.record import RunRecord
from ice_ignite.config.values import ConfigValues, flatten
from ice_ignite.distributed import parallel
from ice_ignite.distributed.hang import HangWatch
from ice_ignite.distributed.launcher import (
    LaunchOptions,
    joined_group,
    launch,
    options_from_dict,
    plain_value,
    script_command,
)
from ice_ignite.distributed.launcher_record import Launcher
from ice_ignite.distributed.preemption import Preempted, PreemptionGuard
from ice_ignite.distributed.processes import LAUNCHER_PID_ENV
from ice_ignite.engine.roles import TaskView, running_graph
from ice_ignite.graph.tags import DEFAULT_TAG
from ice_ignite.nodes.context import RunContext
from ice_ignite.observe.board import BoardLogger
from ice_ignite.observe.logs import run_logging
from ice_ignite.observe.progress import Progress
from ice_ignite.observe.timing import NodeTimer
from ice_ignite.training.seeding import seed_everything

__all__ = [
    "LaunchOptions",
    "OutputOptions",
    "RunOptions",
    "options_of_keywords",
    "RunPath",
    "RunSession",
    "spawn_workers",
    "open_run_dir",
    "record_worker_error",
]

logger = logging.getLogger("ice_ignite")

# the run directory's name, passed from the launching process to the first run of its workers
RUN_ID_ENV = "ICE_IGNITE_RUN_ID"
# the run directory whose lock the launching process holds for its workers
LOCKED_DIR_ENV = "ICE_IGNITE_LOCKED_RUN_DIR"


if TYPE_CHECKING:
    _ConcretePath = Path
else:
    _ConcretePath = type(Path())  # Path itself can be subclassed only from Python 3.12


class RunPath(_ConcretePath):
    """The run directory, as ``HyperGraph.run`` returns it, with this process's place in the
    run it ran: code after ``run`` in a worker knows its rank (the process group is gone by
    then, and ``idist.get_rank()`` says 0 on every worker). Paths made from it (``run_dir /
    "ckpts"``) carry no launcher.

    ``launcher`` is None, and ``is_main`` False, in a process that only started the workers
    (forked workers, where there is no entry script): its graph did not train.

    Examples:
        >>> run_dir = RunPath.of("runs/exp", Launcher(rank=1, world_size=2))
        >>> run_dir.rank, run_dir.is_main, run_dir == Path("runs/exp")
        (1, False, True)
    """

    launcher: Launcher | None = None

    @classmethod
    def of(cls, path: str | os.PathLike, launcher: Launcher | None) -> RunPath:
        """``path`` with ``launcher``."""
        run_path = cls(path)
        run_path.launcher = launcher
        return run_path

    @property
    def rank(self) -> int | None:
        """This process's global rank in the run (None: it only started the workers)."""
        return self.launcher.rank if self.launcher is not None else None

    @property
    def is_main(self) -> bool:
        """Whether this process was global rank 0 of the run: the one to write files after it."""
        return self.launcher is not None and self.launcher.rank == 0


@dataclass(frozen=True)
class OutputOptions:
    """What a run writes besides its checkpoints' contents: how often it logs to the board and
    which hyper-parameters it records there, per-node timing, how many periodic checkpoints it
    keeps and whether it writes them in the background. ``run(outputs=ice.OutputOptions(...))``.

    * ``log_every``: write losses, learning rates and the grad scale to the board every this many
      optimizer steps (0: only epoch values); the only host reads logging adds.
    * ``hparams``: hyper-parameters to record with the final metrics (TensorBoard's HParams).
    * ``timing``: time every node's forward, backward and update per task, and write
      ``timing.csv`` and ``timing.png`` into the run directory.
    * ``n_saved``: keep only the newest ``n_saved`` periodic checkpoints (None: keep all).
    * ``async_checkpoints``: checkpoints (``save_checkpoint``, ``SaveCheckpointTask``,
      ``save_best``, preemption) are written in the background from a CPU copy taken at the
      call; the next save and the end of the run wait for a pending write and raise its error.

    A frozen dataclass: ``to_dict()`` (or ``dataclasses.asdict``) records it, ``from_dict``
    reads the record back.

    Examples:
        >>> OutputOptions(n_saved=3, timing=True).to_dict()["n_saved"]
        3
    """

    log_every: int = 50
    hparams: dict | None = field(default=None)
    timing: bool = False
    n_saved: int | None = None
    async_checkpoints: bool = False

    def __post_init__(self) -> None:
        n = self.n_saved
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"n_saved must be None (keep all) or an int >= 1, got {n!r}")
        e = self.log_every
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ValueError(f"log_every must be an int >= 0, got {e!r}")
        if self.hparams is not None and not isinstance(self.hparams, dict):
            raise TypeError(f"hparams must be a dict of hyper-parameters, got {type(self.hparams).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """The options as plain values, for the run's record."""
        return {key: plain_value(value) for key, value in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OutputOptions:
        """The options ``to_dict()`` recorded."""
        return options_from_dict(cls, values)


@dataclass(frozen=True)
class RunOptions:
    """Everything one ``HyperGraph.run`` was asked besides its schedule (see ``HyperGraph.run``
    for each): what the run records as its own options, and what its forked workers get.

    Examples:
        >>> options = RunOptions(devices="cpu:0-1", run_id="exp", launch=LaunchOptions(tee="3"))
        >>> record = options.to_dict()
        >>> record["launch"]["tee"], record["outputs"]["log_every"], RunOptions.from_dict(record) == options
        ('3', 50, True)
    """

    devices: str = "auto"
    run_id: str | None = None
    out_dir: str | os.PathLike | None = None
    resume_from: str | os.PathLike | None = None
    seed: int | None = None
    strict_resume: bool = True
    progress: bool = True
    launch: LaunchOptions = field(default_factory=LaunchOptions)
    outputs: OutputOptions = field(default_factory=OutputOptions)
    # issue 24 hook (config): the script's settings (``ice.config``), recorded apart from the options
    config: Any = None

    def __post_init__(self) -> None:
        check_run_id(self.run_id)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"seed must be an int or None (torch.initial_seed()), got {self.seed!r}")
        if self.resume_from is not None and not isinstance(self.resume_from, (str, os.PathLike)):
            raise TypeError(f"resume_from must be None, 'auto' or a checkpoint path, got {self.resume_from!r}")
        for name, cls in (("launch", LaunchOptions), ("outputs", OutputOptions)):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"run {name}= needs an ice.{cls.__name__}, got {type(getattr(self, name)).__name__}")
        if self.config is not None:
            ConfigValues.of(self.config)  # the error (not a dataclass instance or a dict), before anything starts

    def keywords(self) -> dict[str, Any]:
        """The options as ``HyperGraph.run``'s keywords (``launch`` and ``outputs`` as objects)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        """The options as plain values, ``launch`` and ``outputs`` as nested dicts (paths as text,
        a ``timedelta`` as seconds), for the run's record; the config is recorded apart
        (``config.yaml``)."""
        return {
            f.name: plain_value(dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v)
            for f in dataclasses.fields(self)
            if f.name != "config"
            for v in (getattr(self, f.name),)
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunOptions:
        """The options ``to_dict()`` recorded."""
        values = dict(values)
        if isinstance(values.get("launch"), dict):
            values["launch"] = LaunchOptions.from_dict(values["launch"])
        if isinstance(values.get("outputs"), dict):
            values["outputs"] = OutputOptions.from_dict(values["outputs"])
        return options_from_dict(cls, values)


#: ``run``'s own keyword parameters, besides ``tasks``
RUN_KEYWORDS = (*(f.name for f in dataclasses.fields(RunOptions)), "launcher")
#: the keywords ``run`` took before its options objects, by the object that holds them now
OLD_KEYWORDS = {
    "launch": tuple(f.name for f in dataclasses.fields(LaunchOptions)),
    "outputs": tuple(f.name for f in dataclasses.fields(OutputOptions)),
}


def options_of_keywords(
    keywords: dict[str, Any], launch: LaunchOptions | None, outputs: OutputOptions | None
) -> tuple[LaunchOptions, OutputOptions]:
    """``run``'s ``launch`` and ``outputs`` objects, with the old keywords (``tee=``, ``n_saved=``
    ...) mapped onto them, each with a DeprecationWarning. An unknown keyword is a TypeError naming
    the closest; an old keyword beside the object that holds it now is a TypeError too.

    Examples:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     launch, outputs = options_of_keywords({"tee": "3", "n_saved": 2}, None, None)
        >>> launch.tee, outputs.n_saved
        ('3', 2)
    """
    known = {name: group for group, names in OLD_KEYWORDS.items() for name in names}
    for key in keywords:
        if key not in known:
            candidates = [*RUN_KEYWORDS, *known]
            close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
            if not close:
                hint = f"; its keywords are {', '.join(RUN_KEYWORDS)}"
            elif close[0] in known:
                group = known[close[0]]
                hint = f"; did you mean {close[0]!r}, in {group}=ice.{_CLASSES[group].__name__}({close[0]}=...)?"
            else:
                hint = f"; did you mean {close[0]!r}?"
            raise TypeError(f"HyperGraph.run() got an unexpected keyword argument {key!r}{hint}")
    given = {"launch": launch, "outputs": outputs}
    built: dict[str, Any] = {}
    for group in OLD_KEYWORDS:
        old = {key: value for key, value in keywords.items() if known[key] == group}
        cls = _CLASSES[group]
        if old and given[group] is not None:
            raise TypeError(
                f"run got {group}={cls.__name__}(...) and the {group.rstrip('s')} keywords {sorted(old)} too; "
                f"pass the {group.rstrip('s')} options in one place: {group}=ice.{cls.__name__}(...)"
            )
        if old:
            shown = ", ".join(f"{key}=..." for key in old)
            warnings.warn(
                f"run({shown}) is deprecated: pass {group}=ice.{cls.__name__}({shown}); the keywords "
                "go in the next release",
                DeprecationWarning,
                stacklevel=3,
            )
        built[group] = given[group] if given[group] is not None else cls(**old)
    return built["launch"], built["outputs"]


_CLASSES: dict[str, Any] = {"launch": LaunchOptions, "outputs": OutputOptions}


def record_worker_error(e: BaseException) -> None:
    """Write the traceback where the elastic agent reports a failed worker's error from."""
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(e)


def spawn_workers(worker: Callable[[str], Any], nproc: int, options: RunOptions) -> RunPath:
    """Start the workers of a multi-process run from this (launching) process. In ``spawn`` mode
    they re-run the entry script and this process exits when they are done (as under
    ``torchrun``); forked workers call ``worker(run_id)`` and the run directory is returned.

    On one machine this process holds the run directory's lock until the workers are done (its
    workers do not take it again); on several, global rank 0 takes it (which machine gets that
    rank is known only once the workers meet)."""
    o = options.launch
    rundir = prepare_run_dir(options.out_dir, options.run_id, options.resume_from, lock=not o.several_nodes)
    command = script_command() if o.start_method == "spawn" else None
    fork = command is None  # no entry script to re-run (a notebook, python -c): fork
    os.environ[RUN_ID_ENV] = rundir.run_id
    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())  # workers die with this process (and its lock)
    if rundir.lock.held:
        os.environ[LOCKED_DIR_ENV] = str(rundir.root.resolve())
    try:
        launch(
            (lambda: worker(rundir.run_id)) if command is None else command,
            nproc,
            o,
            "fork" if fork else "spawn",
            run_id=options.run_id or "ice_ignite",
            log_dir=rundir.logs / "workers",
        )
    except Preempted as e:
        print(f"ice_ignite: {e}", file=sys.stderr, flush=True)
        raise
    finally:
        os.environ.pop(RUN_ID_ENV, None)
        os.environ.pop(LAUNCHER_PID_ENV, None)
        os.environ.pop(LOCKED_DIR_ENV, None)
        rundir.lock.release()
    if fork:
        return RunPath.of(rundir.root, None)
    raise SystemExit(0)  # as under torchrun, the workers ran the whole script


def open_run_dir(options: RunOptions, launcher: Launcher) -> RunDir:
    """The run directory, prepared (and locked, until ``rundir.lock.release()``) by global rank 0
    and agreed by every rank."""
    # The id the launching process chose is for the first run of its workers only: a script's
    # later runs with run_id=None get fresh directories.
    inherited = os.environ.pop(RUN_ID_ENV, None)
    run_id = options.run_id or inherited
    held = os.environ.get(LOCKED_DIR_ENV)
    if launcher.world_size == 1:
        return prepare_run_dir(options.out_dir, run_id, options.resume_from, held_by_launcher=held)
    answer: tuple[str | None, str | None]
    prepared, failure, answer = None, None, (None, None)
    if launcher.rank == 0:
        try:
            prepared = prepare_run_dir(options.out_dir, run_id, options.resume_from, held_by_launcher=held)
            answer = (prepared.run_id, None)
        except Exception as e:
            failure, answer = e, (None, f"{type(e).__name__}: {e}")
    try:
        agreed_id, error = parallel.broadcast_object(answer)
    except BaseException:
        if prepared is not None:
            prepared.lock.release()
        raise
    if failure is not None:
        raise failure
    if error is not None:
        raise RuntimeError(f"global rank 0 could not prepare the run directory: {error}")
    if prepared is not None:
        return prepared
    rundir = RunDir(Path(options.out_dir if options.out_dir is not None else DEFAULT_OUT_DIR) / agreed_id)
    rundir.create()  # on other machines too: each rank writes its own log there
    return rundir


class RunSession:
    """What a run sets up around its schedule in one process, and attaches to each task engine:
    the run directory in the context, logging, the board, progress, per-node timing and the
    preemption check (SIGTERM / SIGINT → a checkpoint at the next iteration boundary on every rank,
    then ``Preempted``)."""

    def __init__(
        self, context: RunContext, checkpointer: Checkpointer, launcher: Launcher, rundir: RunDir, options: RunOptions
    ):
        self.context = context
        self.checkpointer = checkpointer
        self.launcher = launcher
        self.rundir = rundir
        self.options = options
        self.board_logger: BoardLogger | None = None
        self.progress: Progress | None = None
        self._guard: PreemptionGuard | None = None
        self._agreed: parallel.AgreedFlag | None = None
        self._watch: HangWatch | None = None
        self._record: RunRecord | None = None
        self._unrecorded: tuple | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[RunSession]:
        """Enter the run: logging, signal handling, context, board; restored on exit, and the run
        directory's lock released (however the run ends). A collective that times out becomes a
        ``CollectiveTimeout`` naming the stuck rank (its stacks in ``logs/``)."""
        ended: BaseException | None = None  # hook (issue 24, replay branch): what ended the run, for run_end
        try:
            with self._entered():
                yield self
        except BaseException as e:
            ended = e
            hang = self._watch.explain(e) if self._watch is not None and isinstance(e, Exception) else None
            if hang is not None:
                ended = hang
                raise hang from e
            raise
        finally:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            try:  # hook (issue 24, replay branch): the run's end handlers (ice.MLflow), its last checkpoint on disk
                for handler in list(self.context.run_end):
                    handler(self.rundir.root, ended)
            finally:
                self.rundir.lock.release()

    @contextlib.contextmanager
    def _entered(self) -> Iterator[None]:
        launcher, ctx, options = self.launcher, self.context, self.options
        bars = options.progress and launcher.local_rank == 0 and sys.stderr.isatty()
        with run_logging(self.rundir.logs, launcher.rank, bars), PreemptionGuard() as self._guard:
            seed = options.seed
            if seed is None:  # as an ignite script: torch.manual_seed before the run decides it (rank 0's)
                seed = parallel.broadcast_object(torch.initial_seed() % 2**63)
            ctx.launcher, ctx.run_dir, ctx.run_id, ctx.seed = launcher, self.rundir.root, self.rundir.run_id, seed
            ctx.seed_given = options.seed is not None
            logging.getLogger("ice_ignite").info("seed %d%s", seed, "" if ctx.seed_given else " (torch.initial_seed())")
            seed_everything(seed + launcher.rank)
            ctx.precision.setup(launcher.device)
            ctx.open_board(str(self.rundir.logs) if launcher.rank == 0 else None)
            ctx.timer = NodeTimer(launcher.device) if options.outputs.timing else None
            ctx.save_best = self.checkpointer.save_best
            if launcher.world_size > 1:
                timeout, store = joined_group()
                self._watch = HangWatch(
                    self.rundir.logs, launcher.rank, launcher.world_size, timeout, store, node=self._running_node
                )
                self._guard.hung = lambda: self._watch is not None and self._watch.hung
                self._agreed = parallel.AgreedFlag()
            else:
                self._agreed = None
            outputs = options.outputs
            self.checkpointer.open(
                self.rundir, outputs.n_saved, writer=launcher.rank == 0, async_default=outputs.async_checkpoints
            )
            # -- issue 24 hook (config): the config in every checkpoint, the run's record at start --
            config = ConfigValues.of(options.config) if options.config is not None else None
            self.checkpointer.config = config
            if launcher.rank == 0:  # written when the first task starts: after a resume's checks passed
                self._record = RunRecord(self.rundir.root)
                self._unrecorded = (config, options.to_dict(), launcher)
            if launcher.rank == 0:
                self.board_logger = BoardLogger(ctx, outputs.log_every)
            if options.progress and launcher.local_rank == 0:
                self.progress = Progress(sys.stderr)
            try:
                yield
                self.write_record()  # a schedule without tasks
                self.checkpointer.wait()  # a checkpoint still being written: its error is the run's
                self.rundir.check_present()
                hparams = {**flatten(config.values), **(outputs.hparams or {})} if config else outputs.hparams
                if hparams is not None and self.board_logger is not None:
                    self.board_logger.write_hparams(hparams)
                if ctx.timer is not None and launcher.rank == 0:
                    ctx.timer.write(self.rundir.root)
            finally:
                self._close()

    def run_path(self) -> RunPath:
        """The run directory, with this process's launcher: what ``HyperGraph.run`` returns."""
        return RunPath.of(self.rundir.root, self.launcher)

    def _close(self) -> None:
        ctx = self.context
        self._guard = None
        self._record, self._unrecorded = None, None
        self.checkpointer.config = None
        if self._agreed is not None:
            self._agreed.close()
            self._agreed = None
        ctx.close_board()
        ctx.timer, ctx.save_best = None, None
        ctx.launcher = None
        self.checkpointer.close()

    def _running_node(self) -> str | None:
        """The uid of the node whose forward runs now in the running task (for hang reports)."""
        task = self.checkpointer.runner.task
        graph = task.graph if task is not None else None
        if graph is None:
            return None
        name = graph.cache.pulling()
        return graph.nodes[name].uid if name is not None and name in graph.nodes else None

    def write_record(self) -> None:
        """Global rank 0, once per run: the run's record (``record.yaml``, ``config.yaml``, ...) in
        the run directory. At the first task's start, so that a resume refused by its checks
        (another config) leaves the record of the run that wrote the checkpoint."""
        if self._unrecorded is not None and self._record is not None:
            config, recorded, launcher = self._unrecorded
            self._unrecorded = None
            self._record.write(
                config, recorded, world_size=launcher.world_size, device=str(launcher.device), seed=self.context.seed
            )

    def attach(self, task: TaskView) -> None:
        """Attach the run's handlers to a starting task's engine (inside its ``internal()`` block)."""
        self.write_record()
        engine = task.engine
        # before the engine fetches the next batches (a task without DatasetNodes fetches none)
        boundary = Events.GET_BATCH_STARTED if running_graph(task).dataset_nodes else Events.ITERATION_STARTED
        engine.add_event_handler(boundary, self.check_preemption)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.rundir.check_present)
        if self._watch is not None:
            self._watch.attach(task)
        if self.board_logger is not None:
            self.board_logger.attach(task)
        if self.progress is not None:
            self.progress.attach(task)
        timer = self.context.timer
        if timer is not None:
            timer.attach(task)

    def check_preemption(self, *, blocking: bool = False) -> None:
        """After SIGTERM / SIGINT on any rank, every rank checkpoints at the same boundary and
        raises Preempted. At an iteration boundary (an engine handler) the agreement overlaps the
        next iteration; ``blocking=True`` (between schedule entries) agrees at once, so that every
        rank stops at the same entry."""
        guard = self._guard
        if guard is None:
            return
        local = guard.requested is not None
        agreed = self._agreed
        if agreed is not None:
            local = agreed.check_now(local) if blocking else agreed.check(local)
        if local:
            path = self.checkpointer.save(None, (DEFAULT_TAG,))
            raise Preempted(guard.requested or signal.SIGTERM, path)
