"""``DatasetNode``: a DataLoader whose batch order is a pure function of (seed, uid, rank, pass),
so that a run can resume in the middle of an epoch with the same batches (B3, B7)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ice_ignite.distributed import parallel
from ice_ignite.distributed.processes import WorkerInit, children_spawned
from ice_ignite.distributed.streams import is_resumable_stream
from ice_ignite.errors import GraphError
from ice_ignite.nodes.node import Node, OutputCache, check_callable
from ice_ignite.nodes.sampling import SeededBatches, check_sampler, sampler_order
from ice_ignite.training.seeding import derive_seed

__all__ = ["DatasetNode", "move_to"]

_MANAGED = {
    "batch_sampler": "pass batch_size=... (and sampler=... for another order): the DatasetNode batches samples "
    "itself, so that resume is exact",
    "generator": "the DatasetNode seeds its own generator from run(seed=...)",
}
_PASSED = {
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
}


def move_to(data: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move the tensors in a nested list / tuple / dict to ``device``."""
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=non_blocking)
    if isinstance(data, (list, tuple)):
        moved = [move_to(d, device, non_blocking) for d in data]
        if isinstance(data, tuple):
            return type(data)(*moved) if hasattr(data, "_fields") else tuple(moved)
        return moved
    if isinstance(data, dict):
        return {k: move_to(v, device, non_blocking) for k, v in data.items()}
    return data


class _PassBatchSampler:
    """Yields the batches of the node's current pass, from its current position on: lists of
    indices, or ``(seed, indices)`` for ``SeededBatches`` when DataLoader workers load them."""

    def __init__(self, node: DatasetNode):
        self.node = node

    def __len__(self) -> int:
        n = self.node.batches_per_pass()
        assert n is not None  # map-style data (this sampler's) has a length
        return n

    def __iter__(self) -> Iterator[list | tuple[int, list]]:
        node = self.node
        return self._batches(node._pass_order(node.pass_index), node.pass_index, node.position)

    def _batches(self, order: list[int], pass_index: int, start: int) -> Iterator[list | tuple[int, list]]:
        node = self.node
        stop = node.batches_per_pass()
        assert stop is not None  # map-style data (this sampler's) has a length
        seeded = node.num_workers > 0
        single, b = node._world_size == 1, node.batch_size
        for i in range(start, stop):
            chunk = order[i * b : (i + 1) * b] if single else node._rank_slice(order, i)
            if seeded:  # SeededBatches reseeds the worker's streams once for the batch
                yield derive_seed(node._seed, node.uid, node._rank, pass_index, i), chunk
            else:
                yield chunk


