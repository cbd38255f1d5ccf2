"""``Checkpointer``: what a HyperGraph's checkpoint holds, how it is written, and how a run
resumes from one (B8)."""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ice_ignite.checkpoint.files import (
    FORMAT,
    best_filename,
    best_files,
    check_loadable,
    checkpoint_filename,
    next_sequence,
    prune_checkpoints,
    remove_checkpoint,
    remove_partial_writes,
    write_checkpoint,
    write_sharded_checkpoint,
)
from ice_ignite.checkpoint.resize import adapt_state, comparable_data_settings
from ice_ignite.checkpoint.resume_checks import (
    TrainingChanges,
    compare_config,
    compare_training,
    config_record,
    training_record,
)
from ice_ignite.checkpoint.rundir import RunDir
from ice_ignite.checkpoint.transfer import LoadSpec, check_optimizer_kinds, has_state, load_node_states
from ice_ignite.config.record import append_config_history
from ice_ignite.config.values import ConfigValues
from ice_ignite.distributed import parallel, preemption
from ice_ignite.errors import CheckpointError, ResumeTaskFailed
from ice_ignite.graph.schedule import ScheduleEntry, ScheduleRunner, handler_label, keyed_tasks, resume_point
from ice_ignite.graph.tags import DEFAULT_TAG
from ice_ignite.graph.task import Task
from ice_ignite.nodes.context import RunContext
from ice_ignite.nodes.dataset import DatasetNode
from ice_ignite.nodes.loss import LossNode
from ice_ignite.nodes.metric import MetricNode
from ice_ignite.nodes.module import ModuleNode
from ice_ignite.training.seeding import rng_state, set_rng_state

__all__ = ["Checkpointer", "Resume", "PendingWrite", "cpu_copy"]

logger = logging.getLogger("ice_ignite")

Nodes = Callable[..., dict]  # select_nodes(*tags) -> {uid: node}


class Resume:
    """Where a restored checkpoint continues: the schedule entry, the position inside its task,
    and ``reload_epoch()``, which restores the checkpointed state again after a resumed epoch's
    EPOCH_STARTED handlers (which reset metrics, as in ignite)."""

    def __init__(self, entry: int, task: dict | None, reload_epoch: Callable[[], None] | None):
        self.entry = entry
        self.task = task
        self.reload_epoch = reload_epoch


def cpu_copy(tree: Any, reuse: dict | None = None, memo: dict | None = None, key: str = "") -> Any:
    """``tree`` (a checkpoint's state) with every tensor copied to the CPU and every container
    rebuilt, so that training may change the originals while the copy is written. Tensors that are
    one object stay one object. ``reuse`` maps key paths to the tensors of an earlier copy whose
    write finished: copied into when shape and dtype match (no new memory to fault in); updated."""
    memo = {} if memo is None else memo
    if isinstance(tree, torch.Tensor):
        if id(tree) in memo:
            return memo[id(tree)]
        source = tree.detach()
        old = reuse.get(key) if reuse is not None else None
        if (
            old is not None
            and old.shape == source.shape
            and old.dtype == source.dtype
            and source.layout == torch.strided
            and not source.is_sparse
        ):
            copy = old.copy_(source)
        else:
            copy = source.to("cpu", copy=True)
        if reuse is not None:
            reuse[key] = copy
        memo[id(tree)] = copy
        return copy
    if isinstance(tree, dict):
        out: Any = type(tree)((k, cpu_copy(v, reuse, memo, f"{key}/{k!r}")) for k, v in tree.items())
        if hasattr(tree, "_metadata"):  # a module's state_dict: its version metadata
            out._metadata = tree._metadata
        return out
    if isinstance(tree, (list, tuple, set)):
        items = [cpu_copy(v, reuse, memo, f"{key}/{i}") for i, v in enumerate(tree)]
        return type(tree)(items) if not hasattr(tree, "_fields") else type(tree)(*items)
    return tree


class PendingWrite:
    """A checkpoint being written by a background thread (``save_checkpoint(async_=True)``)."""

    def __init__(self, path: Path, job: Callable[[], None]):
        self.path = path
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(job,), name=f"ice_ignite checkpoint {path.name}", daemon=True
        )
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # raised in the training thread by wait()
            self.error = e

    def wait(self) -> None:
        """Wait for the write; raise its error."""
        self._thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            if isinstance(error, CheckpointError):
                raise CheckpointError(f"{error} (an asynchronous checkpoint write)") from error.__cause__
            raise CheckpointError(
                f"writing checkpoint {str(self.path)!r} in the background failed "
                f"({type(error).__name__}: {error}); the previous checkpoints are intact"
            ) from error


