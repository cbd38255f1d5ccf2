"""Global step and epoch counters of a HyperGraph (API.md, B4)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Counter", "GlobalCounters"]


@dataclass
class Counter:
    """A pair of train / eval counts.

    Examples:
        >>> c = Counter(train=3, eval=2)
        >>> c.total
        5
    """

    train: int = 0
    eval: int = 0

    @property
    def total(self) -> int:
        """``train + eval``."""
        return self.train + self.eval

    def __getitem__(self, mode: str) -> int:
        if mode not in ("train", "eval"):
            raise KeyError(f"Counter has keys 'train' and 'eval', not {mode!r}")
        return getattr(self, mode)

    def __setitem__(self, mode: str, value: int) -> None:
        if mode not in ("train", "eval"):
            raise KeyError(f"Counter has keys 'train' and 'eval', not {mode!r}")
        setattr(self, mode, value)

    def state_dict(self) -> dict:
        """``{"train": ..., "eval": ...}``."""
        return {"train": self.train, "eval": self.eval}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        self.train = int(state["train"])
        self.eval = int(state["eval"])


@dataclass
class GlobalCounters:
    """``steps``: optimizer steps (train) and eval iterations; ``epochs``: completed epochs of
    epoch-mode tasks. Each instance owns its counters (ice-learn shared them by accident)."""

    steps: Counter = field(default_factory=Counter)
    epochs: Counter = field(default_factory=Counter)

    def state_dict(self) -> dict:
        """``{"steps": {...}, "epochs": {...}}``."""
        return {"steps": self.steps.state_dict(), "epochs": self.epochs.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        self.steps.load_state_dict(state["steps"])
        self.epochs.load_state_dict(state["epochs"])
