"""``HyperGraph``: the nodes of an experiment by name and tags, their selection for a task, and
the entry points that run a schedule on them (``exec_tasks``, ``run``) or checkpoint them."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from ice_ignite.checkpoint.backup import entry_script, keep_sources
from ice_ignite.checkpoint.checkpointer import Checkpointer, Resume
from ice_ignite.checkpoint.files import read_checkpoint
from ice_ignite.checkpoint.resume import PendingResume, resume, resume_from_of
from ice_ignite.checkpoint.transfer import LoadSpec
from ice_ignite.distributed.launcher import in_worker, join, leave, parse_devices
from ice_ignite.distributed.launcher_record import Launcher
from ice_ignite.distributed.preemption import Preempted
from ice_ignite.engine.counters import GlobalCounters
from ice_ignite.engine.events import StepEvents
from ice_ignite.errors import CheckpointError
from ice_ignite.graph.draw import draw_graph
from ice_ignite.graph.registry import NodeRegistry
from ice_ignite.graph.schedule import Schedule, ScheduleEntry, ScheduleRunner, call_with_arity, flatten_schedule
from ice_ignite.graph.tags import DEFAULT_TAG, check_name, normalize_tags
from ice_ignite.graph.task import Task
from ice_ignite.nodes.context import RunContext
from ice_ignite.nodes.module import ModuleNode
from ice_ignite.nodes.node import Node
from ice_ignite.nodes.printing import PrintProbe
from ice_ignite.replay import directed, keep_entry_sources, passed_on
from ice_ignite.run import (
    LaunchOptions,
    OutputOptions,
    RunOptions,
    RunPath,
    RunSession,
    open_run_dir,
    options_of_keywords,
    record_worker_error,
    spawn_workers,
)
from ice_ignite.training.policies import NonFinitePolicy

__all__ = ["HyperGraph"]

logger = logging.getLogger("ice_ignite")


class HyperGraph(NodeRegistry):
    """All the nodes of an experiment, by name and tags, and the schedule that runs them.

    Args:
        autocast_enabled: run ModuleNode and LossNode forwards under ``torch.autocast``.
        autocast_dtype: ``torch.float16`` or ``torch.bfloat16``; None picks float16 on CUDA and
            bfloat16 on CPU.
        grad_scaler: True / False, a ``torch.amp.GradScaler``, or None: enabled for float16 only.

    The run the graph is in is read from ``g.context`` (a ``RunContext``, the same object as every
    node's ``n.context``): ``run_dir``, ``run_id``, ``seed``, ``launcher``, ``device``, ``rank``,
    ``counters`` (also ``g.global_counters``), ``board``, ``grad_scaler``, ``grad_acc_steps``.

    Examples:
        >>> import torch, ice_ignite as ice
        >>> g = ice.HyperGraph()
        >>> data = torch.utils.data.TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
        >>> _ = g.add("data", ice.DatasetNode(data, batch_size=4))
        >>> _ = g.add("net", ice.ModuleNode(torch.nn.Linear(2, 1), forward=lambda n, x: n.module(x["data"][0]),
        ...                                 optimizers=ice.Optimizer(torch.optim.SGD, lr=0.1)))
        >>> _ = g.add("mse", ice.LossNode(lambda n, x: torch.nn.functional.mse_loss(x["net"], x["data"][1])))
        >>> g.exec_tasks([ice.Task(train=True, epochs=1)], ice.Launcher())
        >>> g.global_counters.steps.train
        2
    """

    def __init__(
        self,
        autocast_enabled: bool = False,
        autocast_dtype: torch.dtype | None = None,
        grad_scaler: bool | torch.amp.GradScaler | None = None,
    ):
        super().__init__(RunContext())
        self.init_autocast(autocast_enabled, autocast_dtype, grad_scaler)
        self.nonfinite = NonFinitePolicy()
        self._runner = ScheduleRunner()
        self._objects: dict[str, Any] = {}
        self._checkpointer = Checkpointer(self.select_nodes, self.context, self._runner, self._objects)
        self._handlers: list[tuple[Any, Any, tuple[str, ...], bool | None]] = []
        self._session: RunSession | None = None
        self._resume = PendingResume()  # the checkpoint state the next schedule resumes from
        self._entrypoint: Path | None = None

    # -- the run context: ``g.context`` (a RunContext), the same object as every node's ``context`` --
    @property
    def global_counters(self) -> GlobalCounters:
        """``steps`` and ``epochs`` counters (train / eval / total) of this graph (API.md; the same
        object as ``g.context.counters``)."""
        return self.context.counters

    # Deprecated mirrors of the context, for one release: read ``g.context.<name>``.
    @property
    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Deprecated: ``g.context.grad_scaler``."""
        return self._deprecated_context("grad_scaler").grad_scaler

    @property
    def launcher(self) -> Launcher | None:
        """Deprecated: ``g.context.launcher``."""
        return self._deprecated_context("launcher").launcher

    @property
    def run_dir(self) -> Path | None:
        """Deprecated: ``g.context.run_dir``."""
        return self._deprecated_context("run_dir").run_dir

    @property
    def run_id(self) -> str | None:
        """Deprecated: ``g.context.run_id``."""
        return self._deprecated_context("run_id").run_id

    @property
    def board(self) -> Any:
        """Deprecated: ``g.context.board``."""
        return self._deprecated_context("board").board

    @property
    def seed(self) -> int:
        """Deprecated: ``g.context.seed``."""
        return self._deprecated_context("seed").seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._deprecated_context("seed").seed = value

    def _deprecated_context(self, name: str) -> RunContext:
        warnings.warn(
            f"HyperGraph.{name} is deprecated and goes in the next release: read g.context.{name} (the run "
            f"context, as node.context.{name})",
            DeprecationWarning,
            stacklevel=3,
        )
        return self.context

    @property
    def skipped_steps(self) -> int:
        """Optimizer steps skipped for a non-finite loss (policies "skip" and "stop")."""
        return self.nonfinite.skipped_steps

    def _running_task(self) -> Task | None:
        task = self._runner.task
        return task if task is not None and task.running else None

    # -- precision, accumulation, policies ----------------------------------------------------
    def init_autocast(
        self,
        autocast_enabled: bool = True,
        autocast_dtype: torch.dtype | None = None,
        grad_scaler: bool | torch.amp.GradScaler | None = None,
    ) -> None:
        """Run ModuleNode and LossNode forwards under ``torch.autocast`` with the run's device
        type; ``grad_scaler=None`` enables a GradScaler only for float16."""
        self.context.precision.configure_autocast(autocast_enabled, autocast_dtype, grad_scaler)

    def init_grad_scaler(
        self,
        grad_scaler: bool | torch.amp.GradScaler = True,
        *,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        enabled: bool = True,
    ) -> None:
        """Use a ``torch.amp.GradScaler`` (True: built for the run's device with these options;
        False: none; or a GradScaler instance)."""
        self.context.precision.configure_scaler(
            grad_scaler,
            enabled,
            init_scale=init_scale,
            growth_factor=growth_factor,
            backoff_factor=backoff_factor,
            growth_interval=growth_interval,
        )

    def is_autocast_enabled(self) -> bool:
        """Whether forwards run under autocast."""
        return self.context.precision.autocast_enabled

    def is_grad_scaler_enabled(self) -> bool:
        """Whether losses are scaled by a GradScaler (decided for the run's device when unset)."""
        return self.context.precision.scaler_enabled(self.context.device)

    def set_gradient_accumulate(self, every: int = 1) -> None:
        """Step the optimizers every ``every`` iterations, each micro-batch's loss divided by the
        number of micro-batches in its cycle."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"set_gradient_accumulate(every=...) needs an int >= 1, got {every!r}")
        self._check_not_running("change gradient accumulation of")
        self.context.grad_acc_steps = every

    def set_nonfinite_policy(self, policy: str = "raise", check_every: int = 50) -> None:
        """What a NaN or infinite train loss does, decided the same way on every rank:

        * ``"raise"`` (default): ``NonFiniteLossError`` naming the LossNode and the steps between
          which it happened. It is found in the LossNodes' epoch averages, read every
          ``check_every`` optimizer steps and at every train epoch end: no host read per iteration.
        * ``"skip"``: skip the optimizer step of an accumulation cycle with a non-finite loss (and
          its scheduler and scaler steps), with a warning; reads one device value per step.
        * ``"stop"``: skip it, save a checkpoint at the end of the iteration and end the run cleanly.
        * ``"ignore"``: no check.
        """
        skipped = self.nonfinite.skipped_steps
        self.nonfinite = NonFinitePolicy(policy, check_every)
        self.nonfinite.skipped_steps = skipped

    def learning_rates(self) -> dict[str, list[float]]:
        """The current learning rate of every parameter group, by ``"<uid>/<pattern>"``, for every
        ModuleNode with optimizers."""
        return {
            f"{uid}/{key}": lrs
            for uid, node in self._nodes.items()
            if isinstance(node, ModuleNode)
            for key, lrs in node.learning_rates().items()
        }

    # -- observing ------------------------------------------------------------------------------
    def on(
        self,
        event: Any,
        handler: Callable[..., object],
        tags: str | Iterable[str] = DEFAULT_TAG,
        train: bool | None = None,
    ) -> None:
        """Attach an ignite ``handler`` (``handler(engine)``) for ``event`` (any ``Events``, filters
        included) to the engine of every task whose tags include ``tags`` (``"*"``: every task) and,
        unless ``train`` is None, that trains (True) or evaluates (False). Handlers reach the graph
        as ``engine.hypergraph``.

        Examples:
            >>> from ignite.engine import Events
            >>> import ice_ignite as ice
            >>> g = ice.HyperGraph()
            >>> g.on(Events.EPOCH_COMPLETED, lambda e: print(e.hypergraph.global_counters), tags="val")
        """
        if not callable(handler):
            raise TypeError(f"g.on needs a callable handler, got {handler!r}")
        if train is not None and not isinstance(train, bool):
            raise TypeError(f"g.on train must be None, True or False, got {train!r}")
        self._handlers.append((event, handler, normalize_tags(tags, what="g.on tags"), train))

    def print_forward_output(
        self,
        *nodenames: str,
        every: int = 1,
        total: int | None = None,
        tags: str | Iterable[str] = DEFAULT_TAG,
        train_only: bool = True,
        localrank0_only: bool = True,
    ) -> Node:
        """Print a compact summary of the outputs of ``nodenames`` (shape, dtype, device, min /
        max / mean, NaN / Inf counts), prefixed with ``E<train epochs>S<train steps>``, at the first
        iteration and every ``every``-th, at most ``total`` times, in tasks selected by ``tags``.
        It adds a probe node (returned) that pulls those nodes in every task it is selected in.
        """
        if not nodenames or not all(isinstance(n, str) for n in nodenames):
            raise TypeError(f"print_forward_output needs node names, got {nodenames!r}")
        for name, value in (("every", every), ("total", total)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"print_forward_output {name} must be an int >= 1, got {value!r}")
        probe = PrintProbe(tuple(nodenames), every, total, train_only, localrank0_only)
        return self.add("print_" + "_".join(nodenames), probe, tags=tags)

    def draw(self, tags: str | Iterable[str] = DEFAULT_TAG, path: str | os.PathLike | None = None) -> list[Path]:
        """Write the graph of a task with ``tags`` as Graphviz DOT and Mermaid text, and as a PNG or
        SVG picture when Graphviz's ``dot`` or matplotlib is installed: ``path`` names the picture
        (``graph.png``, ``graph.svg``) or the DOT file (``graph.dot``), and the other files go
        beside it. Edges are the dependencies recorded while the graph ran (run a task first).
        Default path: ``<run dir>/graph-<tags>.png``. Returns the files written.
        """
        return draw_graph(self.select_egraph(tags), path, self.context.run_dir)

    # -- schedule -------------------------------------------------------------------------------
    def exec_tasks(self, tasks: Schedule, launcher: Launcher) -> None:
        """Run a schedule (Tasks, Repeats, callables ``f()``, ``f(g)``, ``f(g, launcher)``) in this
        process. ``HyperGraph.run`` calls it; call it directly to run without a run directory (a
        state given to ``load_state_dict`` before is resumed)."""
        if not isinstance(launcher, Launcher):
            raise TypeError(f"exec_tasks needs an ice.Launcher, got {type(launcher).__name__}")
        entries = flatten_schedule(tasks)
        ctx = self.context
        outer = ctx.launcher
        if outer is None:
            ctx.launcher = launcher
            ctx.precision.setup(launcher.device)
        try:
            self._execute(entries, launcher, strict=True)
        finally:
            if outer is None:
                ctx.launcher = None

    def _execute(self, entries: list[ScheduleEntry], launcher: Launcher, strict: bool) -> None:
        """Run ``entries``, from the position of a pending checkpoint state if there is one."""
        if self._runner.entries is not None:  # nested, from a schedule callable
            self._runner.run(entries, self._run_task, lambda item: call_with_arity(item, self, launcher))
            return
        point = resume(self._checkpointer, self._resume, entries, strict)
        session = self._session
        self._runner.run(
            entries,
            lambda task, position, span, hold: self._run_task(task, position, span, hold, point),
            lambda item: call_with_arity(item, self, launcher),
            start=point.entry if point is not None else 0,
            resume=point.task if point is not None else None,
            boundary=functools.partial(session.check_preemption, blocking=True) if session is not None else None,
        )

    def _run_task(
        self,
        task: Task,
        position: dict | None,
        span: tuple[int, int] | None = None,
        hold: bool = False,
        resume: Resume | None = None,
    ) -> bool:
        task.engine.hypergraph = self
        return task.run(
            self.select_egraph(task.tags),
            self._attach,
            self._attach_on_handlers,
            position,
            resume.reload_epoch if resume is not None and position is not None else None,
            span,
            hold,
        )

    def _attach(self, task: Task) -> None:
        """Attach the run's own handlers to a starting task (inside its engine's ``internal()``)."""
        checkpoint = (lambda: self.save_checkpoint()) if self._session is not None else None
        if self.context.precision.grad_scaler is not None:
            task.engine.add_event_handler(StepEvents.OPTIM_STEP_COMPLETED, self.context.precision.after_optimizer_step)
        self.nonfinite.attach(task, self.context, checkpoint)
        if self._session is not None:
            self._session.attach(task)

    def _attach_on_handlers(self, task: Task) -> list:
        """Attach the ``g.on`` handlers that apply to ``task``; returns their handles."""
        return [
            task.engine.add_event_handler(event, handler)
            for event, handler, tags, train in self._handlers
            if (train is None or train == task.train) and (tags == (DEFAULT_TAG,) or set(tags) <= set(task.tags))
        ]

    def run(
        self,
        tasks: Schedule,
        devices: str = "auto",
        run_id: str | None = None,
        out_dir: str | os.PathLike | None = None,
        resume_from: str | os.PathLike | None = None,
        seed: int | None = None,
        *,
        strict_resume: bool = True,
        progress: bool = True,
        launch: LaunchOptions | None = None,
        outputs: OutputOptions | None = None,
        config: Any = None,
        launcher: Launcher | None = None,
        **deprecated: Any,
    ) -> RunPath:
        """Run the schedule ``tasks`` in a run directory ``out_dir/run_id``, which the run holds
        (an OS lock on ``run.lock``) until it ends: another run of it fails at once.

        Args:
            tasks: a list of Tasks, Repeats and callables.
            devices: ``"auto"``, ``"cpu"``, ``"cuda:0"``, ``"cpu:0-1"``, ... (see ``parse_devices``):
                one process per device.
            run_id: the run directory's name; None makes a fresh timestamped one.
            out_dir: where run directories live (default ``runs``).
            resume_from: a checkpoint path, or ``"auto"`` for the newest valid checkpoint of the
                run directory; the run continues exactly where that checkpoint was taken.
            seed: the base seed of every random stream of the run; None (the default) takes
                ``torch.initial_seed()`` of global rank 0, so ``torch.manual_seed`` or ignite's
                ``manual_seed`` called before the run decide it, as in an ignite script. Logged and
                checkpointed; a resume continues with the checkpoint's seed.
            strict_resume: a resumed checkpoint whose schedule is not a prefix of ``tasks``, that
                holds a node this graph lacks (or lacks a node with state), or whose DatasetNode
                settings differ raises ``ResumeTaskFailed`` (True), or warns (False): the
                schedule restarts with the loaded states, new nodes start afresh.
            progress: show progress (a bar per task on a terminal, a line every 30 s otherwise).
            launch: how processes are started and joined, ``ice.LaunchOptions`` (torchrun's
                options, the backend, the collective timeout); None: the defaults.
            outputs: what the run writes, ``ice.OutputOptions`` (board cadence, hparams, timing,
                checkpoints kept, asynchronous checkpoints); None: the defaults.
            config: the script's settings (what ``ice.config`` returns: a dataclass instance, or a
                dict): written to ``config.yaml`` with the run's record (``record.yaml``) when the
                first task starts, kept in every checkpoint with its hash, compared on resume (a
                changed key is ``ResumeTaskFailed`` with ``strict_resume``), and its flat keys go to
                TensorBoard's HParams with the final metrics (``outputs.hparams`` adds to them).
            launcher: run in this process with this Launcher, starting or joining nothing.
            **deprecated: the keywords of ``LaunchOptions`` and ``OutputOptions`` (``nnodes=``,
                ``tee=``, ``n_saved=``, ``log_every=`` ...) as before, with a DeprecationWarning,
                for one release; any other keyword is a TypeError naming the closest.

        With several devices (or ``nnodes`` > 1) ``run`` starts one worker per device and, in
        ``spawn`` mode, exits when they are done; a worker's ``run`` (also under ``torchrun``,
        SLURM or an initialised process group) joins the process group and runs the schedule.
        SIGTERM and SIGINT make the run save a checkpoint at the next iteration boundary and
        raise ``Preempted`` (a ``SystemExit`` with code 128 + signal number).

        Returns:
            The run directory, a ``Path`` that also says which process this was: ``.rank`` and
            ``.is_main`` (global rank 0), ``.launcher``. After ``run`` the process group is gone
            (``idist.get_rank()`` is 0 everywhere): write files after the run only where
            ``run_dir.is_main``. In the launching process of forked workers (no entry script)
            the graph did not train: there ``.launcher`` is None and ``.is_main`` False.

        Examples:
            >>> import tempfile, ice_ignite as ice
            >>> g = ice.HyperGraph()
            >>> run_dir = g.run([lambda g: print(g.context.run_id)], devices="cpu", out_dir=tempfile.mkdtemp(),
            ...                 run_id="doc", progress=False, launch=ice.LaunchOptions(collective_timeout=60),
            ...                 outputs=ice.OutputOptions(n_saved=2))
            doc
            >>> run_dir.name, run_dir.is_main
            ('doc', True)
        """
        launch, outputs = options_of_keywords(deprecated, launch, outputs)
        options = RunOptions(
            devices=devices,
            run_id=run_id,
            out_dir=out_dir,
            resume_from=resume_from,
            seed=seed,
            strict_resume=strict_resume,
            progress=progress,
            launch=launch,
            outputs=outputs,
            config=config,  # issue 24 hook (config): recorded, checkpointed and compared by the run
        )
        options, directed_dir = directed(options)  # hook (issue 24, replay): ICE_IGNITE_RUN_DIR names the run directory
        entries = flatten_schedule(tasks)
        joined = worker = False
        if launcher is None and in_worker():
            launcher, joined = join(options.devices, options.launch.dist_backend, options.launch.collective_timeout)
            worker = True
        elif launcher is None:
            device_list = parse_devices(options.devices)
            if len(device_list) > 1 or options.launch.several_nodes:
                # forked workers inherit the graph and its lambdas (nothing is pickled) and run with the agreed id
                def start(agreed_id: str) -> None:
                    self.run(tasks, **dataclasses.replace(options, run_id=agreed_id).keywords())

                with passed_on(directed_dir):  # hook (issue 24, replay): the workers take the same directory
                    return spawn_workers(start, len(device_list), options)
            launcher = Launcher(device=device_list[0])
        options = dataclasses.replace(options, resume_from=resume_from_of(options.resume_from, worker))
        try:
            rundir = open_run_dir(options, launcher)
            self._session = session = RunSession(self.context, self._checkpointer, launcher, rundir, options)
            with session.active():
                self._backup_sources()
                keep_entry_sources(rundir.root, launcher.rank, self._entrypoint)  # hook (issue 24, replay): src/
                if options.resume_from is not None:
                    self._resume.read(options.resume_from, self._checkpointer)
                self._execute(entries, launcher, options.strict_resume)
        except Preempted as e:
            logger.warning("%s", e)
            print(f"ice_ignite: rank {launcher.rank}: {e}", file=sys.stderr, flush=True)
            raise
        except Exception as e:
            if worker:
                record_worker_error(e)
            raise
        finally:
            self._session = None
            self._resume.clear()
            # a group still held at interpreter exit keeps its gloo threads, and one of them releasing
            # the last tensor of a collective as Python shuts down aborts the process (torch 2.13)
            self.release_wrappers()
            leave(joined)
        return session.run_path()

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(
        self,
        save_to: str | os.PathLike | None = None,
        tags: str | Iterable[str] = DEFAULT_TAG,
        *,
        async_: bool | None = None,
    ) -> Path | None:
        """Write a checkpoint of the run: node states (of ``tags``; ``"*"``: every node), counters,
        RNG streams, GradScaler, the schedule position, task engines and the stateful handlers
        attached to them. Call it on every rank; global rank 0 writes. With FSDP-sharded
        ModuleNodes the checkpoint is a ``.dcp`` directory in which every rank writes its own shards.
        Returns the file (or directory) written (None on other ranks).

        Everything logged to the board so far is on disk before the checkpoint is. With
        ``async_=True`` (None: the run's ``async_checkpoints``) a checkpoint file is written in the
        background from a CPU copy of the state taken now, atomically, with the same pruning; the
        path is returned at once. The next save and the end of the run wait for it and raise its
        error. Graphs with FSDP-sharded ModuleNodes always write now.

        Raises:
            CheckpointError: no run directory and no ``save_to``, or ``save_to`` exists; the write
                failed (here, or for an asynchronous one at the next save or the run's end).
        """
        if async_ is not None and not isinstance(async_, bool):
            raise TypeError(
                f"save_checkpoint async_ must be True, False or None (the run's async_checkpoints), got {async_!r}"
            )
        return self._checkpointer.save(save_to, normalize_tags(tags, what="save_checkpoint tags"), async_=async_)

    def load_checkpoint(
        self,
        resume_from: str | os.PathLike,
        strict: bool = False,
        tags: str | Iterable[str] = DEFAULT_TAG,
        *,
        nodes: str | Iterable[str] | None = None,
        rename: dict[str, str] | None = None,
        weights: bool = True,
        optimizers: bool = False,
        other: bool = False,
    ) -> dict:
        """Load node states from a checkpoint, e.g. pretrained weights before fine-tuning. By
        default only module weights and buffers load: the graph keeps its own optimizers (and
        learning rates), data positions and loss / metric accumulators. Counters, RNG streams and
        schedule progress are never touched (``run(resume_from=...)`` restores those).

        Args:
            resume_from: the checkpoint file, or sharded checkpoint directory.
            strict: module weights (and, with ``optimizers``, optimizer states) must match the
                saved keys exactly.
            tags: the nodes that receive state, as a task's tags (``"*"``: every node).
            nodes: names or uids of the nodes that receive state, among those of ``tags``.
            rename: ``{source in the checkpoint: destination in this graph}``, names or uids,
                e.g. ``{"pretrain/encoder": "finetune/encoder"}``.
            weights: load ModuleNodes' module weights and buffers.
            optimizers: also load ModuleNodes' optimizer and LR scheduler states (same kind of
                optimizer only).
            other: also load every other node state: DatasetNode positions, LossNode / MetricNode
                accumulators and best records, your own Node subclasses' states.

        Returns:
            A report: ``loaded`` (uids that received state), ``parts`` (what each received:
            ``"weights"``, ``"optimizers"``, ``"other"``), ``left`` (saved parts not asked for, by
            uid), ``renamed``, ``not_selected`` (uids with saved state left out by ``tags`` /
            ``nodes``), ``only_in_checkpoint`` and ``only_in_graph`` (one-sided uids; a warning
            names those that hold or could receive a part asked for).

        Raises:
            CheckpointError: the file is not a loadable checkpoint; a name in ``nodes`` or
                ``rename`` is not in the graph or the checkpoint, or is ambiguous; a saved state
                does not fit its node; an optimizer state is another kind of optimizer's.
        """
        tag_tuple = normalize_tags(tags, what="load_checkpoint tags")
        spec = LoadSpec(weights=weights, optimizers=optimizers, other=other, nodes=nodes, rename=rename)
        state = read_checkpoint(resume_from, map_location=self._checkpointer.map_location())
        return self._checkpointer.load_nodes(state, tag_tuple, strict, str(resume_from), spec)

    def state_dict(self) -> dict:
        """The whole resumable checkpoint, as ``save_checkpoint`` writes it, so that ignite's
        ``Checkpoint({"graph": g}, DiskSaver(...))`` can save it from any task engine handler
        (at an iteration, epoch or run boundary); ``run(..., resume_from=file)`` continues
        from such a file exactly. Call it on every rank (a collective in multi-process runs).

        Examples:
            >>> import ice_ignite as ice
            >>> sorted(ice.HyperGraph().state_dict())[:4]
            ['counters', 'data_settings', 'engines', 'format']
        """
        return self._checkpointer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Keep ``state`` (from ``state_dict``, e.g. through ignite's ``Checkpoint.load_objects``)
        to be resumed by the next ``run`` / ``exec_tasks``: everything is restored there and the
        schedule continues where the state was taken.

        Raises:
            CheckpointError: ``state`` is not an ice_ignite checkpoint, or a schedule is running.
        """
        from ice_ignite.checkpoint.files import FORMAT

        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(
                f"HyperGraph.load_state_dict needs what HyperGraph.state_dict returned (a dict "
                f"with format {FORMAT!r}), got {type(state).__name__}"
            )
        if self._runner.entries is not None:
            raise CheckpointError(
                "HyperGraph.load_state_dict cannot resume in the middle of a running schedule; call "
                "it before run(), or use LoadCheckpointTask to load node states"
            )
        self._resume.keep(state, "the state given to load_state_dict")

    def register_stateful(self, name: str, obj: Any) -> None:
        """Checkpoint ``obj`` (anything with ``state_dict`` / ``load_state_dict`` that is not a
        handler of a task engine, whose handlers are checkpointed already) under ``name``."""
        check_name(name)
        if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
            raise TypeError(
                f"register_stateful({name!r}, ...) needs an object with state_dict() and "
                f"load_state_dict(), got {type(obj).__name__}"
            )
        self._objects[name] = obj

    def backup_source_files(self, entrypoint: str | os.PathLike) -> None:
        """Copy ``entrypoint`` (usually ``__file__``) and the local modules it imports into
        ``src/`` of the run directory, at the start of every ``run`` (now, during one). ``src/``
        is never overwritten: a later run of the same directory (a resume) whose sources differ
        from the newest copy keeps them in ``src-2/``, ``src-3/``, ... and warns; identical
        sources write nothing."""
        self._entrypoint = entry_script(entrypoint)
        self._backup_sources()

    def _backup_sources(self) -> None:
        """During a run, on global rank 0: keep the registered entry script's sources in ``src/``
        (the first run) or, when they differ from the newest copy, in ``src-<n>/`` beside it."""
        ctx = self.context
        if self._entrypoint is not None and ctx.run_dir is not None and ctx.rank == 0:
            keep_sources(self._entrypoint, ctx.run_dir)
