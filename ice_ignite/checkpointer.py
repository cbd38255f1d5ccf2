"""``Checkpointer``: what a HyperGraph's checkpoint holds, and how a run resumes from one (B8)."""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ice_ignite import parallel
from ice_ignite.checkpoint import (
    FORMAT,
    best_filename,
    best_files,
    checkpoint_filename,
    latest_valid_checkpoint,
    next_sequence,
    prune_checkpoints,
    read_checkpoint,
    remove_partial_writes,
    write_checkpoint,
)
from ice_ignite.errors import CheckpointError, ResumeTaskFailed
from ice_ignite.rundir import RunDir
from ice_ignite.seeding import rng_state, set_rng_state
from ice_ignite.tags import DEFAULT_TAG

if TYPE_CHECKING:
    from ice_ignite.hypergraph import HyperGraph
    from ice_ignite.nodes.node import Node
    from ice_ignite.task import ScheduleEntry

__all__ = ["Checkpointer"]

logger = logging.getLogger("ice_ignite")


class Checkpointer:
    """Writes and reads the checkpoints of one HyperGraph.

    A checkpoint holds the schedule and the position in it (inside a task: the engine's
    iteration), every node's ``state_dict`` by uid, gradients of an unfinished accumulation
    cycle, the global counters, every RNG stream, the base seed and the GradScaler.
    """

    def __init__(self, hypergraph: "HyperGraph"):
        self.hypergraph = hypergraph
        self.seq = 0
        self.n_saved: int | None = None

    @property
    def rundir(self) -> RunDir | None:
        """The run directory of the HyperGraph's run (None outside a run)."""
        return self.hypergraph._rundir

    def open(self, rundir: RunDir, n_saved: int | None, writer: bool) -> None:
        """Start a run in ``rundir``; the ``writer`` process clears partial writes of a killed run."""
        self.n_saved = n_saved
        if writer:
            remove_partial_writes(rundir.ckpts)
        self.seq = parallel.broadcast_object(next_sequence(rundir.ckpts) if writer else None)

    def map_location(self) -> Any:
        launcher = self.hypergraph.launcher
        return launcher.device if launcher is not None else "cpu"

    # -- saving -------------------------------------------------------------------------------
    def state(self, tags: tuple[str, ...], progress: dict) -> dict:
        hg = self.hypergraph
        launcher = hg.launcher
        entries = hg._entries
        return {
            "format": FORMAT,
            "seq": self.seq,
            "schedule": [e.description for e in entries] if entries is not None else [],
            "progress": progress,
            "nodes": {uid: node.state_dict() for uid, node in hg.select_nodes(*tags).items()},
            # what differs between ranks, in rank order (gathered on rank 0, the writer; the other
            # ranks build the rest too, as ignite's Checkpoint does: a sharded state_dict is a collective)
            "ranks": parallel.gather_objects({"rng": rng_state(), "grads": self._mid_cycle_grads(progress)}),
            "counters": hg.global_counters.state_dict(),
            "seed": hg.seed,
            "grad_scaler": hg.grad_scaler.state_dict() if hg.grad_scaler is not None else None,
            "grad_acc_steps": hg.grad_acc_steps,
            "world_size": launcher.world_size if launcher is not None else 1,
        }

    def save(self, save_to: "str | os.PathLike | None", tags: tuple[str, ...], progress: dict) -> Path | None:
        """Collect the state (on every rank) and write it (global rank 0); returns the file."""
        if save_to is None and self.rundir is None:
            raise CheckpointError(
                "save_checkpoint needs a run directory: call it during HyperGraph.run, or pass save_to=path"
            )
        state = self.state(tags, progress)
        self.seq += 1
        launcher = self.hypergraph.launcher
        if launcher is not None and launcher.rank != 0:
            return None
        if save_to is None:
            counters = self.hypergraph.global_counters
            path = self.rundir.ckpts / checkpoint_filename(state["seq"], counters.epochs.train, counters.steps.train)
        else:
            path = Path(save_to)
        write_checkpoint(state, path)
        logger.info("saved checkpoint %s", path)
        if save_to is None and self.n_saved is not None:
            prune_checkpoints(self.rundir.ckpts, self.n_saved)
        return path

    def _mid_cycle_grads(self, progress: dict) -> dict:
        """Gradients accumulated in an unfinished accumulation cycle, by ModuleNode uid."""
        task = self.hypergraph._running_task
        if progress["task"] is None or task is None or not task.train or task.graph is None:
            return {}
        position = progress["task"]["iteration"] % progress["task"]["epoch_length"]
        if position % self.hypergraph.grad_acc_steps == 0:
            return {}
        return {node.uid: {name: p.grad for name, p in node.named_trainable_parameters() if p.grad is not None}
                for node in task.graph.module_nodes}

    def save_best(self, node: "Node", value: float, higher_better: bool, max_keep: int) -> Path | None:
        """Keep checkpoints of the best ``max_keep`` values of a MetricNode (``MetricNode.save_best``)."""
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
        counters = self.hypergraph.global_counters
        name = best_filename(self.seq, counters.epochs.train, counters.steps.train, node.name, value)
        records.append((value, name))
        records.sort(key=lambda r: -r[0] if higher_better else r[0])
        del records[max_keep:]
        path = self.save(self.rundir.ckpts / name, (DEFAULT_TAG,), self.hypergraph._progress())
        if path is not None:  # rank 0: the files on disk follow the records (also after a resume)
            keep = {f for _, f in records}
            for old in best_files(self.rundir.ckpts, node.name):
                if old.name not in keep:
                    old.unlink(missing_ok=True)
        return path

    # -- loading ------------------------------------------------------------------------------
    def load_nodes(self, state: dict, tags: tuple[str, ...], strict: bool, source: str) -> dict:
        """Load node states of ``tags``; uids on one side only are reported, not errors."""
        hg = self.hypergraph
        selected = hg.select_nodes(*tags)
        saved = state["nodes"]
        report = {
            "loaded": [uid for uid in selected if uid in saved],
            "only_in_checkpoint": [uid for uid in saved if uid not in selected and uid not in hg],
            "only_in_graph": [uid for uid in selected if uid not in saved],
        }
        for uid in report["loaded"]:
            try:
                selected[uid].load_state_dict(saved[uid], strict=strict)
            except Exception as e:
                raise CheckpointError(f"loading node {uid!r} from {source} failed: {e}") from e
        for key, what in (("only_in_checkpoint", "absent from this graph"),
                          ("only_in_graph", "absent from the checkpoint")):
            if report[key]:
                warnings.warn(f"{source}: node(s) {', '.join(report[key])} {what}; left as they are", stacklevel=4)
        return report

    def resume(self, resume_from: Any, entries: list["ScheduleEntry"], strict: bool) -> tuple[int, dict | None]:
        """Restore everything from ``resume_from`` (a path or ``"auto"``); returns the schedule
        entry to continue at and the task position inside it."""
        hg = self.hypergraph
        if str(resume_from) == "auto":
            # global rank 0 picks the newest valid file; every rank then reads it (a shared file system)
            found = None
            if hg.launcher.rank == 0:
                found = latest_valid_checkpoint(self.rundir.ckpts, map_location=self.map_location())
            chosen = parallel.broadcast_object(str(found[0]) if found is not None else None)
            if chosen is None:
                logger.info("resume_from='auto': %s holds no checkpoint; starting from the beginning",
                            self.rundir.root)
                return 0, None
            path = Path(chosen)
            state = found[1] if found is not None else read_checkpoint(path, map_location=self.map_location())
        else:
            path, state = Path(resume_from), read_checkpoint(resume_from, map_location=self.map_location())
        world = hg.launcher.world_size
        if state["world_size"] != world:
            raise ResumeTaskFailed(
                f"checkpoint {str(path)!r} was written by {state['world_size']} process(es), this run has {world}; "
                "resume with the same number of processes"
            )
        mismatch = self._check_schedule(path, state["schedule"], [e.description for e in entries], strict)
        self.load_nodes(state, (DEFAULT_TAG,), True, str(path))
        mine = state["ranks"][hg.launcher.rank]
        for uid, grads in mine["grads"].items():
            for name, param in hg[uid].named_trainable_parameters():
                if name in grads:
                    param.grad = grads[name].to(param.device)
        hg.global_counters.load_state_dict(state["counters"])
        if state["grad_scaler"] is not None and hg.grad_scaler is not None:
            hg.grad_scaler.load_state_dict(state["grad_scaler"])
        if state["seed"] != hg.seed:
            warnings.warn(f"checkpoint {path.name} was taken with seed={state['seed']}; continuing with it",
                          stacklevel=4)
            hg.seed = state["seed"]
        set_rng_state(mine["rng"])
        self.seq = max(self.seq, state["seq"] + 1)
        logger.info("resuming from %s", path)
        if mismatch:
            return 0, None
        return state["progress"]["entry"], state["progress"]["task"]

    @staticmethod
    def _check_schedule(path: Path, saved: list[str], new: list[str], strict: bool) -> bool:
        """Whether the saved schedule is *not* a prefix of the new one (raise when ``strict``)."""
        mismatch = next((i for i, (a, b) in enumerate(zip(saved, new)) if a != b), None)
        if mismatch is None and len(saved) > len(new):
            mismatch = len(new)
        if mismatch is None:
            return False
        got = new[mismatch] if mismatch < len(new) else "the end of the schedule"
        msg = (f"checkpoint {str(path)!r}: its schedule is not a prefix of this run's: entry {mismatch} was "
               f"{saved[mismatch]!r} and is now {got!r}")
        if strict:
            raise ResumeTaskFailed(msg + "; restore the schedule, or pass strict_resume=False to restart it with the "
                                         "loaded states")
        warnings.warn(msg + "; restarting the schedule with the loaded states", stacklevel=5)
        return True
