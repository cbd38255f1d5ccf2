"""Sharded checkpoints of ModuleNodes through ``torch.distributed.checkpoint`` (DCP).

Every process writes its own shards of the modules and optimizer states of the given ModuleNodes
(``get_state_dict``), into one directory that appears only once complete (written under a
temporary name, renamed by rank 0 after every rank finished). Loading (``set_state_dict``) reads
what each process needs for the layout it has now, whatever the number of processes that wrote it:
2 -> 1 and 1 -> 2 reshard. ``export`` writes a consolidated single-file state dict for inference.

``HyperGraph.save_checkpoint`` writes such directories by itself when the graph holds sharded
ModuleNodes (``ckpt-000123-E3S117.dcp``, with the whole resumable state); ``export`` turns one into
a single checkpoint file. These functions carry module, optimizer and scheduler states only.

Examples:
    >>> import tempfile, torch, ice_ignite as ice
    >>> from ice_ignite.checkpoint import sharded
    >>> node = ice.ModuleNode(torch.nn.Linear(2, 1), forward=lambda n, x: n.module(x),
    ...                       optimizers=ice.Optimizer(torch.optim.Adam, lr=0.1))
    >>> d = tempfile.mkdtemp()
    >>> path = sharded.save(f"{d}/ckpt", {"*/net": node}, meta={"step": 3})
    >>> sharded.load(path, {"*/net": node})
    {'step': 3}
    >>> sorted(torch.load(sharded.export(path, f"{d}/full.pt"), weights_only=True)["*/net"])
    ['module', 'optimizers']
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ice_ignite.checkpoint.files import (
    STATE,
    dcp_load,
    describe,
    load_plain_file,
    nest,
    publish_directory,
    quiet_single_process_dcp,
    read_checkpoint,
    read_dcp_metadata,
    write_checkpoint,
)
from ice_ignite.distributed import parallel
from ice_ignite.errors import CheckpointError
from ice_ignite.nodes.module import ModuleNode, key_name

__all__ = ["save", "load", "export", "META"]

#: the file of a sharded checkpoint directory that holds what is not sharded (``weights_only``-safe)
META = "meta.pt"


def _states(nodes: Mapping[str, ModuleNode]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Each node's module and optimizer states as DCP wants them (keyed by parameter name,
    DTensors where the module is sharded), and the keys of the optimizers that held no state.

    ``get_state_dict`` gives an optimizer without state one (a step with zero gradients and a zero
    learning rate); that state is dropped again here, so saving never changes a run."""
    out, empty = {}, {}
    for uid, node in nodes.items():
        optimizers = _named(node.optimizers)
        empty[uid] = [key for key, opt in optimizers.items() if not opt.state]
        model, optim = get_state_dict(node.module, list(optimizers.values()))
        for key in empty[uid]:
            optimizers[key].state.clear()
        out[uid] = {"module": model, "optimizers": optim}
    return out, empty


def _clear(nodes: Mapping[str, ModuleNode], empty: Mapping[str, list[str]]) -> None:
    for uid, node in nodes.items():
        optimizers = _named(node.optimizers)
        for key in empty.get(uid, []):
            optimizers[key].state.clear()


def save(directory: str | os.PathLike, nodes: Mapping[str, ModuleNode], meta: dict | None = None) -> Path:
    """Write the sharded states of ``nodes`` (by uid) and ``meta`` (plain data: ints, floats,
    strings, tensors, lists and dicts of them, e.g. the nodes' scheduler states) to ``directory``,
    published atomically. Call it on every process.

    Raises:
        CheckpointError: ``directory`` exists, or a process's write failed.
    """

    def write(partial: Path) -> None:
        states, empty = _states(nodes)
        with quiet_single_process_dcp():
            dcp.save(states, checkpoint_id=partial, no_dist=parallel.world_size() == 1)
        if parallel.rank() == 0:
            schedulers = {
                uid: {key: s.state_dict() for key, s in _named(node.lr_schedulers).items()}
                for uid, node in nodes.items()
            }
            torch.save({"meta": meta or {}, "lr_schedulers": schedulers, "empty_optimizers": empty}, partial / META)

    return publish_directory(directory, write, what="sharded checkpoint")


