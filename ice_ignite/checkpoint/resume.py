"""How a graph resumes: the checkpoint state its next schedule starts from (``run(resume_from=...)``
reads it with ``PendingResume.read``, ``HyperGraph.load_state_dict`` keeps one), and ``resume``,
which restores it through the ``Checkpointer`` and says where the schedule continues.

Following ``resume_from``: ``HyperGraph.run`` → ``resume_from_of`` (restarted workers continue)
→ ``PendingResume.read`` (a file, or ``"auto"``: the newest valid checkpoint, picked by global
rank 0) → ``resume`` → ``Checkpointer.restore`` (checks, resharding, states) → the schedule runner
starts at the returned ``Resume`` point.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ice_ignite.checkpoint.checkpointer import Checkpointer, Resume
from ice_ignite.checkpoint.files import latest_valid_checkpoint, read_checkpoint
from ice_ignite.distributed import parallel
from ice_ignite.errors import CheckpointError
from ice_ignite.graph.schedule import ScheduleEntry, keyed_tasks

__all__ = ["PendingResume", "resume", "resume_from_of"]

logger = logging.getLogger("ice_ignite")


class PendingResume:
    """The checkpoint state that the next schedule of a graph resumes from, and where it came
    from (a path, or a description): set by ``read`` or ``keep``, used once by ``resume``.

    Examples:
        >>> pending = PendingResume()
        >>> pending.keep({"format": "..."}, "the state given to load_state_dict")
        >>> pending.source, pending.take()[1], pending.source
        ('the state given to load_state_dict', 'the state given to load_state_dict', None)
    """

    def __init__(self) -> None:
        self.state: dict | None = None
        self.source: str | None = None

    def keep(self, state: dict, source: str) -> None:
        """Resume ``state`` (described as ``source`` in messages) at the next schedule."""
        self.state, self.source = state, source

    def take(self) -> tuple[dict, str] | None:
        """The pending state and its source, now no longer pending (None when there is none)."""
        if self.state is None:
            return None
        taken = (self.state, str(self.source))
        self.clear()
        return taken

    def clear(self) -> None:
        """Forget the pending state (at the end of a run, however it ended)."""
        self.state, self.source = None, None

    def read(self, resume_from: str | os.PathLike, checkpointer: Checkpointer) -> None:
        """Read the checkpoint ``resume_from`` of a run (a path, or ``"auto"``: the newest valid
        checkpoint of the run directory, picked by global rank 0 and agreed by every rank; none
        there starts from the beginning). Call it on every rank, inside the run.

        Raises:
            CheckpointError: the file is not a loadable checkpoint, or (on every rank) rank 0's
                search of the run directory failed.
        """
        where = checkpointer.map_location()
        if str(resume_from) != "auto":
            self.keep(read_checkpoint(resume_from, map_location=where), str(resume_from))
            return
        assert checkpointer.rundir is not None, "PendingResume.read runs inside a run, with its directory open"
        ckpts = checkpointer.rundir.ckpts
        found, error = None, None
        if checkpointer.context.rank == 0:
            try:
                found = latest_valid_checkpoint(ckpts, map_location=where)
            except CheckpointError as e:
                error = str(e)
        chosen, error = parallel.broadcast_object((str(found[0]) if found is not None else None, error))
        if error is not None:  # every rank raises it
            raise CheckpointError(error)
        if chosen is None:
            logger.info("resume_from='auto': %s holds no checkpoint; starting from the beginning", ckpts.parent)
            return
        self.keep(found[1] if found is not None else read_checkpoint(chosen, map_location=where), chosen)


def resume_from_of(resume_from: str | os.PathLike | None, worker: bool) -> str | os.PathLike | None:
    """What a run resumes from: ``resume_from``, or ``"auto"`` in a worker that torch's elastic
    agent restarted (``max_restarts``) with none given: restarted workers continue from the run's
    last checkpoint."""
    if worker and resume_from is None and int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return "auto"
    return resume_from


def resume(
    checkpointer: Checkpointer, pending: PendingResume, entries: list[ScheduleEntry], strict: bool
) -> Resume | None:
    """Prepare a run of the schedule ``entries``: restore the pending state, if there is one
    (``Checkpointer.restore``: every check, resharding, node and run states), and return where
    the schedule continues; without one, return None and let the task engines continue (a task
    that was terminated before runs again).

    Raises:
        ResumeTaskFailed: with ``strict``, the checkpoint does not fit the graph or schedule.
        CheckpointError: the state cannot be restored.
    """
    taken = pending.take()
    point = checkpointer.restore(taken[0], taken[1], entries, strict) if taken is not None else None
    checkpointer.entries = entries
    if point is None:  # a new schedule: it continues the engines
        for task in keyed_tasks(entries).values():
            state: Any = task.engine.state
            task.base_epoch = state.epoch if state.max_epochs is not None else 0
            if not task.engine.suspended:
                task.engine.should_terminate = False
    return point
