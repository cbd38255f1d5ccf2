"""Resuming a checkpoint with another number of processes (2 -> 1, 1 -> 2, ...).

Module weights and optimizer states are saved as full tensors (or as DCP shards that load into
any layout), so they load whatever the number of processes. What else a checkpoint holds per
process is adapted here, or refused where it cannot be carried over:

* the global batch of every DatasetNode (``batch_size`` x processes, or ``batch_size`` with
  ``batch_size_in_total``) must stay the same: then the epochs keep their length, the data
  position its meaning, and every optimizer step sees the samples it would have seen;
* gradients of an unfinished accumulation cycle are per process: refused;
* the position of a resumable stream is per process and worker: refused while a pass is open;
* epoch accumulators of the metrics of the running task's unfinished epoch are per process: a
  LossNode's (sums) are merged so the epoch's average is unchanged; any other metric's cannot be,
  and is refused (``strict``) or restarts for the rest of the epoch (with a warning); accumulators
  of finished epochs are not loaded (every epoch starts by resetting them);
* RNG streams: process ``r`` takes the saved stream of process ``r``; processes the checkpoint did
  not have keep the streams this run seeded for them.

What cannot be bit-exact across numbers of processes, whatever is saved: the gradient of a global
batch is summed in another order (an all-reduce of per-process means against one mean), random
draws are per process (dropout, augmentation: the streams and the per-batch worker seeds depend
on the rank), and BatchNorm statistics without ``sync_batchnorm`` come from per-process batches.
The run continues the same schedule with the same samples per step, close to but not bit for bit
the run it would have been.

Examples:
    >>> settings = {"batch_size": 8, "batch_size_in_total": False, "shuffle": True}
    >>> comparable_data_settings(settings, world_size=2)
    {'global batch': 16, 'shuffle': True}
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from ice_ignite.errors import ResumeTaskFailed
from ice_ignite.graph.schedule import handler_label

__all__ = ["comparable_data_settings", "merge_sums", "adapt_state", "METRIC_KEY"]

logger = logging.getLogger("ice_ignite")

#: the single key of an ignite ``Metric.state_dict()``: one entry per process, in rank order
METRIC_KEY = "__metric_state_per_rank"


def comparable_data_settings(settings: dict, world_size: int) -> dict:
    """A DatasetNode's resume settings with ``batch_size`` and ``batch_size_in_total`` replaced by
    the global batch they give with ``world_size`` processes (what must not change when the number
    of processes does)."""
    out = {k: v for k, v in settings.items() if k not in ("batch_size", "batch_size_in_total")}
    size = settings["batch_size"]
    return {"global batch": size if settings.get("batch_size_in_total") else size * world_size, **out}


def _is_metric_state(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and METRIC_KEY in value


def _zeros_like(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return type(value)(0)
    raise TypeError(f"cannot make a zero of {type(value).__name__}")


def merge_sums(per_rank: list[dict], world_size: int) -> list[dict]:
    """Per-process accumulators that are sums (a LossNode's ``_sum`` and ``_num_examples``) for
    ``world_size`` processes: process ``r`` keeps the saved ``r``; the saved processes beyond the
    new number are added into process 0; new processes start at zero. The totals over processes,
    which the metric computes from, are unchanged."""
    out = [dict(s) for s in per_rank[:world_size]]
    for extra in per_rank[world_size:]:
        out[0] = {k: v + extra[k] for k, v in out[0].items()}
    while len(out) < world_size:
        out.append({k: _zeros_like(v) for k, v in per_rank[0].items()})
    return out


class _Walk:
    """Finds the ignite metric states of a checkpoint's node, handler and object states and
    resizes them (see the module docstring); collects what cannot be carried over."""

    def __init__(self, world_size: int, strict: bool):
        self.world_size = world_size
        self.strict = strict
        self.problems: list[str] = []
        self.restarted: list[str] = []

    def resize(self, value: Any, where: str, open_epoch: bool, sums: bool) -> Any:
        """``value`` with its metric states resized; None where a metric state is left out (not
        loaded: the metric keeps the state it has)."""
        if _is_metric_state(value):
            if not open_epoch:
                return None  # a finished epoch's accumulators: reset when the next epoch starts
            if sums:
                return {METRIC_KEY: merge_sums(value[METRIC_KEY], self.world_size)}
            if self.strict:
                self.problems.append(f"the accumulators of {where} in the unfinished epoch are per process")
            else:
                self.restarted.append(where)
            return None
        if isinstance(value, dict):
            out = {}
            for key, sub in value.items():
                new = self.resize(sub, f"{where}[{key!r}]", open_epoch, sums)
                if new is not None or not _is_metric_state(sub):
                    out[key] = new
            return out
        return value


def adapt_state(
    state: dict,
    world_size: int,
    *,
    running_task: str | None,
    running_nodes: Iterable[str],
    loss_nodes: Iterable[str],
    strict: bool,
    source: str,
    task_names: dict[str, str] | None = None,
) -> dict:
    """A copy of checkpoint ``state`` (written by ``state["world_size"]`` processes) for a run of
    ``world_size`` processes.

    ``running_task`` is the key (``"task<i>"``) of the task the checkpoint was taken inside, if it
    was taken inside an unfinished epoch, and ``running_nodes`` the uids that task runs;
    ``loss_nodes`` are the LossNodes' uids (their accumulators are sums and merge);
    ``task_names`` names the tasks by key in messages.

    Raises:
        ResumeTaskFailed: what the checkpoint holds per process cannot be carried over (every
            problem listed, with the fixes).
    """
    before = state["world_size"]
    running, losses = set(running_nodes), set(loss_nodes)
    walk = _Walk(world_size, strict)
    held = []  # what no option carries over
    if any(rank["grads"] for rank in state["ranks"]):
        held.append("it was taken in the middle of a gradient accumulation cycle, whose gradients are per process")
    for uid, node_state in state["nodes"].items():
        if isinstance(node_state, dict) and node_state.get("pass_open") and node_state.get("streams"):
            held.append(
                f"the stream of DatasetNode {uid!r} is in the middle of a pass, and its position is per "
                "process and worker"
            )
    out = dict(state)
    out["nodes"] = {
        uid: walk.resize(s, f"node {uid!r}", running_task is not None and uid in running, uid in losses)
        for uid, s in state["nodes"].items()
    }
    out["handlers"] = {}
    for key, entry in state.get("handlers", {}).items():
        where = "handler " + handler_label(key, entry["type"], task_names or {})
        out["handlers"][key] = {
            **entry,
            "state": walk.resize(entry["state"], where, key.split("/")[0] == running_task, False),
        }
    out["objects"] = {
        name: walk.resize(s, f"object {name!r}", running_task is not None, False)
        for name, s in state.get("objects", {}).items()
    }
    if held or walk.problems:
        fixes = [f"resume with {before} process(es)", "from a checkpoint taken at the end of an epoch or between tasks"]
        if walk.problems and not held:
            fixes.append("pass strict_resume=False to restart those accumulators for the rest of the epoch")
        raise ResumeTaskFailed(
            f"checkpoint {source!r} was written by {before} process(es) and this run has {world_size}, but "
            f"{'; '.join(held + walk.problems)}: {', or '.join(fixes)}"
        )
    if walk.restarted:
        warnings.warn(
            f"{source}: resumed with {world_size} process(es) instead of {before}: the accumulators of "
            f"{', '.join(walk.restarted)} restart for the rest of the unfinished epoch (strict_resume=False); "
            "their epoch values cover the resumed iterations only",
            stacklevel=6,
        )
    ranks = [copy.copy(r) for r in state["ranks"][:world_size]]
    ranks += [{"rng": None, "grads": {}} for _ in range(world_size - len(ranks))]
    out["ranks"] = ranks
    logger.warning(
        "resuming %s, written by %d process(es), with %d: the same schedule, counters, data order and "
        "optimizer states; not bit-exact (gradients are reduced in another order, random streams are per "
        "process)",
        source,
        before,
        world_size,
    )
    return out