class DatasetNode(Node):
    """A dataset and the DataLoader that feeds it to the graph, one batch per iteration.

    The output is the batch moved to the node's device (on the CPU: the collated batch itself, no
    copy). In epoch-mode tasks every engine epoch starts a fresh pass over the data; in step-mode
    tasks the data cycles and the position carries over to the next step-mode task. The order of a
    pass (shuffled, or drawn from ``sampler``) is a pure function of ``(run seed, node uid, pass
    number)``, each process takes its slice of it, and the DataLoader gets its own generator, so
    creating an iterator never draws from the global RNG. With ``num_workers > 0`` the torch, numpy
    and python streams of the worker that loads a batch are seeded from the batch's place in the
    run, once per batch, so random augmentation is the same whichever worker loads it. An
    ``IterableDataset`` with ``state_dict()`` / ``load_state_dict()`` resumes from its saved
    position (torchdata's ``StatefulDataLoader``, each worker's position kept); other streams
    replay the batches they had yielded.

    Args:
        dataset: a map-style ``Dataset`` (with ``__len__``), or an ``IterableDataset`` (which shards
            itself across processes and workers, e.g. with ``ice_ignite.streams.stream_shard()``;
            without a length only in step-mode tasks).
        batch_size: samples per batch on each process, or in total with ``batch_size_in_total``.
        shuffle: shuffle every pass.
        num_workers: DataLoader worker processes.
        pin_memory: on CUDA, collate batches in page-locked memory, so that their copies to the GPU
            are asynchronous (``non_blocking=True``); ignored on the CPU.
        drop_last: drop the last, incomplete batch of each pass.
        collate_fn: merges samples into a batch (DataLoader's default when None).
        batch_size_in_total: ``batch_size`` is the global batch, split across processes.
        sampler: draws the order of each pass instead of ``shuffle`` (``WeightedRandomSampler``,
            ``SubsetRandomSampler``, your own ``Sampler`` of indices with a ``__len__``). It draws
            from a generator the node seeds per pass (its ``generator`` attribute, on a copy) and
            from the global streams seeded alike for the draw, so a resumed pass has the same order.
        prefetch_factor: batches each worker loads ahead (DataLoader's default, 2, when None);
            needs ``num_workers > 0``.
        dataloader_kwargs: other DataLoader options (``timeout``, ``worker_init_fn``,
            ``persistent_workers``, ``multiprocessing_context``, ``pin_memory_device``; ``in_order``
            only True, its default: batches out of order would make a resume inexact).

    Raises:
        TypeError: a sampler that is not one of sample indices with a length, or that cannot be
            combined with the other arguments.
        ValueError: a sampler whose order does not follow from the streams the node seeds (it
            cannot be resumed); ``prefetch_factor`` or ``persistent_workers`` without workers.

    Examples:
        >>> import torch, ice_ignite as ice
        >>> data = torch.utils.data.TensorDataset(torch.randn(10, 3), torch.arange(10))
        >>> node = ice.DatasetNode(data, batch_size=4, shuffle=True)
        >>> node.batches_per_pass()
        3
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        shuffle: bool = False,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
        collate_fn: Callable[[list], Any] | None = None,
        batch_size_in_total: bool = False,
        *,
        sampler: Sampler | None = None,
        prefetch_factor: int | None = None,
        **dataloader_kwargs: Any,
    ):
        self.iterable = isinstance(dataset, IterableDataset)
        if not self.iterable and not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(
                f"DatasetNode needs a torch Dataset with __getitem__ and __len__, or an IterableDataset; got "
                f"{type(dataset).__name__}"
            )
        value: object
        for name, value in (("batch_size", batch_size), ("num_workers", num_workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
                raise ValueError(
                    f"DatasetNode {name} must be an int >= {1 if name == 'batch_size' else 0}, got {value!r}"
                )
        for name, value in (
            ("shuffle", shuffle),
            ("pin_memory", pin_memory),
            ("drop_last", drop_last),
            ("batch_size_in_total", batch_size_in_total),
        ):
            if not isinstance(value, bool):
                raise TypeError(f"DatasetNode {name} must be True or False, got {value!r}")
        if self.iterable and shuffle:
            raise ValueError("DatasetNode cannot shuffle an IterableDataset: shuffle inside the dataset")
        if sampler is not None:
            if self.iterable or shuffle:
                raise TypeError(
                    f"DatasetNode takes sampler= ({type(sampler).__name__}) for a map-style dataset "
                    "without shuffle=True: "
                    + (
                        "an IterableDataset orders itself; drop sampler="
                        if self.iterable
                        else "the sampler orders the samples; drop shuffle=True"
                    )
                )
            check_sampler(sampler)
        if prefetch_factor is not None and (
            isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int) or prefetch_factor < 1
        ):
            raise ValueError(f"DatasetNode prefetch_factor must be an int >= 1 or None, got {prefetch_factor!r}")
        for name, value in (
            ("prefetch_factor", prefetch_factor),
            ("persistent_workers", dataloader_kwargs.get("persistent_workers")),
        ):
            if value not in (None, False) and num_workers == 0:
                raise ValueError(
                    f"DatasetNode {name}={value!r} needs worker processes: pass num_workers=... >= 1, or drop {name}"
                )
        if dataloader_kwargs.get("in_order", True) is not True:
            raise ValueError(
                f"DatasetNode in_order={dataloader_kwargs['in_order']!r}: out of order, DataLoader workers hand over "
                "batches as they finish, so a checkpoint could not tell which batches of the pass were consumed and a "
                "resume would repeat some and skip others; leave in_order=True (the default)"
            )
        if collate_fn is not None:
            check_callable(collate_fn, 1, "collate_fn of DatasetNode", "collate_fn=lambda samples: ...")
        for key in dataloader_kwargs:
            if key in _MANAGED:
                raise TypeError(f"DatasetNode does not take {key!r}: {_MANAGED[key]}")
            if key not in _PASSED:
                raise TypeError(
                    f"DatasetNode got an unknown argument {key!r}; DataLoader options it passes on: "
                    f"{', '.join(sorted(_PASSED))}"
                )
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.drop_last = drop_last
        self.collate_fn = collate_fn
        self.batch_size_in_total = batch_size_in_total
        self.sampler = sampler
        self.prefetch_factor = prefetch_factor
        self.dataloader_kwargs = dataloader_kwargs
        #: an IterableDataset that resumes from a saved position (``state_dict`` / ``load_state_dict``)
        self.resumable_stream = self.iterable and is_resumable_stream(dataset)
        #: passes started so far minus one (the index of the current pass)
        self.pass_index = -1
        #: batches taken from the current pass
        self.position = 0
        #: whether the current pass continues at the next forward
        self.pass_open = False
        self._loader: Any = None  # a DataLoader, or torchdata's StatefulDataLoader (untyped)
        self._iterator: Iterator | None = None
        self._device = torch.device("cpu")
        self._move = False
        self._loader_key: tuple | None = None
        self._sharded = False
        self._stream_state: dict | None = None  # where this rank's stream continues the open pass
        #: ``loss_scale`` of the last batch (multi-process runs)
        self.last_loss_scale = 1.0
        super().__init__()

    @property
    def _rank(self) -> int:
        return self.context.rank if self.context is not None else 0

    @property
    def _world_size(self) -> int:
        return self.context.world_size if self.context is not None else 1

    @property
    def _seed(self) -> int:
        return self.context.seed if self.context is not None else 0

    # -- sizes and sharding ----------------------------------------------------------------
    # A pass is a sequence of global batches (batch_size * world size samples, or batch_size with
    # batch_size_in_total) taken from one order of the data; each rank takes its slice of every
    # global batch. All ranks thus run the same number of iterations, the global batches equal a
    # single process's batches of the same size, and no sample is repeated to pad a rank (a
    # global batch smaller than the world size is the only exception).
    def _global_batch(self) -> int:
        return self.batch_size if self.batch_size_in_total else self.batch_size * self._world_size

    def _split(self, count: int) -> list[int]:
        ws = self._world_size
        return [count // ws + (1 if r < count % ws else 0) for r in range(ws)]

    @property
    def local_batch_size(self) -> int:
        """Samples per full batch in this process."""
        size = self._split(self._global_batch())[self._rank]
        if size == 0:
            raise ValueError(
                f"DatasetNode {self.uid!r}: batch_size={self.batch_size} in total is smaller than "
                f"the {self._world_size} processes; raise it"
            )
        return size

    def batches_per_pass(self) -> int | None:
        """Batches in one pass over the data (None for an unsized IterableDataset)."""
        if self.iterable:
            try:
                n = len(self.dataset)  # type: ignore[arg-type]  # torch's Dataset and Sampler declare no __len__; these have one
            except TypeError:
                return None
            b = self.batch_size
        else:
            n, b = self._samples_per_pass(), self._global_batch()
        return n // b if self.drop_last else math.ceil(n / b)

    def _samples_per_pass(self) -> int:
        return len(self.sampler) if self.sampler is not None else len(self.dataset)  # type: ignore[arg-type]  # torch's Dataset and Sampler declare no __len__; these have one

    def _pass_order(self, pass_index: int) -> list[int]:
        if self.sampler is not None:
            return sampler_order(self.sampler, derive_seed(self._seed, self.uid, "sampler", pass_index))
        n = len(self.dataset)  # type: ignore[arg-type]  # torch's Dataset and Sampler declare no __len__; these have one
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator()
        g.manual_seed(derive_seed(self._seed, self.uid, "shuffle", pass_index))
        return torch.randperm(n, generator=g).tolist()

    def _global_slice(self, order: list[int], k: int) -> list[int]:
        g = self._global_batch()
        chunk = order[k * g : (k + 1) * g]
        ws = self._world_size
        while len(chunk) < ws:  # every rank needs a sample: repeat from the start of the order
            chunk = chunk + order[: ws - len(chunk)]
        return chunk

    def _rank_slice(self, order: list[int], k: int) -> list[int]:
        chunk = self._global_slice(order, k)
        sizes = self._split(len(chunk))
        offset = sum(sizes[: self._rank])
        return chunk[offset : offset + sizes[self._rank]]

    def loss_scale(self, position: int) -> float:
        """``world_size * local / global`` samples of batch ``position``: the factor that makes the
        mean over ranks of the per-rank mean losses (what DDP averages) the mean over the
        global batch, when ranks hold unequal slices."""
        ws = self._world_size
        if ws == 1:
            return 1.0
        g = self._global_batch()
        size = max(min(g, self._samples_per_pass() - position * g), ws)
        return ws * self._split(size)[self._rank] / size

    # -- graph behaviour ----------------------------------------------------------------------
    def _on_prepare(self) -> None:
        device = self.device
        key = (self._rank, self._world_size, self._seed, device)
        if self._loader is None or key != self._loader_key:
            self._loader_key = key
            self._loader = self._build_loader(device)
            self._iterator = None
        self._device = device
        self._move = device.type != "cpu"
        self._sharded = self._world_size > 1 and not self.iterable  # iterable data: equal local batches

    def _build_loader(self, device: torch.device) -> Any:  # a DataLoader, or a StatefulDataLoader (untyped)
        generator = torch.Generator()
        generator.manual_seed(derive_seed(self._seed, self.uid, self._rank, "loader"))
        kwargs = dict(
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
            generator=generator,
            pin_memory=self.pin_memory and device.type == "cuda",
            **self.dataloader_kwargs,
        )
        if self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        if self.num_workers > 0:  # workers leave SIGTERM / SIGINT to this process, and die with it
            kwargs["worker_init_fn"] = WorkerInit(kwargs.get("worker_init_fn"))
        if self.resumable_stream:
            from torchdata.stateful_dataloader import StatefulDataLoader

            with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, which torch 2.13 deprecates
                warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
                return StatefulDataLoader(
                    self.dataset, batch_size=self.local_batch_size, drop_last=self.drop_last, **kwargs
                )
        if self.iterable:
            return DataLoader(self.dataset, batch_size=self.local_batch_size, drop_last=self.drop_last, **kwargs)
        dataset = SeededBatches(self.dataset) if self.num_workers > 0 else self.dataset
        # torch types batch_sampler as yielding index lists; SeededBatches takes (seed, indices) too
        return DataLoader(dataset, batch_sampler=_PassBatchSampler(self), **kwargs)  # type: ignore[arg-type]

    def _open(self) -> Iterator:
        if not self.pass_open:
            self.pass_index += 1
            self.position = 0
            self.pass_open = True
            self._stream_state = None
        if self._loader is None:
            raise RuntimeError(f"DatasetNode {self.uid!r} is used outside a task run")
        resume = self._stream_state
        if self.resumable_stream and resume is not None:
            self._loader.load_state_dict(resume["loader"])
            self._stream_state = None
        with children_spawned():  # a signal to the group cannot end a worker before it ignores it
            iterator = iter(self._loader)
        if self.iterable and resume is None:  # a stream without a saved state: fetch and drop what was consumed
            for _ in range(self.position):
                next(iterator)
        self._iterator = iterator
        return iterator

    def forward_impl(self, x: OutputCache) -> Any:
        """The batch the task's engine fetched for this iteration (``engine.state.batch``), on the
        node's device."""
        egraph = self.egraph
        assert egraph is not None and egraph.batch is not None  # forwards run inside a task's iteration
        batch = egraph.batch[self._name]
        if self._move:
            batch = move_to(batch, self._device, non_blocking=self.pin_memory)
        return batch

    def next_batch(self) -> Any:
        """Dequeue the next batch (the task's engine calls it, between GET_BATCH_STARTED and
        GET_BATCH_COMPLETED); a new pass starts where the last one ended."""
        iterator = self._iterator
        if iterator is None:
            iterator = self._open()
        try:
            batch = next(iterator)
        except StopIteration:
            batch = self._next_pass()
        except Exception as e:
            if isinstance(e, RuntimeError) and "DataLoader worker" in str(e) and "exited unexpectedly" in str(e):
                raise GraphError(
                    f"DatasetNode {self.uid!r}: a DataLoader worker process died while loading batch {self.position} "
                    f"of pass {self.pass_index} ({e}); it was killed (SIGKILL, the out-of-memory killer: see "
                    "dmesg) or crashed in native code. Resume with run(..., resume_from='auto')"
                ) from e
            raise GraphError(
                f"DatasetNode {self.uid!r} could not load batch {self.position} of pass {self.pass_index} "
                f"({type(e).__name__}: {e}); check the dataset's __getitem__, or pass a collate_fn for samples "
                "that are not tensors, numbers, lists or dicts"
            ) from e
        self.position += 1
        if self._sharded:
            self.last_loss_scale = self.loss_scale(self.position - 1)
        return batch

    def _next_pass(self) -> Any:
        if not self.step_mode:
            raise GraphError(
                f"DatasetNode {self.uid!r} ran out of batches after {self.position} in an epoch of "
                f"{self.epoch_size}: its dataset's __len__ is larger than what it yields; fix __len__ or run "
                "the task in step mode (Task(steps=...))"
            )
        if self.position == 0:
            raise GraphError(f"DatasetNode {self.uid!r} yielded no batch: its dataset is empty")
        self.pass_open = False
        try:
            return next(self._open())
        except StopIteration:
            raise GraphError(f"DatasetNode {self.uid!r} yielded no batch: its dataset is empty") from None

    def _on_epoch_start(self) -> None:
        if not self.step_mode:  # every epoch of an epoch-mode task is a fresh pass
            self.pass_open = False
            self._release()

    def _on_epoch_end(self) -> None:
        if not self.step_mode:
            self.pass_open = False
            self._release()

    def _on_clean_up(self) -> None:
        if self.resumable_stream and self._iterator is not None and self.pass_open:
            self._stream_state = self._stream_position()
        self._release()  # the position is kept

    def _release(self) -> None:
        """Drop the iterator, which stops its DataLoader workers (unless they persist)."""
        self._iterator = None
        if self.resumable_stream and self._loader is not None and not self._loader.persistent_workers:
            self._loader.load_state_dict({})  # a StatefulDataLoader holds its iterator: {} drops it

    def _stream_position(self) -> dict | None:
        """Where this rank's resumable stream continues the open pass (None: nothing to continue)."""
        if not self.pass_open:
            return None
        if self._iterator is not None:
            return {"num_workers": self.num_workers, "loader": self._loader.state_dict()}
        return self._stream_state

    # -- checkpoint ---------------------------------------------------------------------------
    def resume_settings(self) -> dict:
        """The settings that decide which samples each batch holds, recorded in checkpoints: a
        resume with other values would not continue the same run (``strict_resume``)."""
        try:
            size = len(self.dataset)  # type: ignore[arg-type]  # torch's Dataset and Sampler declare no __len__; these have one
        except TypeError:  # an unsized IterableDataset
            size = None
        sampler = None if self.sampler is None else f"{type(self.sampler).__name__} of {len(self.sampler)}"  # type: ignore[arg-type]  # torch's Dataset and Sampler declare no __len__; these have one
        return {
            "batch_size": self.batch_size,
            "batch_size_in_total": self.batch_size_in_total,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "len(dataset)": size,
            "sampler": sampler,
        }

    def state_dict(self) -> dict:
        """``{"pass_index", "position", "pass_open"}``: where the next batch comes from; for a
        resumable stream also ``"streams"``, every rank's stream position in rank order (gathered
        on rank 0, the writer: a collective in multi-process runs)."""
        state: dict[str, Any] = {"pass_index": self.pass_index, "position": self.position, "pass_open": self.pass_open}
        if self.resumable_stream:
            state["streams"] = parallel.gather_objects(self._stream_position())
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Continue from the saved position at the next forward.

        Raises:
            ValueError: a resumable stream's position was saved with another ``num_workers``
                (each worker keeps its own position).
        """
        streams = state.get("streams") if self.resumable_stream else None
        mine = streams[self._rank] if streams and state["pass_open"] else None
        if mine is not None and mine["num_workers"] != self.num_workers:
            raise ValueError(
                f"DatasetNode {self.uid!r}: the stream's position was saved with num_workers={mine['num_workers']} "
                f"and this node has num_workers={self.num_workers}; each worker keeps its own position of the "
                f"stream: resume with num_workers={mine['num_workers']}"
            )
        self.pass_index = int(state["pass_index"])
        self.position = int(state["position"])
        self.pass_open = bool(state["pass_open"])
        self._release()
        self._stream_state = mine
