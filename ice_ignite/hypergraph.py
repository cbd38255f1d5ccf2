"""``HyperGraph``: the container of all nodes, their selection by tags, and ``run``."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Iterable

import torch
from ignite.engine import Events

from ice_ignite.backup import backup_sources, entry_script
from ice_ignite.board import BoardLogger, NullWriter
from ice_ignite.draw import render, to_dot, to_mermaid
from ice_ignite.checkpoint import read_checkpoint
from ice_ignite.checkpointer import Checkpointer
from ice_ignite.counters import GlobalCounters
from ice_ignite.errors import GraphError, StopAllTasks, StopTask
from ice_ignite.graph import ExecutableGraph
from ice_ignite import parallel
from ice_ignite.launcher import Launcher, in_worker, join, launch, leave, parse_devices, script_command
from ice_ignite.logs import run_logging
from ice_ignite.nodes.node import Node
from ice_ignite.preemption import Preempted, PreemptionGuard
from ice_ignite.printing import PrintProbe
from ice_ignite.progress import Progress
from ice_ignite.rundir import DEFAULT_OUT_DIR, RunDir, prepare_run_dir
from ice_ignite.seeding import seed_everything
from ice_ignite.tags import DEFAULT_TAG, check_name, is_selected, make_uid, normalize_tags, split_uid
from ice_ignite.task import ScheduleEntry, Task, call_with_arity, flatten_schedule
from ice_ignite.timing import NodeTimer

__all__ = ["HyperGraph"]

logger = logging.getLogger("ice_ignite")

# the run directory's name, passed from the launching process to its workers
_RUN_ID_ENV = "ICE_IGNITE_RUN_ID"


def _record_worker_error(e: BaseException) -> None:
    """Write the traceback where the elastic agent reports a failed worker's error from."""
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(e)

_AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