class Checkpointer:
    """Writes and reads the checkpoints of one HyperGraph.

    A checkpoint holds the schedule and the position in it, every node's ``state_dict`` by uid,
    gradients of an unfinished accumulation cycle, the global counters, every RNG stream (per
    rank), the base seed, the GradScaler, every task engine's state and the state of the stateful
    handlers attached to task engines (``ParamScheduler``, ``EarlyStopping``, ``Checkpoint``,
    metrics) and of the objects registered by name, and the DatasetNode settings an exact resume
    needs (checked on resume).
    """

    def __init__(self, nodes: Nodes, context: RunContext, runner: ScheduleRunner, objects: dict[str, Any]):
        self.nodes = nodes
        self.context = context
        self.runner = runner
        self.objects = objects
        self.seq = 0
        self.n_saved: int | None = None
        self.rundir: RunDir | None = None
        #: whether saves write in the background unless told otherwise (``OutputOptions(async_checkpoints=...)``)
        self.async_default = False
        self._pending: PendingWrite | None = None
        self._buffers: dict[str, torch.Tensor] = {}  # the CPU copies of the last asynchronous save, reused
        #: the entries of the schedule that ran last (their tasks' engines are checkpointed)
        self.entries: list[ScheduleEntry] = []
        #: the run's config (``run(config=...)``): checkpointed, and compared on resume
        self.config: ConfigValues | None = None

    def open(self, rundir: RunDir, n_saved: int | None, writer: bool, async_default: bool = False) -> None:
        """Start a run in ``rundir``; the ``writer`` process clears partial writes of a killed run."""
        self.rundir = rundir
        self.n_saved = n_saved
        self.async_default = async_default
        if writer:
            remove_partial_writes(rundir.ckpts)
        self.seq = parallel.broadcast_object(next_sequence(rundir.ckpts) if writer else None)

    def wait(self) -> None:
        """Wait for a checkpoint being written in the background; raise its error (a
        ``CheckpointError`` naming the file)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.wait()

    def close(self) -> None:
        """End the run: a pending write waited for (its error logged: ``wait`` raises it where
        the run ends normally), and no run directory to write to."""
        try:
            self.wait()
        except CheckpointError as e:
            logger.error("%s", e)
        self.rundir = None
        self.async_default = False
        self._buffers = {}

    def map_location(self) -> Any:
        """Where loaded tensors go: this process's device."""
        return self.context.device

    def _tasks(self) -> dict[str, Task]:
        return keyed_tasks(self.runner.entries if self.runner.entries is not None else self.entries)

    # -- the state --------------------------------------------------------------------------
    def state_dict(self, tags: tuple[str, ...] = (DEFAULT_TAG,), full: bool = True) -> dict:
        """Everything a resumable checkpoint holds (a collective in multi-process runs); with
        ``full=False`` the states of sharded ModuleNodes keep their tensors sharded (each process
        its own pieces, for ``write_sharded_checkpoint``)."""
        ctx, runner = self.context, self.runner
        progress = runner.progress()
        tasks = self._tasks()
        scaler = ctx.precision.grad_scaler
        state = {
            "format": FORMAT,
            "seq": self.seq,
            "schedule": [e.description for e in runner.entries] if runner.entries is not None else [],
            "schedule_paths": [list(e.path) for e in runner.entries] if runner.entries is not None else [],
            "progress": progress,
            "nodes": {
                uid: node.state_dict(full=False) if not full and self._is_sharded(node) else node.state_dict()
                for uid, node in self.nodes(*tags).items()
            },
            "data_settings": {
                uid: node.resume_settings() for uid, node in self.nodes(*tags).items() if isinstance(node, DatasetNode)
            },
            # what differs between ranks, in rank order (gathered on rank 0, the writer; the other
            # ranks build the rest too, as ignite's Checkpoint does: a sharded state_dict is a collective)
            "ranks": parallel.gather_objects({"rng": rng_state(), "grads": self._mid_cycle_grads(progress)}),
            "counters": ctx.counters.state_dict(),
            "seed": ctx.seed,
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "grad_acc_steps": ctx.grad_acc_steps,
            # the optimizers' classes, hyper-parameters and clipping, and the autocast dtype (resume checks)
            "training": training_record(self.nodes(DEFAULT_TAG), ctx.precision),
            "world_size": ctx.world_size,
            # the run's config and its hash (``run(config=...)``; None without one): compared on resume
            "run_config": config_record(self.config),
            "engines": {key: task.engine_state() for key, task in tasks.items()},
            "handlers": {
                f"{key}/{i}": {"type": type(obj).__name__, "state": obj.state_dict()}
                for key, task in tasks.items()
                for i, obj in enumerate(task.engine.stateful_handlers())
            },
            "objects": {name: obj.state_dict() for name, obj in self.objects.items()},
        }
        check_loadable(state)  # a run never writes a checkpoint it cannot read (nor ignite's Checkpoint)
        return state

    def _mid_cycle_grads(self, progress: dict) -> dict:
        """Gradients accumulated in an unfinished accumulation cycle, by ModuleNode uid."""
        task = self.runner.task
        if progress["task"] is None or task is None or not task.train or task.graph is None:
            return {}
        position = progress["task"]["iteration"] % progress["task"]["epoch_length"]
        if position % self.context.grad_acc_steps == 0:
            return {}
        return {
            node.uid: {name: p.grad for name, p in node.named_trainable_parameters() if p.grad is not None}
            for node in task.graph.module_nodes
        }

    # -- writing ----------------------------------------------------------------------------
    @staticmethod
    def _is_sharded(node: object) -> bool:
        return isinstance(node, ModuleNode) and node.sharded

    def _sharded_uids(self, tags: tuple[str, ...]) -> list[str]:
        """The ModuleNodes of ``tags`` that are FSDP-sharded now: a checkpoint of them is a directory."""
        return [uid for uid, node in self.nodes(*tags).items() if self._is_sharded(node)]

    def save(
        self,
        save_to: str | os.PathLike | None,
        tags: tuple[str, ...],
        async_: bool | None = None,
        after: Callable[[], None] | None = None,
    ) -> Path | None:
        """Collect the state (on every rank) and write it: a file by global rank 0, or, when FSDP
        sharded ModuleNodes are among ``tags``, a directory every rank writes its shards to (their
        tensors are not gathered). Returns the path (None on other ranks).

        The board is flushed to disk first and its event files' sizes recorded (a resume cuts it
        back there). With ``async_`` (None: the run's ``async_checkpoints``), a file checkpoint is
        written by a background thread from a CPU copy of the state taken now, published, pruned
        and followed by ``after`` there; the next save, and the end of the run, wait for it and
        raise its error. A pending write is waited for first in any case. A second SIGINT during
        a synchronous write waits for it to complete."""
        with preemption.saving():
            return self._save(save_to, tags, async_, after)

    def _save(
        self,
        save_to: str | os.PathLike | None,
        tags: tuple[str, ...],
        async_: bool | None,
        after: Callable[[], None] | None,
    ) -> Path | None:
        run_ckpts = self.rundir.ckpts if self.rundir is not None else None  # where the run's checkpoints go
        if save_to is None and run_ckpts is None:
            raise CheckpointError(
                "save_checkpoint needs a run directory: call it during HyperGraph.run, or pass save_to=path"
            )
        self.wait()
        sharded = self._sharded_uids(tags)
        state = self.state_dict(tags, full=not sharded)
        board = self.context.flush_board()  # everything logged before the checkpoint is on disk before it
        if board is not None:
            state["board"] = board
        self.seq += 1
        if save_to is None:
            assert run_ckpts is not None  # checked above
            counters = self.context.counters
            path = run_ckpts / checkpoint_filename(
                state["seq"], counters.epochs.train, counters.steps.train, sharded=bool(sharded)
            )
        else:
            path = Path(save_to)
        if sharded:  # DCP writes collectively: always now (see docs/checkpoints.md)
            write_sharded_checkpoint(state, sharded, path)
        if self.context.rank != 0:
            return None
        # the run's own checkpoints keep the newest n_saved; a save_to path is left alone
        ckpts, n_saved = (run_ckpts, self.n_saved) if save_to is None else (None, None)

        def finish() -> None:
            logger.info("saved checkpoint %s", path)
            if ckpts is not None and n_saved is not None:
                prune_checkpoints(ckpts, n_saved)
            if after is not None:
                after()

        if sharded or not (self.async_default if async_ is None else async_):
            if not sharded:
                write_checkpoint(state, path)
            finish()
            return path
        if path.exists():  # said now, as a synchronous save would
            raise CheckpointError(f"checkpoint {str(path)!r} exists; save to another path or delete it first")
        snapshot = cpu_copy(state, self._buffers)

        def job() -> None:
            write_checkpoint(snapshot, path)
            finish()

        self._pending = PendingWrite(path, job)
        return path

    def save_best(self, node: MetricNode, value: float, higher_better: bool, max_keep: int) -> Path | None:
        """Keep checkpoints of the best ``max_keep`` values of a MetricNode (``MetricNode.save_best``)."""
        uid = str(node.uid)  # a node of the graph: it has one
        if self.rundir is None:
            raise CheckpointError(f"{node.uid}: save_best needs a run directory: call it during HyperGraph.run")
        if isinstance(max_keep, bool) or not isinstance(max_keep, int) or max_keep < 1:
            raise ValueError(f"save_best max_keep must be an int >= 1, got {max_keep!r}")
        value = float(value)
        if not math.isfinite(value):
            warnings.warn(f"{node.uid}: save_best ignores the non-finite value {value}", stacklevel=3)
            return None
        records = node.best_records
        worse = (lambda a, b: a <= b) if higher_better else (lambda a, b: a >= b)
        if len(records) >= max_keep and worse(value, records[-1][0]):
            return None
        counters = self.context.counters
        name = best_filename(
            self.seq,
            counters.epochs.train,
            counters.steps.train,
            uid,
            value,
            sharded=bool(self._sharded_uids((DEFAULT_TAG,))),
        )
        records.append((value, name))
        records.sort(key=lambda r: -r[0] if higher_better else r[0])
        del records[max_keep:]
        keep = {f for _, f in records}
        # files named by an older ice_ignite say the node's name only: pruned when no other node has it
        alone = [n.name for n in self.nodes(DEFAULT_TAG).values()].count(node.name) == 1
        ckpts = self.rundir.ckpts

        def prune() -> None:  # rank 0, once the new file is published: the files on disk follow the records
            for old in best_files(ckpts, uid, legacy=alone):
                if old.name not in keep:
                    remove_checkpoint(old)

        return self.save(self.rundir.ckpts / name, (DEFAULT_TAG,), after=prune)

    # -- loading ----------------------------------------------------------------------------
    def load_nodes(
        self, state: dict, tags: tuple[str, ...], strict: bool, source: str, spec: LoadSpec | None = None
    ) -> dict:
        """Load the parts ``spec`` asks for (default: module weights and buffers) of the saved node
        states into the nodes of ``tags``; see ``transfer.load_node_states`` for the report."""
        return load_node_states(
            state["nodes"], self.nodes(DEFAULT_TAG), self.nodes(*tags), spec or LoadSpec(), strict, source
        )

    def restore(self, state: dict, source: str, entries: list[ScheduleEntry], strict: bool) -> Resume:
        """Restore everything from a checkpoint's ``state`` for a run of ``entries``; returns where
        it continues."""
        self._check_graph(state, source, strict)
        self._check_config(state, source, strict)
        changes = self._check_training(state, source, strict)
        point = self._resume_point(state, source, entries, strict)
        if state["world_size"] != self.context.world_size:
            state = self._resize(state, source, entries, strict)
        self._load_run_state(state, source, entries)
        changes.apply()
        ctx = self.context
        ctx.counters.load_state_dict(state["counters"])
        scaler = ctx.precision.grad_scaler
        if state["grad_scaler"] is not None and scaler is not None:
            scaler.load_state_dict(state["grad_scaler"])
        if state["seed"] != ctx.seed:
            if ctx.seed_given:  # the default seed (torch.initial_seed()) silently gives way to the checkpoint's
                warnings.warn(
                    f"checkpoint {Path(source).name} was taken with seed={state['seed']}; continuing with it",
                    stacklevel=5,
                )
            ctx.seed = state["seed"]
        mine = state["ranks"][ctx.rank]
        for uid, grads in mine["grads"].items():
            for name, param in self.nodes(DEFAULT_TAG)[uid].named_trainable_parameters():
                if name in grads:
                    param.grad = grads[name].to(param.device)
                    if changes.grad_factor != 1.0:  # a lenient resume with another gradient accumulation
                        param.grad.mul_(changes.grad_factor)
        self.seq = max(self.seq, state["seq"] + 1)
        self._rewind_board(state, source)
        logger.info("resuming from %s", source)
        if point is None:
            return Resume(0, None, None)

        def reload_epoch() -> None:  # after the resumed epoch's EPOCH_STARTED handlers
            self._load_run_state(state, source, entries, engines=False)
            changes.apply()

        return Resume(point[0], point[1], reload_epoch)

    def _resume_point(
        self, state: dict, source: str, entries: list[ScheduleEntry], strict: bool
    ) -> tuple[int, dict | None] | None:
        """Where the checkpoint continues in ``entries`` (``schedule.resume_point``), or None to
        restart the schedule (a lenient resume into another schedule; strict: an error)."""
        described = [e.description for e in entries]
        if state["schedule"] == described[: len(state["schedule"])] or "schedule_paths" not in state:
            # the checkpoint's flattened schedule is a prefix of this run's (a Repeat raised at the end, or
            # the same steps regrouped), or it was written before entries had paths: continue by position
            mismatch = self._check_schedule(source, state["schedule"], described, strict)
            return None if mismatch else (state["progress"]["entry"], state["progress"]["task"])
        saved = [(tuple(path), desc) for path, desc in zip(state["schedule_paths"], state["schedule"])]
        point = resume_point(saved, state["progress"], state.get("engines", {}), entries)
        if point is not None:
            return point
        self._check_schedule(source, state["schedule"], [e.description for e in entries], strict, force=True)
        return None

    def _rewind_board(self, state: dict, source: str) -> None:
        """Cut the board back to where the checkpoint recorded it — when the checkpoint is one of
        this run directory's (a checkpoint of another run recorded another board)."""
        record = state.get("board")
        if record is None or self.rundir is None:
            return
        try:
            ours = Path(source).resolve().parent == self.rundir.ckpts.resolve()
        except OSError:
            ours = False
        if ours:
            changed = self.context.rewind_board(record)
            if changed:
                logger.info("board rewound to checkpoint %s: %s", Path(source).name, "; ".join(changed))

    def _resize(self, state: dict, source: str, entries: list[ScheduleEntry], strict: bool) -> dict:
        """``state`` adapted to this run's number of processes (``resize.adapt_state``)."""
        task = state["progress"]["task"]
        running_key, running_nodes = None, {}
        if task is not None and (task["iteration"] % task["epoch_length"] or not task["epoch_done"]):
            item = entries[state["progress"]["entry"]].item if state["progress"]["entry"] < len(entries) else None
            running_key = next((key for key, t in keyed_tasks(entries).items() if t is item), None)
            running_nodes = self.nodes(*item.tags) if isinstance(item, Task) else {}
        losses = [uid for uid, node in self.nodes(DEFAULT_TAG).items() if isinstance(node, LossNode)]
        return adapt_state(
            state,
            self.context.world_size,
            running_task=running_key,
            running_nodes=running_nodes,
            loss_nodes=losses,
            strict=strict,
            source=source,
            task_names={key: repr(task) for key, task in keyed_tasks(entries).items()},
        )

    def _load_run_state(self, state: dict, source: str, entries: list[ScheduleEntry], engines: bool = True) -> None:
        """Node states, task engines, handler and registered-object states, and this rank's RNG."""
        self._restore_nodes(state, source)
        tasks = keyed_tasks(entries)
        saved_handlers = dict(state.get("handlers", {}))
        for key, task in tasks.items():
            if engines:
                task.load_engine_state(state.get("engines", {}).get(key))
            for i, obj in enumerate(task.engine.stateful_handlers()):
                entry = saved_handlers.pop(f"{key}/{i}", None)
                if entry is None:
                    warnings.warn(
                        f"{source}: handler {type(obj).__name__} #{i} of {task!r} has no saved state; it starts afresh",
                        stacklevel=6,
                    )
                    continue
                if entry["type"] != type(obj).__name__:
                    raise ResumeTaskFailed(
                        f"checkpoint {source!r}: handler #{i} of {task!r} was a {entry['type']} and is now a "
                        f"{type(obj).__name__}; attach the same handlers to task engines in the same order as the "
                        "run that wrote the checkpoint"
                    )
                if entry["state"] is not None:  # None: accumulators of a finished epoch (resize)
                    obj.load_state_dict(entry["state"])
        if saved_handlers:
            labels = {key: repr(task) for key, task in tasks.items()}
            names = [handler_label(key, entry["type"], labels) for key, entry in sorted(saved_handlers.items())]
            warnings.warn(
                f"{source}: saved state of handler(s) {', '.join(names)} has no handler in this run; left unused",
                stacklevel=6,
            )
        saved_objects = state.get("objects", {})
        for name, obj in self.objects.items():
            if name in saved_objects:
                if saved_objects[name] is not None:
                    obj.load_state_dict(saved_objects[name])
            else:
                warnings.warn(f"{source}: registered object {name!r} has no saved state", stacklevel=6)
        rng = state["ranks"][self.context.rank]["rng"]
        if rng is not None:  # None: a process the checkpoint did not have keeps this run's streams
            set_rng_state(rng)

    def _restore_nodes(self, state: dict, source: str) -> None:
        """Load every saved node state whose uid is in the graph, whole and strictly."""
        every = self.nodes(DEFAULT_TAG)
        for uid, saved in state["nodes"].items():
            node = every.get(uid)
            if node is None:
                continue
            if isinstance(node, ModuleNode):
                check_optimizer_kinds(
                    node,
                    saved,
                    source,
                    uid,
                    "resume with the optimizers of the run that wrote "
                    "the checkpoint, or load its weights only with g.load_checkpoint(path) and "
                    "start a new run",
                )
            try:
                node.load_state_dict(saved, strict=True)
            except Exception as e:
                raise CheckpointError(f"loading node {uid!r} from {source} failed: {e}") from e

    def _check_graph(self, state: dict, source: str, strict: bool) -> None:
        """Whether the graph is the one that wrote the checkpoint: the same stateful nodes, and
        DatasetNodes with the same settings; else ``ResumeTaskFailed`` (``strict``) or a warning."""
        every = self.nodes(DEFAULT_TAG)
        saved = state["nodes"]
        gone = [uid for uid, s in saved.items() if uid not in every and s]
        new = [uid for uid, node in every.items() if uid not in saved and has_state(node)]
        problems = [f"node {uid!r} is in the checkpoint but not in this graph" for uid in gone]
        problems += [f"node {uid!r} is in this graph but not in the checkpoint" for uid in new]
        worlds = (state["world_size"], self.context.world_size)
        for uid, then in state.get("data_settings", {}).items():
            node = every.get(uid)
            if isinstance(node, DatasetNode):
                now = node.resume_settings()
                hint = {}
                if worlds[0] != worlds[1]:  # per-process batches may change; the global batch may not
                    then, now = comparable_data_settings(then, worlds[0]), comparable_data_settings(now, worlds[1])
                    hint["global batch"] = (
                        f" ({worlds[0]} process(es) then, {worlds[1]} now: keep the global batch, "
                        f"with batch_size={then['global batch']} and batch_size_in_total=True, or "
                        "with a per-process batch_size of global batch / processes)"
                    )
                changed = [
                    f"{key} was {then[key]!r} and is now {now[key]!r}{hint.get(key, '')}"
                    for key in then
                    if key in now and now[key] != then[key]
                ]
                if changed:
                    problems.append(f"DatasetNode {uid!r}: {', '.join(changed)}")
        if not problems:
            return
        msg = f"checkpoint {source!r} was written by another graph: {'; '.join(problems)}"
        if strict:
            rename = f"rename={{{gone[0]!r}: {new[0]!r}}}" if gone and new else "rename={'<old uid>': '<new uid>'}"
            raise ResumeTaskFailed(
                msg + ". A resume continues the same run exactly: give the nodes their names and the DatasetNodes "
                "their settings of the run that wrote the checkpoint; or start a new run that loads its weights with "
                f"g.load_checkpoint(path, {rename}) or LoadCheckpointTask; or pass strict_resume=False to resume anyway "
                "(nodes absent from the checkpoint start afresh, changed DatasetNodes continue from their saved "
                "position with the new settings)"
            )
        warnings.warn(
            msg + "; resuming anyway (strict_resume=False): nodes absent from the checkpoint start afresh, "
            "changed DatasetNodes continue from their saved position with the new settings",
            stacklevel=6,
        )

    def _check_config(self, state: dict, source: str, strict: bool) -> None:
        """Whether the run's config differs from the checkpoint's: ``ResumeTaskFailed`` (``strict``)
        listing every changed key as ``key: old → new``, or a warning and an entry in the run
        directory's ``config-history.yaml`` (the keys, and the optimizer step they change at)."""
        config = self.config
        changed = compare_config(state, config)
        if not changed or config is None:
            return
        saved_hash = state["run_config"]["hash"]
        msg = (
            f"checkpoint {source!r} was taken with another config (hash {saved_hash[:12]}, now "
            f"{config.hash[:12]}): " + "; ".join(changed)
        )
        if strict:
            raise ResumeTaskFailed(
                msg + ". A resume continues the same run exactly: give the checkpoint's values (the run "
                "directory's config.yaml holds them: --config <run dir>/config.yaml); or pass strict_resume=False "
                "to continue with the new config (the change is kept in config-history.yaml); or start a new run "
                "(another run_id) from its weights with g.load_checkpoint(path)"
            )
        step = int(state["counters"]["steps"]["train"])
        warnings.warn(
            msg + f"; resuming anyway with the new config from optimizer step {step} (strict_resume=False; "
            "recorded in config-history.yaml)",
            stacklevel=6,
        )
        if self.context.rank == 0 and self.rundir is not None:
            append_config_history(self.rundir.root, step, source, saved_hash, config.hash, changed)

    def _check_training(self, state: dict, source: str, strict: bool) -> TrainingChanges:
        """Whether resuming would change training: an optimizer's class, hyper-parameters or
        clipping, the gradient accumulation or the autocast dtype differ between the checkpoint and
        the code; ``ResumeTaskFailed`` (``strict``) listing each as old → new, or a warning saying
        which value wins. Returns the changes (applied after loading when not ``strict``)."""
        changes = compare_training(state, self.nodes(DEFAULT_TAG), self.context.grad_acc_steps, self.context.precision)
        if not changes:
            return changes
        msg = f"checkpoint {source!r}: resuming it would change training: "
        if strict:
            raise ResumeTaskFailed(
                msg + changes.describe(with_winner=False) + ". A resume continues the same run exactly: give these "
                "settings (ice.Optimizer arguments, g.set_gradient_accumulate, g.init_autocast) the values of the "
                "run that wrote the checkpoint (old → new as listed); or pass "
                "strict_resume=False to resume with the changes (a warning says which value wins); or start a new "
                "run from its weights with g.load_checkpoint(path) or LoadCheckpointTask"
            )
        warnings.warn(
            msg + changes.describe(with_winner=True) + "; resuming anyway (strict_resume=False)", stacklevel=6
        )
        return changes

    @staticmethod
    def _check_schedule(source: str, saved: list[str], new: list[str], strict: bool, force: bool = False) -> bool:
        """Whether the saved schedule is *not* a prefix of the new one (raise when ``strict``);
        ``force``: it does not continue in the new one, whatever the prefix."""
        mismatch = next((i for i, (a, b) in enumerate(zip(saved, new)) if a != b), None)
        if mismatch is None and len(saved) > len(new):
            mismatch = len(new)
        if mismatch is None and force:
            mismatch = min(len(saved), len(new)) - 1 if saved else 0
        if mismatch is None:
            return False
        got = new[mismatch] if mismatch < len(new) else "the end of the schedule"
        msg = (
            f"checkpoint {source!r}: its schedule is not a prefix of this run's: entry {mismatch} was "
            f"{saved[mismatch]!r} and is now {got!r}"
        )
        if strict:
            raise ResumeTaskFailed(
                msg + "; restore the schedule (raising a Task's epochs / steps or a Repeat's times "
                "is fine: training continues to the new total), or pass strict_resume=False "
                "to run the new schedule from its beginning with the loaded states (every "
                "task of it runs again in full)"
            )
        warnings.warn(msg + "; restarting the schedule with the loaded states", stacklevel=7)
        return True
