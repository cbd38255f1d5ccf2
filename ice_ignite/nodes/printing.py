"""Compact summaries of node outputs, and the probe node behind ``print_forward_output``."""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from ice_ignite.nodes.node import Node

__all__ = ["summarize", "PrintProbe"]


def _tensor(t: torch.Tensor) -> str:
    shape = "[" + ", ".join(map(str, t.shape)) + "]"
    head = f"{str(t.dtype).removeprefix('torch.')}{shape} {t.device}"
    if t.numel() == 0:
        return head + " empty"
    if t.dtype == torch.bool:
        return head + f" true {int(t.sum().item())}/{t.numel()}"
    if not (t.is_floating_point() or t.is_complex()):
        return head + f" min {t.min().item()} max {t.max().item()}"
    data = t.detach().float() if not t.is_complex() else t.detach().abs().float()
    finite = torch.isfinite(data)
    nan, inf = int(torch.isnan(data).sum().item()), int(torch.isinf(data).sum().item())
    vals = data[finite]
    stats = (
        f" min {vals.min().item():.4g} max {vals.max().item():.4g} mean {vals.mean().item():.4g}"
        if vals.numel()
        else " no finite value"
    )
    return head + stats + (f" nan {nan}" if nan else "") + (f" inf {inf}" if inf else "")


def summarize(value: Any, indent: str = "  ") -> str:
    """A compact, possibly multi-line summary of a (nested) output: tensors as dtype, shape,
    device, min / max / mean and NaN / Inf counts; lists, tuples and dicts item by item.

    Examples:
        >>> summarize(torch.tensor([[1.0, float("nan")], [3.0, 4.0]]))
        'float32[2, 2] cpu min 1 max 4 mean 2.667 nan 1'
        >>> print(summarize((torch.zeros(2, dtype=torch.long), {"p": 0.5})))
        (2 items)
          [0] int64[2] cpu min 0 max 0
          [1] {1 item}
            p: 0.5
    """
    if isinstance(value, torch.Tensor):
        return _tensor(value)
    if isinstance(value, (list, tuple)):
        lines = [f"({len(value)} items)" if isinstance(value, tuple) else f"[{len(value)} items]"]
        lines += [f"{indent}[{i}] " + summarize(v, indent + "  ") for i, v in enumerate(value)]
        return "\n".join(lines)
    if isinstance(value, dict):
        lines = [f"{{{len(value)} item{'s' if len(value) != 1 else ''}}}"]
        lines += [f"{indent}{k}: " + summarize(v, indent + "  ") for k, v in value.items()]
        return "\n".join(lines)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class PrintProbe(Node):
    """Prints summaries of other nodes' outputs (``HyperGraph.print_forward_output``)."""

    def __init__(self, names: tuple[str, ...], every: int, total: int | None, train_only: bool, localrank0_only: bool):
        self.names = names
        self.every = every
        self.total = total
        self.train_only = train_only
        self.localrank0_only = localrank0_only
        self.printed = 0
        super().__init__()

    def forward_impl(self, x: Any) -> None:
        if self.train_only and not self.training:
            return
        if self.total is not None and self.printed >= self.total:
            return
        step = self.global_auto_steps + 1  # this iteration, 1-based
        if step % self.every and step != 1:
            return
        launcher = self.launcher
        values = {name: x[name] for name in self.names}
        if self.localrank0_only and launcher is not None and launcher.local_rank != 0:
            return
        self.printed += 1
        counters = self._ctx("counters").counters
        prefix = f"E{counters.epochs.train}S{counters.steps.train}"
        for name, value in values.items():
            tqdm.write(f"{prefix} {name}: {summarize(value)}")
