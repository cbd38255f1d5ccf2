"""``Launcher``: the record of where this process runs (rank, world size, device, backend), which every
node sees as ``n.launcher``. A leaf: nodes and the run context read it without importing the launcher."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Launcher"]


@dataclass(frozen=True)
class Launcher:
    """This process's place in the run.

    Examples:
        >>> Launcher().world_size
        1
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is global rank 0."""
        return self.rank == 0