def _named(objects: Mapping[Any, Any]) -> dict[str, Any]:
    """A ModuleNode's optimizers or schedulers by the names checkpoints give their pattern keys."""
    return {key_name(k): obj for k, obj in objects.items()}


def load(directory: str | os.PathLike, nodes: Mapping[str, ModuleNode]) -> dict:
    """Load the sharded states ``save`` wrote into ``nodes`` (by uid), resharded for the present
    layout (any number of processes, sharded or not); returns the ``meta`` saved with them. Call it
    on every process.

    Raises:
        CheckpointError: ``directory`` is no published sharded checkpoint, or lacks a node.
    """
    path = Path(directory)
    if not (path / META).is_file():
        raise CheckpointError(
            f"{str(path)!r} is not a sharded checkpoint (no {META}: not written by "
            "ice_ignite.sharded.save, or its save did not finish)"
        )
    saved = load_plain_file(path / META, path)
    metadata = read_dcp_metadata(path)  # checked before DCP sees the directory
    missing = [uid for uid in nodes if uid not in saved["lr_schedulers"]]
    if missing:
        raise CheckpointError(
            f"sharded checkpoint {str(path)!r} holds no state for {', '.join(missing)} "
            f"(it holds {', '.join(saved['lr_schedulers']) or 'no node'})"
        )
    states, _ = _states(nodes)  # the present layout: DCP reads into it, resharding what it must
    try:
        dcp_load(states, path, metadata, no_dist=parallel.world_size() == 1)
    except (Exception, dcp.CheckpointException) as e:
        raise CheckpointError(
            f"sharded checkpoint {str(path)!r} does not load ({describe(e)}); save it again, or load another one"
        ) from e
    for uid, node in nodes.items():
        set_state_dict(
            node.module,
            list(node.optimizers.values()),
            model_state_dict=states[uid]["module"],
            optim_state_dict=states[uid]["optimizers"],
        )
        for key, sched in _named(node.lr_schedulers).items():
            sched.load_state_dict(saved["lr_schedulers"][uid][key])
    _clear(nodes, saved["empty_optimizers"])  # saved before their first step: no state
    return saved["meta"]


def export(directory: str | os.PathLike, file: str | os.PathLike) -> Path:
    """Consolidate a sharded checkpoint into one file of full tensors (one process; no process
    group needed). A run's checkpoint directory (``ckpts/ckpt-...dcp``, written by
    ``save_checkpoint``) becomes an ice_ignite checkpoint file, which ``run(resume_from=file)``,
    ``load_checkpoint`` and ``LoadCheckpointTask`` take as they take the directory; a directory of
    ``save`` becomes ``{uid: {"module": state_dict, "optimizers": ...}}``. Never overwrites.

    Examples:
        ``torch.load(export("ckpts/sharded", "model.pt"))["*/net"]["module"]`` loads into the
        plain module with ``load_state_dict``; ``export("ckpts/ckpt-000009-E3S90.dcp", "ckpt.pt")``
        gives a checkpoint file.

    Raises:
        CheckpointError: ``file`` exists, or ``directory`` is no sharded checkpoint (or a broken one).
    """
    source, target = Path(directory), Path(file)
    if (source / STATE).is_file():
        write_checkpoint(read_checkpoint(source), target)
        return target
    if not (source / META).is_file():
        raise CheckpointError(
            f"{str(source)!r} is not a sharded checkpoint (no {STATE} or {META}: not written by "
            "save_checkpoint or ice_ignite.sharded.save, or its save did not finish)"
        )
    if target.exists():
        raise CheckpointError(f"checkpoint {str(target)!r} exists; save to another path or delete it first")
    metadata = read_dcp_metadata(source)  # checked before DCP sees the directory
    flat = {
        fqn: torch.empty(entry.size, dtype=entry.properties.dtype)
        if isinstance(entry, dcp_metadata.TensorStorageMetadata)
        else None
        for fqn, entry in metadata.state_dict_metadata.items()
    }
    try:
        dcp_load(flat, source, metadata)  # every process's pieces, into full tensors; plain values weights_only
    except (Exception, dcp.CheckpointException) as e:
        raise CheckpointError(
            f"sharded checkpoint {str(source)!r} does not load ({describe(e)}); nothing was exported"
        ) from e
    write_checkpoint(nest(flat, metadata), target)
    return target
