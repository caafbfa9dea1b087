"""The distributed path of the drop-in functions (``get_total_norm``, ``clip_grad_norm_``, ...).

:mod:`gradclip.torch._functional` hands over here when a gradient is a DTensor or the caller
passed ``group=``/``groups=``; the single-process path never comes here. Numbers follow torch's
semantics (coefficient ``min(1, max_norm / (norm + 1e-6))``, the norm in the gradients' dtype
unless ``norm_dtype`` is given), with the norm global and the same on every rank. The local
norms use torch's kernels (``fast=`` applies to the single-process path only).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from gradclip._errors import NonFiniteError, nonfinite_message
from gradclip.torch import _measure, _params
from gradclip.torch._dist import Layout, View, dtensor_type

__all__ = ["clip_grad_norm_", "clip_grad_value_", "get_total_norm", "localize", "raise_nonfinite"]


def raise_nonfinite(v: View, norm: torch.Tensor, p: float, names: list[str], index: list[int]) -> None:
    """Raise :class:`gradclip.NonFiniteError` naming every rank's offenders (every rank raises).

    Raises:
        NonFiniteError: always; its ``offenders`` carry their ``rank``.
    """
    found = v.offenders(names, index, v.local)
    message = nonfinite_message(float(norm), p, found)
    if not found:
        message += _measure.overflow_hint(norm, v.local)
    raise NonFiniteError(message, found, float(norm))


def _measure_dtype(out: torch.dtype) -> torch.dtype:
    return torch.float64 if out == torch.float64 else torch.float32


def _total(cfg: Layout | None, names: list[str], grads: list[torch.Tensor], p: float, foreach: bool | None,
           norm_dtype: torch.dtype | None) -> tuple[View, torch.Tensor]:
    """The view and the global norm, in ``norm_dtype`` or (as torch) the gradients' dtype."""
    v = View(cfg, names, grads)
    out = norm_dtype or (functools.reduce(torch.promote_types, [g.dtype for g in grads]) if grads else torch.float32)
    _, norm, _ = v.norms(p, foreach, _measure_dtype(out))
    return v, norm.to(out)


def get_total_norm(cfg: Layout | None, tensors: list[torch.Tensor], p: float, error_if_nonfinite: bool,
                   foreach: bool | None, norm_dtype: torch.dtype | None) -> torch.Tensor:
    """Global norm of ``tensors`` (a plain, replicated 0-d tensor)."""
    names = [f"tensors[{i}]" for i in range(len(tensors))]
    v, norm = _total(cfg, names, tensors, p, foreach, norm_dtype)
    if error_if_nonfinite and not bool(torch.isfinite(norm)):
        raise_nonfinite(v, norm, p, names, list(range(len(tensors))))
    return norm


def clip_grad_norm_(cfg: Layout | None, named: list[tuple[str, torch.Tensor]], max_norm: float, p: float,
                    mode: str, foreach: bool | None, norm_dtype: torch.dtype | None) -> torch.Tensor:
    """Clip by the global norm in place (every rank scales its shards by the same factor)."""
    names, index, grads = _params.with_grads(named)
    v, norm = _total(cfg, names, grads, p, foreach, norm_dtype)
    if mode != "propagate" and not bool(torch.isfinite(norm)):
        if mode == "error":
            raise_nonfinite(v, norm, p, names, index)
        if mode == "zero" and v.local:
            _measure.zero_(v.local)
        return norm
    if v.local:
        _measure.scale_(v.local, torch.clamp(max_norm / (norm + 1e-6), max=1.0), foreach)
    return norm


def clip_grad_value_(cfg: Layout | None, named: list[tuple[str, torch.Tensor]], clip_value: float, mode: str,
                     foreach: bool | None) -> None:
    """Clamp the local parts in place; a non-finite value anywhere is handled on every rank alike."""
    names, index, grads = _params.with_grads(named)
    v = View(cfg, names, grads)
    if mode != "propagate":
        wide = any(g.dtype == torch.float64 for g in grads)
        _, peak, _ = v.norms(float("inf"), foreach, torch.float64 if wide else torch.float32)
        if not bool(torch.isfinite(peak)):
            if mode == "error":
                raise_nonfinite(v, peak, float("inf"), names, index)
            if mode == "zero" and v.local:
                _measure.zero_(v.local)
            return
    if v.local:
        _measure.clamp_(v.local, -clip_value, clip_value, foreach)


def localize(grads: list[torch.Tensor], total_norm: Any) -> tuple[list[torch.Tensor], Any]:
    """Local parts of DTensor gradients, and a DTensor norm as a plain tensor (its full value)."""
    dt = dtensor_type()
    if dt is None:  # pragma: no cover - torch built without distributed
        return grads, total_norm
    local = [g.to_local() if isinstance(g, dt) else g for g in grads]
    return local, total_norm.full_tensor() if isinstance(total_norm, dt) else total_norm
