"""How a DatasetNode draws a pass's order from a user's ``Sampler`` and seeds random augmentation
once per batch, so that both are pure functions of (seed, node, rank, pass) and resume is exact."""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
from torch.utils.data import BatchSampler, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from ice_ignite.training.seeding import reseed_batch, seeded_streams

__all__ = ["check_sampler", "sampler_order", "SeededBatches"]

_REFUSED = {
    BatchSampler: "it yields batches: pass its sampler and batch_size=... instead",
    DistributedSampler: "the DatasetNode gives each process its slice of the order itself: pass the sampler it "
    "would wrap (or shuffle=True) instead",
}


def sampler_order(sampler: Sampler, seed: int) -> list:
    """The indices ``sampler`` yields when it draws from streams seeded by ``seed``: its
    ``generator`` attribute (torch's random samplers have one) replaced by a generator seeded
    from ``seed``, on a copy, and the global torch / numpy / python streams seeded from ``seed``
    for the draw and restored after it. The sampler itself is left untouched.

    Examples:
        >>> s = torch.utils.data.WeightedRandomSampler([0.1, 0.5, 0.4], num_samples=5)
        >>> sampler_order(s, 7) == sampler_order(s, 7)
        True
    """
    drawn: Any = copy.copy(sampler)  # a sampler whose ``generator`` is replaced where it has one
    if isinstance(getattr(drawn, "generator", False), (torch.Generator, type(None))):
        drawn.generator = torch.Generator().manual_seed(seed)
    with seeded_streams(seed):
        return list(drawn)


def check_sampler(sampler: Any) -> None:
    """Raise unless ``sampler`` yields sample indices, has a length, and draws its order only from
    streams a DatasetNode seeds (two draws seeded alike agree), so that a resumed pass has the
    same order.

    Raises:
        TypeError: not a sampler of indices with a length.
        ValueError: its order does not follow from the seeded streams (it cannot be resumed).
    """
    name = type(sampler).__name__
    for kind, why in _REFUSED.items():
        if isinstance(sampler, kind):
            raise TypeError(f"DatasetNode(sampler=...) does not take a {name}: {why}")
    if not hasattr(sampler, "__iter__"):
        raise TypeError(f"DatasetNode(sampler=...) takes a torch Sampler of sample indices, got {name} {sampler!r}")
    try:
        length = len(sampler)
    except TypeError:
        raise TypeError(
            f"DatasetNode(sampler=...): the {name} has no __len__; the DatasetNode needs the number of "
            "samples of a pass (give the sampler a __len__)"
        ) from None
    first, second = sampler_order(sampler, 0), sampler_order(sampler, 0)
    if first != second:
        raise ValueError(
            f"DatasetNode(sampler=...): the {name} cannot be resumed: two draws seeded alike gave different orders, "
            "so it draws from a random generator of its own or other hidden state. Let it draw from a `generator` "
            "attribute (a torch.Generator or None, as torch's samplers do) or from torch's / numpy's / python's "
            "global streams: the DatasetNode seeds them per pass. Or use shuffle=True instead of a sampler"
        )
    if len(first) != length:
        raise ValueError(
            f"DatasetNode(sampler=...): the {name} yields {len(first)} indices but its __len__ is "
            f"{length}; fix its __len__"
        )
    if first:
        try:
            operator.index(first[0])
        except TypeError:
            raise TypeError(
                f"DatasetNode(sampler=...): the {name} yields {type(first[0]).__name__} "
                f"({first[0]!r}), not sample indices; batches come from batch_size=..."
            ) from None


class SeededBatches(Dataset):
    """A map-style dataset as DataLoader workers load it: each batch arrives as ``(seed, indices)``
    (``__getitems__``), and the random streams are seeded once for the batch, so that random
    augmentation does not depend on which worker loads it nor on where the run resumed.

    Examples:
        >>> data = SeededBatches([10, 20, 30])
        >>> data.__getitems__((5, [2, 0]))
        [30, 10]
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; map-style ones have it

    def __getitem__(self, index: Any) -> Any:
        return self.dataset[index]

    def __getitems__(self, batch: tuple[int, list]) -> list:
        seed, indices = batch
        reseed_batch(seed)
        many = getattr(self.dataset, "__getitems__", None)
        return many(indices) if many else [self.dataset[i] for i in indices]