class HyperGraph:
    """All the nodes of an experiment, by name and tags, and the schedule that runs them.

    Args:
        autocast_enabled: run ModuleNode and LossNode forwards under ``torch.autocast``.
        autocast_dtype: ``torch.float16`` or ``torch.bfloat16``; None picks float16 on CUDA and
            bfloat16 on CPU.
        grad_scaler: True / False, a ``torch.amp.GradScaler``, or None: enabled for float16 only.

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

    def __init__(self, autocast_enabled: bool = False, autocast_dtype: torch.dtype | None = None,
                 grad_scaler: "bool | torch.amp.GradScaler | None" = None):
        self._nodes: dict[str, Node] = {}
        self._egraphs: dict[tuple[str, ...], ExecutableGraph] = {}
        self.global_counters = GlobalCounters()
        self.grad_acc_steps = 1
        #: what a non-finite train loss does: "raise", "skip", "stop" or "ignore"
        self.nonfinite_policy = "raise"
        #: policy "raise" reads the loss accumulators every this many optimizer steps
        self.nonfinite_check_every = 50
        #: optimizer steps skipped for a non-finite loss
        self.skipped_steps = 0
        self._stop_after_iteration = False
        self._autocast_enabled = False
        self._autocast_dtype: torch.dtype | None = None
        self._scaler_spec: Any = None
        self._scaler_kwargs: dict = {}
        #: (device type, dtype) while a run uses autocast, else None
        self.autocast: tuple[str, torch.dtype] | None = None
        #: the run's GradScaler, or None when disabled
        self.grad_scaler: torch.amp.GradScaler | None = None
        self._scaler_stepped = False
        self.init_autocast(autocast_enabled, autocast_dtype, grad_scaler)
        # run context
        self.launcher: Launcher | None = None
        self.run_dir: Path | None = None
        self.run_id: str | None = None
        self.seed = 0
        self._rundir: RunDir | None = None
        self._board: Any = None
        self._entries: list[ScheduleEntry] | None = None
        self._position = 0
        self._entry_state = "idle"
        self._running_task: Task | None = None
        self._checkpointer = Checkpointer(self)
        self._guard: PreemptionGuard | None = None
        self._handlers: list[tuple[Any, Any, tuple[str, ...], bool | None]] = []
        self._board_logger: BoardLogger | None = None
        self._progress_view: Progress | None = None
        self._timer: NodeTimer | None = None
        self._agreed: parallel.AgreedFlag | None = None
        self._entrypoint: Path | None = None

    # -- nodes ----------------------------------------------------------------------------------
    def add(self, name: str, node: Node, tags: "str | Iterable[str]" = DEFAULT_TAG) -> Node:
        """Add ``node`` under ``name`` and ``tags``; returns the node.

        A ``"*"`` node is selected by every task unless a node of the same name is selected by
        its own tags, which then overrides it, whatever the order of ``add``.

        Raises:
            TypeError: ``node`` is not a Node.
            ValueError: the uid ``"<tags>/<name>"`` is taken, or the name or tags are malformed.
        """
        check_name(name)
        if not isinstance(node, Node):
            hint = (" wrap it: ice.ModuleNode(module, forward=lambda n, x: n.module(x['data'][0]))"
                    if isinstance(node, torch.nn.Module) else "")
            raise TypeError(f"HyperGraph.add({name!r}, ...) needs an ice Node, got {type(node).__name__};{hint}")
        self._check_not_running("add")
        tag_tuple = normalize_tags(tags, what=f"tags of node {name!r}")
        uid = make_uid(name, tag_tuple)
        if uid in self._nodes:
            raise ValueError(f"a node with uid {uid!r} exists already; use another name or tags, or remove({uid!r})")
        node._attach(self, name, uid, tag_tuple)
        self._nodes[uid] = node
        self._egraphs.clear()
        return node

    def remove(self, query: str) -> list[Node]:
        """Remove the node with uid ``query`` (``"train/data"``), or every node named ``query``."""
        self._check_not_running("remove")
        if not isinstance(query, str):
            raise TypeError(f"remove takes a uid or a name, got {query!r}")
        if "/" in query:
            name, tags = split_uid(query)
            uids = [make_uid(name, tags)] if make_uid(name, tags) in self._nodes else []
        else:
            uids = self.uids_of(query)
        if not uids:
            raise KeyError(f"no node matches {query!r}; uids are: {', '.join(self._nodes) or 'none'}")
        removed = [self._nodes.pop(uid) for uid in uids]
        for node in removed:
            node._detach()
        self._egraphs.clear()
        return removed

    def __getitem__(self, uid: str) -> Node:
        name, tags = split_uid(uid)
        key = make_uid(name, tags)
        if key not in self._nodes:
            others = self.uids_of(name)
            hint = f"nodes named {name!r}: {', '.join(others)}" if others else f"no node is named {name!r}"
            raise KeyError(f"no node with uid {key!r} ({hint})")
        return self._nodes[key]

    def __contains__(self, uid: object) -> bool:
        try:
            name, tags = split_uid(uid)  # type: ignore[arg-type]
        except (KeyError, ValueError, TypeError):
            return False
        return make_uid(name, tags) in self._nodes

    @property
    def nodes(self) -> dict[str, Node]:
        """Every node by uid, in ``add`` order (a copy)."""
        return dict(self._nodes)

    def uids_of(self, name: str) -> list[str]:
        """The uids of the nodes named ``name``."""
        return [uid for uid, node in self._nodes.items() if node.name == name]

    def _select(self, tags: tuple[str, ...]) -> dict[str, Node]:
        query = frozenset(tags)
        specific: dict[str, Node] = {}
        for node in self._nodes.values():
            if node.tags != (DEFAULT_TAG,) and is_selected(node.tags, query):
                other = specific.get(node.name)
                if other is not None:
                    raise GraphError(
                        f"tags ({','.join(tags)}) select two nodes named {node.name!r}: {other.uid!r} and "
                        f"{node.uid!r}; give them different names or tags that exclude one another"
                    )
                specific[node.name] = node
        return {
            node.name: node
            for node in self._nodes.values()
            if specific.get(node.name) is node or (node.tags == (DEFAULT_TAG,) and node.name not in specific)
        }

    def select_nodes(self, *tags: str) -> dict[str, Node]:
        """``{uid: node}`` that a task with ``tags`` selects; ``"*"`` (or nothing) means every node.

        Examples:
            >>> import ice_ignite as ice
            >>> g = ice.HyperGraph()
            >>> _ = g.add("data", ice.Node(), tags="train"); _ = g.add("data", ice.Node(), tags="val")
            >>> _ = g.add("net", ice.Node()); _ = g.add("probe", ice.Node(), tags="#dbg")
            >>> list(g.select_nodes("train"))
            ['train/data', '*/net']
            >>> list(g.select_nodes("val", "#dbg"))
            ['val/data', '*/net', '#dbg/probe']
        """
        query = normalize_tags(tags or DEFAULT_TAG, what="select_nodes tags")
        if query == (DEFAULT_TAG,):
            return dict(self._nodes)
        return {node.uid: node for node in self._select(query).values()}

    def select_egraph(self, tags: "str | Iterable[str]") -> ExecutableGraph:
        """The ExecutableGraph of a task with ``tags`` (built once, until the next add/remove)."""
        key = normalize_tags(tags, what="task tags")
        graph = self._egraphs.get(key)
        if graph is None:
            graph = self._egraphs[key] = ExecutableGraph(self, self._select(key), key)
        return graph

    def _check_not_running(self, what: str) -> None:
        if self._running_task is not None:
            raise RuntimeError(
                f"cannot {what} nodes while {self._running_task!r} runs; do it in a schedule callable between tasks"
            )

    # -- precision and accumulation -----------------------------------------------------------
    def init_autocast(self, autocast_enabled: bool = True, autocast_dtype: torch.dtype | None = None,
                      grad_scaler: "bool | torch.amp.GradScaler | None" = None) -> None:
        """Run ModuleNode and LossNode forwards under ``torch.autocast`` with the run's device
        type; ``grad_scaler=None`` enables a GradScaler only for float16."""
        if not isinstance(autocast_enabled, bool):
            raise TypeError(f"autocast_enabled must be True or False, got {autocast_enabled!r}")
        if autocast_dtype is not None and autocast_dtype not in _AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be torch.float16, torch.bfloat16 or None, got {autocast_dtype!r}")
        self._autocast_enabled = autocast_enabled
        self._autocast_dtype = autocast_dtype
        if grad_scaler is not None:
            self.init_grad_scaler(grad_scaler)

    def init_grad_scaler(self, grad_scaler: "bool | torch.amp.GradScaler" = True, *, init_scale: float = 2.0**16,
                         growth_factor: float = 2.0, backoff_factor: float = 0.5, growth_interval: int = 2000,
                         enabled: bool = True) -> None:
        """Use a ``torch.amp.GradScaler`` (True: built for the run's device with these options;
        False: none; or a GradScaler instance)."""
        if not isinstance(grad_scaler, (bool, torch.amp.GradScaler)):
            raise TypeError(f"grad_scaler must be True, False or a torch.amp.GradScaler, got {grad_scaler!r}")
        self._scaler_spec = grad_scaler if enabled or not isinstance(grad_scaler, bool) else False
        self._scaler_kwargs = dict(init_scale=init_scale, growth_factor=growth_factor,
                                   backoff_factor=backoff_factor, growth_interval=growth_interval)
        self.grad_scaler = None

    def is_autocast_enabled(self) -> bool:
        """Whether forwards run under autocast."""
        return self._autocast_enabled

    def is_grad_scaler_enabled(self) -> bool:
        """Whether losses are scaled by a GradScaler (decided for the run's device when unset)."""
        if self.grad_scaler is not None:
            return True
        spec = self._scaler_spec
        if isinstance(spec, torch.amp.GradScaler):
            return spec.is_enabled()
        if spec is None:
            device = self.launcher.device if self.launcher is not None else torch.device("cpu")
            return self._autocast_enabled and self._resolved_dtype(device) == torch.float16
        return bool(spec)

    def _resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self._autocast_dtype is not None:
            return self._autocast_dtype
        return torch.float16 if device.type == "cuda" else torch.bfloat16

    def _setup_amp(self, device: torch.device) -> None:
        dtype = self._resolved_dtype(device)
        self.autocast = (device.type, dtype) if self._autocast_enabled else None
        if self.grad_scaler is not None and self.is_grad_scaler_enabled():
            return  # a second run() continues with the same scaler
        spec = self._scaler_spec
        if isinstance(spec, torch.amp.GradScaler):
            self.grad_scaler = spec if spec.is_enabled() else None
        elif spec is True or (spec is None and self._autocast_enabled and dtype == torch.float16):
            self.grad_scaler = torch.amp.GradScaler(device.type, **self._scaler_kwargs)
        else:
            self.grad_scaler = None

    def _after_optimizer_step(self) -> None:
        if self.grad_scaler is not None and self._scaler_stepped:
            self.grad_scaler.update()
        self._scaler_stepped = False

    def set_gradient_accumulate(self, every: int = 1) -> None:
        """Step the optimizers every ``every`` iterations, each micro-batch's loss divided by the
        number of micro-batches in its cycle."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"set_gradient_accumulate(every=...) needs an int >= 1, got {every!r}")
        self._check_not_running("change gradient accumulation of")
        self.grad_acc_steps = every

    def set_nonfinite_policy(self, policy: str = "raise", check_every: int = 50) -> None:
        """What a NaN or infinite train loss does, decided the same way on every rank:

        * ``"raise"`` (default): ``NonFiniteLossError`` naming the LossNode and the steps between
          which it happened. It is found in the LossNodes' epoch accumulators, read every
          ``check_every`` optimizer steps and at every train epoch end: no host read per iteration.
        * ``"skip"``: skip the optimizer step of an accumulation cycle with a non-finite loss (and
          its scheduler and scaler steps), with a warning; reads one device value per step.
        * ``"stop"``: skip it, save a checkpoint at the end of the iteration and end the run cleanly.
        * ``"ignore"``: no check.
        """
        if policy not in ("raise", "skip", "stop", "ignore"):
            raise ValueError(f"non-finite policy must be 'raise', 'skip', 'stop' or 'ignore', got {policy!r}")
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"non-finite check_every must be an int >= 1, got {check_every!r}")
        self.nonfinite_policy = policy
        self.nonfinite_check_every = check_every

    def learning_rates(self) -> dict[str, list[float]]:
        """The current learning rate of every parameter group, by ``"<uid>/<pattern>"``, for every
        ModuleNode with optimizers."""
        from ice_ignite.nodes.module import ModuleNode

        return {f"{uid}/{key}": lrs for uid, node in self._nodes.items() if isinstance(node, ModuleNode)
                for key, lrs in node.learning_rates().items()}

    # -- observing ------------------------------------------------------------------------------
    def on(self, event: Any, handler: Any, tags: "str | Iterable[str]" = DEFAULT_TAG, train: bool | None = None
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

    def _observe(self, task: Task) -> list:
        """Attach this run's observers and the ``on`` handlers to ``task.engine`` for one run."""
        handles = []
        if self._guard is not None:  # preemption is checked at every iteration boundary of a run
            handles.append(task.engine.add_event_handler(Events.ITERATION_STARTED, task.on_iteration_started))
        for event, handler, tags, train in self._handlers:
            if (train is None or train == task.train) and (tags == (DEFAULT_TAG,) or set(tags) <= set(task.tags)):
                handles.append(task.engine.add_event_handler(event, handler))
        for observer in (self._board_logger, self._progress_view):
            if observer is not None:
                handles.extend(observer.attach(task))
        return handles

    def print_forward_output(self, *nodenames: str, every: int = 1, total: int | None = None,
                             tags: "str | Iterable[str]" = DEFAULT_TAG, train_only: bool = True,
                             localrank0_only: bool = True) -> Node:
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

    def draw(self, tags: "str | Iterable[str]" = DEFAULT_TAG, path: "str | os.PathLike | None" = None
             ) -> list[Path]:
        """Write the graph of a task with ``tags`` as Graphviz DOT and Mermaid text, and as a PNG or
        SVG picture when Graphviz's ``dot`` or matplotlib is installed: ``path`` names the picture
        (``graph.png``, ``graph.svg``) or the DOT file (``graph.dot``), and the other files go
        beside it. Edges are the dependencies recorded while the graph ran (run a task first).
        Default path: ``<run dir>/graph-<tags>.png``. Returns the files written.
        """
        graph = self.select_egraph(tags)
        if path is None:
            if self.run_dir is None:
                raise ValueError("draw needs path=... outside a run (there is no run directory to draw into)")
            path = self.run_dir / f"graph-{','.join(graph.tags).replace('*', 'default')}.png"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = [path.with_suffix(".dot"), path.with_suffix(".mmd")]
        written[0].write_text(to_dot(graph))
        written[1].write_text(to_mermaid(graph))
        if path.suffix.lower() in (".png", ".svg"):
            if render(graph, path) is not None:
                written.append(path)
            else:
                logger.warning("draw: neither Graphviz's dot nor matplotlib is installed; wrote %s and %s only",
                               written[0], written[1])
        return written

    # -- board --------------------------------------------------------------------------------
    @property
    def board(self) -> Any:
        """A tensorboardX SummaryWriter into ``logs/`` on global rank 0 of a run, else a NullWriter."""
        if self._board is None:
            if self._rundir is not None and self.launcher is not None and self.launcher.rank == 0:
                from tensorboardX import SummaryWriter

                self._board = SummaryWriter(logdir=str(self._rundir.logs))
            else:
                return NullWriter()
        return self._board

    # -- schedule -------------------------------------------------------------------------------
    def exec_tasks(self, tasks: Any, launcher: Launcher) -> None:
        """Run a schedule (Tasks, Repeats, callables ``f()``, ``f(g)``, ``f(g, launcher)``) in this
        process. ``HyperGraph.run`` calls it; call it directly to run without a run directory."""
        if not isinstance(launcher, Launcher):
            raise TypeError(f"exec_tasks needs an ice.Launcher, got {type(launcher).__name__}")
        entries = flatten_schedule(tasks)
        if self._entries is not None:  # nested, from a schedule callable: progress stays the outer one
            self._run_entries(entries, launcher, 0, None, track=False)
            return
        outer = self.launcher
        if outer is None:
            self.launcher = launcher
            self._setup_amp(launcher.device)
        try:
            self._run_entries(entries, launcher, 0, None, track=True)
        finally:
            if outer is None:
                self.launcher = None

    def _run_entries(self, entries: list[ScheduleEntry], launcher: Launcher, start: int, resume: dict | None,
                     track: bool) -> None:
        if track:
            self._entries = entries
        try:
            for i in range(start, len(entries)):
                item = entries[i].item
                if track:
                    self._position = i
                    self._entry_state = "pending"
                    self._check_preemption(0)
                try:
                    if isinstance(item, Task):
                        self._entry_state = "task-pending"
                        self._running_task = item
                        try:
                            item.run(self, resume if i == start else None)
                        finally:
                            self._running_task = None
                    else:
                        self._entry_state = "callable"
                        call_with_arity(item, self, launcher)
                except StopAllTasks:
                    logger.info("StopAllTasks raised in %s: the schedule ends here", entries[i].description)
                    return
                except StopTask:
                    logger.info("StopTask raised in %s, outside a task: ignored", entries[i].description)
            if track:
                self._position = len(entries)
        finally:
            if track:
                self._entries = None
                self._entry_state = "idle"

    def _progress(self, iteration_offset: int = 0) -> dict:
        """Where the schedule continues if resumed from a checkpoint taken now (``iteration_offset``
        -1: at an ITERATION_STARTED, before the iteration ran)."""
        if self._entries is None:
            return {"entry": 0, "task": None}
        task = self._running_task
        if self._entry_state == "callable":
            return {"entry": self._position + 1, "task": None}
        if task is not None and task._in_engine:
            return {"entry": self._position, "task": task.progress(iteration_offset)}
        if task is not None and task._engine_done:
            return {"entry": self._position + 1, "task": None}
        return {"entry": self._position, "task": None}

    def _check_preemption(self, iteration_offset: int) -> None:
        """At an iteration (offset -1) or schedule (0) boundary: after SIGTERM / SIGINT on any
        rank, every rank checkpoints at the same boundary and raises Preempted."""
        guard = self._guard
        if guard is None:
            return
        local = guard.requested is not None
        agreed = self._agreed
        if agreed is not None:
            local = agreed.check(local) if iteration_offset else agreed.check_now(local)
        if not local:
            return
        path = self._checkpointer.save(None, (DEFAULT_TAG,), self._progress(iteration_offset))
        raise Preempted(guard.requested or signal.SIGTERM, path)

    # -- run ------------------------------------------------------------------------------------
    def run(self, tasks: Any, devices: str = "auto", run_id: str | None = None,
            out_dir: "str | os.PathLike | None" = None, resume_from: "str | os.PathLike | None" = None,
            seed: int = 0, nnodes: str = "1:1", node_rank: int = 0, dist_backend: str = "auto",
            master_addr: str = "127.0.0.1", master_port: int | None = None, rdzv_endpoint: str = "",
            rdzv_backend: str = "static", max_restarts: int = 0, start_method: str = "spawn",
            launcher: Launcher | None = None, *, strict_resume: bool = True, n_saved: int | None = None,
            log_every: int = 50, progress: bool = True, hparams: dict | None = None, timing: bool = False) -> Path:
        """Run the schedule ``tasks`` in a run directory ``out_dir/run_id``.

        Args:
            tasks: a list of Tasks, Repeats and callables.
            devices: ``"auto"``, ``"cpu"``, ``"cuda:0"``, ... (see ``parse_devices``).
            run_id: the run directory's name; None makes a fresh timestamped one.
            out_dir: where run directories live (default ``runs``).
            resume_from: a checkpoint path, or ``"auto"`` for the newest valid checkpoint of the
                run directory; the run continues exactly where that checkpoint was taken.
            seed: the base seed of every random stream of the run.
            nnodes: ``"N"`` or ``"MIN:MAX"`` machines (torchrun's ``--nnodes``).
            node_rank: this machine's rank (static rendezvous).
            master_addr: the address of node 0 (static rendezvous).
            master_port: the port on node 0 (static rendezvous; required with several machines).
            rdzv_endpoint: ``host:port`` of a c10d rendezvous.
            rdzv_backend: ``"static"`` or ``"c10d"``.
            max_restarts: how many times torch's elastic agent restarts failed workers; restarted
                workers resume from the run's last checkpoint.
            dist_backend: ``"auto"`` (gloo on CPU, nccl on CUDA), ``"gloo"`` or ``"nccl"``.
            start_method: ``"spawn"``: workers re-run the entry script (as under torchrun);
                ``"fork"``: workers are forked from this process (the default where there is
                no entry script: a notebook, ``python -c``, pytest).
            launcher: run in this process with this Launcher, starting or joining nothing.
            strict_resume: a resumed checkpoint whose schedule is not a prefix of ``tasks`` raises
                ``ResumeTaskFailed`` (True) or warns and restarts the schedule with the loaded
                states (False).
            n_saved: keep only the newest ``n_saved`` periodic checkpoints (None: keep all).
            log_every: write losses, learning rates and the grad scale to the board every this
                many optimizer steps (0: only epoch values); the only host reads logging adds.
            progress: show progress (a bar per task on a terminal, a line every 30 s otherwise).
            hparams: hyper-parameters to record with the final metrics (TensorBoard's HParams).
            timing: time every node's forward, backward and update per task, and write
                ``timing.csv`` and ``timing.png`` into the run directory.

        With several devices (or ``nnodes`` > 1) ``run`` starts one worker per device and, in
        ``spawn`` mode, exits when they are done; a worker's ``run`` (also under ``torchrun``,
        SLURM or an initialised process group) joins the process group and runs the schedule.
        SIGTERM and SIGINT make the run save a checkpoint at the next iteration boundary and
        raise ``Preempted`` (a ``SystemExit`` with code 128 + signal number).

        Returns:
            The run directory.
        """
        entries = flatten_schedule(tasks)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if resume_from is not None and not isinstance(resume_from, (str, os.PathLike)):
            raise TypeError(f"resume_from must be None, 'auto' or a checkpoint path, got {resume_from!r}")
        if n_saved is not None and (isinstance(n_saved, bool) or not isinstance(n_saved, int) or n_saved < 1):
            raise ValueError(f"n_saved must be None (keep all) or an int >= 1, got {n_saved!r}")
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 0:
            raise ValueError(f"log_every must be an int >= 0, got {log_every!r}")
        if hparams is not None and not isinstance(hparams, dict):
            raise TypeError(f"hparams must be a dict of hyper-parameters, got {type(hparams).__name__}")
        if start_method not in ("spawn", "fork"):
            raise ValueError(f"start_method must be 'spawn' (re-run the script) or 'fork', got {start_method!r}")
        joined = False
        if launcher is None and in_worker():
            launcher, joined = join(devices, dist_backend)
        elif launcher is None:
            device_list = parse_devices(devices)
            if len(device_list) > 1 or str(nnodes) not in ("1", "1:1"):
                rundir = prepare_run_dir(out_dir, run_id, resume_from)
                command = script_command() if start_method == "spawn" else None
                fork = command is None  # no entry script to re-run (a notebook, python -c): fork

                def worker() -> None:  # forked: the graph and its lambdas are inherited, not pickled
                    self.run(tasks, devices=devices, run_id=rundir.run_id, out_dir=out_dir, resume_from=resume_from,
                             seed=seed, dist_backend=dist_backend, strict_resume=strict_resume, n_saved=n_saved,
                             log_every=log_every, progress=progress, hparams=hparams, timing=timing)

                os.environ[_RUN_ID_ENV] = rundir.run_id
                try:
                    launch(worker if fork else command, len(device_list), nnodes, node_rank, master_addr, master_port,
                           rdzv_endpoint, rdzv_backend, max_restarts, "fork" if fork else "spawn",
                           run_id=run_id or "ice_ignite")
                except Preempted as e:
                    print(f"ice_ignite: {e}", file=sys.stderr, flush=True)
                    raise
                finally:
                    os.environ.pop(_RUN_ID_ENV, None)
                if fork:
                    return rundir.root
                raise SystemExit(0)  # as under torchrun, the workers ran the whole script
            launcher = Launcher(device=device_list[0])
        if joined and resume_from is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
            resume_from = "auto"  # the elastic agent restarted the workers: continue the run
        try:
            rundir = self._open_run_dir(out_dir, run_id, resume_from, launcher)
            bars = progress and launcher.local_rank == 0 and sys.stderr.isatty()
            with run_logging(rundir.logs, launcher.rank, bars), PreemptionGuard() as self._guard:
                self._enter_run(launcher, rundir, seed, n_saved)
                if launcher.rank == 0:
                    self._board_logger = BoardLogger(self, log_every)
                if progress and launcher.local_rank == 0:
                    self._progress_view = Progress(sys.stderr)
                self._timer = NodeTimer(launcher.device) if timing else None
                start, task_resume = 0, None
                if resume_from is not None:
                    start, task_resume = self._checkpointer.resume(resume_from, entries, strict_resume)
                self._run_entries(entries, launcher, start, task_resume, track=True)
                if hparams is not None and self._board_logger is not None:
                    self._board_logger.write_hparams(hparams)
                if self._timer is not None and launcher.rank == 0:
                    self._timer.write(rundir.root)
        except Preempted as e:
            logger.warning("%s", e)
            print(f"ice_ignite: rank {launcher.rank}: {e}", file=sys.stderr, flush=True)
            raise
        except Exception as e:
            if joined:
                _record_worker_error(e)
            raise
        finally:
            self._guard = None
            self._exit_run()
            leave(joined)
        return rundir.root

    def _open_run_dir(self, out_dir: "str | os.PathLike | None", run_id: str | None, resume_from: Any,
                      launcher: Launcher) -> RunDir:
        """The run directory, prepared by global rank 0 and agreed by every rank."""
        if launcher.world_size == 1:
            return prepare_run_dir(out_dir, run_id, resume_from)
        run_id = run_id or os.environ.get(_RUN_ID_ENV)
        prepared, failure, answer = None, None, (None, None)
        if launcher.rank == 0:
            try:
                prepared = prepare_run_dir(out_dir, run_id, resume_from)
                answer = (prepared.run_id, None)
            except Exception as e:
                failure, answer = e, (None, f"{type(e).__name__}: {e}")
        agreed_id, error = parallel.broadcast_object(answer)
        if failure is not None:
            raise failure
        if error is not None:
            raise RuntimeError(f"global rank 0 could not prepare the run directory: {error}")
        if prepared is not None:
            return prepared
        rundir = RunDir(Path(out_dir if out_dir is not None else DEFAULT_OUT_DIR) / agreed_id)
        rundir.create()  # on other machines too: each rank writes its own log there
        return rundir

    def _enter_run(self, launcher: Launcher, rundir: RunDir, seed: int, n_saved: int | None) -> None:
        self.launcher = launcher
        self._rundir = rundir
        self.run_dir = rundir.root
        self.run_id = rundir.run_id
        self.seed = seed
        seed_everything(seed + launcher.rank)
        self._setup_amp(launcher.device)
        self._agreed = parallel.AgreedFlag() if launcher.world_size > 1 else None
        self._checkpointer.open(rundir, n_saved, writer=launcher.rank == 0)
        self._backup_sources()

    def _exit_run(self) -> None:
        self._board_logger = self._progress_view = self._timer = None
        if self._agreed is not None:
            self._agreed.close()
            self._agreed = None
        if self._board is not None:
            self._board.close()
            self._board = None
        self.launcher = None
        self._rundir = None

    # -- checkpoints ----------------------------------------------------------------------------
    def save_checkpoint(self, save_to: "str | os.PathLike | None" = None, tags: "str | Iterable[str]" = DEFAULT_TAG
                        ) -> Path | None:
        """Write a checkpoint of the run: node states (of ``tags``; ``"*"``: every node), counters,
        RNG streams, GradScaler and the schedule position. Call it on every rank; global rank 0
        writes. Returns the file written (None on other ranks).

        Raises:
            CheckpointError: no run directory and no ``save_to``, or ``save_to`` exists.
        """
        return self._checkpointer.save(save_to, normalize_tags(tags, what="save_checkpoint tags"), self._progress())

    def load_checkpoint(self, resume_from: "str | os.PathLike", strict: bool = False,
                        tags: "str | Iterable[str]" = DEFAULT_TAG) -> dict:
        """Restore node states (of ``tags``) from a checkpoint, e.g. pretrained weights before
        fine-tuning. Counters, RNG streams and schedule progress are left alone.

        Returns:
            ``{"loaded": [...uids], "only_in_checkpoint": [...], "only_in_graph": [...]}``.
        """
        tag_tuple = normalize_tags(tags, what="load_checkpoint tags")
        state = read_checkpoint(resume_from, map_location=self._checkpointer.map_location())
        return self._checkpointer.load_nodes(state, tag_tuple, strict, str(resume_from))

    def _save_best(self, node: Node, value: float, higher_better: bool, max_keep: int) -> Path | None:
        return self._checkpointer.save_best(node, value, higher_better, max_keep)

    def backup_source_files(self, entrypoint: "str | os.PathLike") -> None:
        """Copy ``entrypoint`` (usually ``__file__``) and the local modules it imports into
        ``src/`` of the run directory, at the start of every ``run`` (now, during one)."""
        self._entrypoint = entry_script(entrypoint)
        self._backup_sources()

    def _backup_sources(self) -> None:
        """During a run, on global rank 0: copy the registered entry script's sources into ``src/``."""
        if self._entrypoint is not None and self._rundir is not None and self.launcher is not None \
                and self.launcher.rank == 0:
            backup_sources(self._entrypoint, self._rundir.src)
