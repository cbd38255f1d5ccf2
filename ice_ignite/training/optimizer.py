"""``ice.Optimizer``: a spec from which each ModuleNode builds its own torch optimizer (B6)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from ignite.handlers.param_scheduler import ParamScheduler

__all__ = ["Optimizer"]

Scheduler = "torch.optim.lr_scheduler.LRScheduler | ParamScheduler"


class Optimizer:
    """How to build and step one torch optimizer.

    Args:
        optimizer: a ``torch.optim.Optimizer`` class (or any callable ``(params, **kwargs)``).
        lr_scheduler: ``lr_scheduler(optimizer)`` returning a torch ``LRScheduler`` or an ignite
            ``ParamScheduler`` (warm-up included); built once with the optimizer and stepped after
            every optimizer step.
        grad_clip_norm: clip the gradient norm of this optimizer's parameters to this value before
            each step (after the GradScaler's ``unscale_``).
        optimizer_kwargs: passed to ``optimizer`` (``lr=...``, ``weight_decay=...``).

    Examples:
        >>> import torch, ice_ignite as ice
        >>> spec = ice.Optimizer(torch.optim.SGD, lr=0.1, momentum=0.9,
        ...                      lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10))
        >>> opt = spec.build(torch.nn.Linear(2, 1).parameters())
        >>> type(opt).__name__
        'SGD'
    """

    def __init__(
        self,
        optimizer: Callable[..., torch.optim.Optimizer],
        *,
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        grad_clip_norm: float | None = None,
        **optimizer_kwargs: Any,
    ):
        if not callable(optimizer) or isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"ice.Optimizer takes the optimizer class, not {optimizer!r}: write "
                "ice.Optimizer(torch.optim.Adam, lr=1e-3)"
            )
        if lr_scheduler is not None and not callable(lr_scheduler):
            raise TypeError(
                f"lr_scheduler must be a factory called with the optimizer, got {lr_scheduler!r}; e.g. "
                "lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=10)"
            )
        if grad_clip_norm is not None:
            if (
                isinstance(grad_clip_norm, bool)
                or not isinstance(grad_clip_norm, (int, float))
                or not (math.isfinite(grad_clip_norm) and grad_clip_norm > 0)
            ):
                raise ValueError(f"grad_clip_norm must be a positive finite number, got {grad_clip_norm!r}")
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.grad_clip_norm = None if grad_clip_norm is None else float(grad_clip_norm)
        self.kwargs = optimizer_kwargs

    def build(self, params: Iterable[torch.nn.Parameter], where: str = "") -> torch.optim.Optimizer:
        """Build the torch optimizer over ``params``."""
        name = getattr(self.optimizer, "__name__", repr(self.optimizer))
        try:
            opt = self.optimizer(list(params), **self.kwargs)
        except Exception as e:
            raise type(e)(f"building {name}({self.kwargs}){where} failed: {e}") from e
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"{name}{where} built a {type(opt).__name__}, not a torch.optim.Optimizer")
        return opt

    def build_scheduler(self, optimizer: torch.optim.Optimizer, where: str = "") -> Any:
        """Build the scheduler (or return None); an ignite ParamScheduler is applied once so that
        the optimizer holds the value of the first step."""
        if self.lr_scheduler is None:
            return None
        sched = self.lr_scheduler(optimizer)
        if isinstance(sched, ParamScheduler):
            sched(None)
        elif not hasattr(sched, "step") or not hasattr(sched, "state_dict"):
            raise TypeError(
                f"lr_scheduler{where} returned {type(sched).__name__}: it must return a torch LRScheduler "
                "or an ignite ParamScheduler built on the optimizer it is given"
            )
        return sched

    def __repr__(self) -> str:
        name = getattr(self.optimizer, "__name__", repr(self.optimizer))
        extra = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"Optimizer({name}{extra})"


def step_scheduler(sched: Any) -> None:
    """Advance a scheduler by one optimizer step."""
    if isinstance(sched, ParamScheduler):
        sched(None)
    else:
        sched.step()
