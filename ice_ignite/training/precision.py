"""``Precision``: autocast settings and the GradScaler of a run (API.md B2)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Precision"]

_AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)


class Precision:
    """Whether forwards run under ``torch.autocast``, with which dtype, and the run's GradScaler.

    ``setup(device)`` decides both for a run's device: float16 on CUDA and bfloat16 on CPU unless a
    dtype is given, and a GradScaler by default only for float16.

    Examples:
        >>> p = Precision()
        >>> p.configure_autocast(True)
        >>> p.setup(torch.device("cpu")); p.autocast
        ('cpu', torch.bfloat16)
        >>> p.grad_scaler is None
        True
    """

    def __init__(self) -> None:
        self.autocast_enabled = False
        self.autocast_dtype: torch.dtype | None = None
        self._scaler_spec: Any = None
        self._scaler_kwargs: dict = {}
        #: (device type, dtype) while a run uses autocast, else None
        self.autocast: tuple[str, torch.dtype] | None = None
        #: the run's GradScaler, or None when disabled
        self.grad_scaler: torch.amp.GradScaler | None = None
        #: whether an optimizer stepped through the scaler in this optimizer step
        self.scaler_stepped = False

    def configure_autocast(
        self,
        enabled: bool = True,
        dtype: torch.dtype | None = None,
        grad_scaler: bool | torch.amp.GradScaler | None = None,
    ) -> None:
        """See ``HyperGraph.init_autocast``."""
        if not isinstance(enabled, bool):
            raise TypeError(f"autocast_enabled must be True or False, got {enabled!r}")
        if dtype is not None and dtype not in _AUTOCAST_DTYPES:
            raise ValueError(f"autocast_dtype must be torch.float16, torch.bfloat16 or None, got {dtype!r}")
        self.autocast_enabled = enabled
        self.autocast_dtype = dtype
        if grad_scaler is not None:
            self.configure_scaler(grad_scaler)

    def configure_scaler(
        self, grad_scaler: bool | torch.amp.GradScaler = True, enabled: bool = True, **scaler_kwargs: Any
    ) -> None:
        """See ``HyperGraph.init_grad_scaler``."""
        if not isinstance(grad_scaler, (bool, torch.amp.GradScaler)):
            raise TypeError(f"grad_scaler must be True, False or a torch.amp.GradScaler, got {grad_scaler!r}")
        self._scaler_spec = grad_scaler if enabled or not isinstance(grad_scaler, bool) else False
        self._scaler_kwargs = scaler_kwargs
        self.grad_scaler = None

    def dtype_for(self, device: torch.device) -> torch.dtype:
        """The autocast dtype on ``device``."""
        if self.autocast_dtype is not None:
            return self.autocast_dtype
        return torch.float16 if device.type == "cuda" else torch.bfloat16

    def scaler_enabled(self, device: torch.device) -> bool:
        """Whether losses are scaled (decided for ``device`` when unset)."""
        if self.grad_scaler is not None:
            return True
        spec = self._scaler_spec
        if isinstance(spec, torch.amp.GradScaler):
            return spec.is_enabled()
        if spec is None:
            return self.autocast_enabled and self.dtype_for(device) == torch.float16
        return bool(spec)

    def setup(self, device: torch.device) -> None:
        """Decide autocast and the GradScaler for a run on ``device`` (a second run keeps its scaler)."""
        dtype = self.dtype_for(device)
        self.autocast = (device.type, dtype) if self.autocast_enabled else None
        if self.grad_scaler is not None:
            return
        spec = self._scaler_spec
        if isinstance(spec, torch.amp.GradScaler):
            self.grad_scaler = spec if spec.is_enabled() else None
        elif spec is True or (spec is None and self.autocast_enabled and dtype == torch.float16):
            self.grad_scaler = torch.amp.GradScaler(device.type, **self._scaler_kwargs)
        else:
            self.grad_scaler = None

    def after_optimizer_step(self) -> None:
        """Update the scale after an optimizer step that went through the scaler (a handler of
        ``StepEvents.OPTIM_STEP_COMPLETED``)."""
        if self.grad_scaler is not None and self.scaler_stepped:
            self.grad_scaler.update()
        self.scaler_stepped = False
