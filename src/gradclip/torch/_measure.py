"""The "measure" step for torch: total and per-tensor norms, non-finite detection.

The drop-in path reproduces ``torch.nn.utils`` kernel for kernel (same grouping by device and
dtype, same ``_foreach_norm``/``vector_norm`` calls, same order), so its numbers are bitwise equal.
"""

from __future__ import annotations

import torch
from torch.utils._foreach_utils import _device_has_foreach_support, _group_tensors_by_device_and_dtype

from gradclip._errors import ConfigError, Offender

_FOREACH_TYPES = (torch.Tensor,)


def use_foreach(foreach: bool | None, tensors: list[torch.Tensor], device: torch.device) -> bool:
    """Whether to use foreach kernels for a (device, dtype) group, with torch's rule.

    Raises:
        ConfigError: ``foreach=True`` on a device without foreach kernels.
    """
    if foreach is None:
        return _device_has_foreach_support(device) and all(type(t) in _FOREACH_TYPES for t in tensors)
    if foreach and not _device_has_foreach_support(device):
        raise ConfigError(
            f"foreach=True was passed, but {device.type} tensors have no foreach kernels. "
            "Pass foreach=None (choose automatically) or foreach=False."
        )
    return bool(foreach)


def grouped(tensors: list[torch.Tensor]) -> list[tuple[torch.device, list[torch.Tensor], list[int]]]:
    """Group tensors by (device, dtype) in torch's order: ``[(device, tensors, positions), ...]``."""
    if not tensors:  # torch's grouping raises on an empty list (torch.nn.utils.clip_grad_value_([]) does)
        return []
    groups = _group_tensors_by_device_and_dtype([tensors], with_indices=True)
    return [(device, ts, idx) for (device, _), ([ts], idx) in groups.items()]


def per_tensor_norms(
    tensors: list[torch.Tensor], p: float, foreach: bool | None, dtype: torch.dtype | None
) -> list[torch.Tensor]:
    """Norm of each tensor, in torch's grouped order (as ``torch.nn.utils.get_total_norm``)."""
    return [n for device, ts, _ in grouped(tensors) for n in _group_norms(ts, device, p, foreach, dtype)]


def _group_norms(
    ts: list[torch.Tensor], device: torch.device, p: float, foreach: bool | None, dtype: torch.dtype | None
) -> list[torch.Tensor]:
    """Norms of one (device, dtype) group with torch's kernels: foreach where allowed, else a loop."""
    if use_foreach(foreach, ts, device):
        return list(torch._foreach_norm(ts, p, dtype=dtype))
    return [torch.linalg.vector_norm(g, p, dtype=dtype) for g in ts]


def total_norm(tensors: list[torch.Tensor], p: float, foreach: bool | None, dtype: torch.dtype | None) -> torch.Tensor:
    """Total norm, computed exactly as ``torch.nn.utils.get_total_norm`` (plus ``dtype``)."""
    if not tensors:
        return torch.tensor(0.0, dtype=dtype) if dtype is not None else torch.tensor(0.0)
    first = tensors[0].device
    norms = per_tensor_norms(tensors, p, foreach, dtype)
    return torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), p)


def norms_in_order(
    tensors: list[torch.Tensor], p: float, foreach: bool | None, dtype: torch.dtype
) -> torch.Tensor:
    """1-D tensor of per-tensor norms in the order of ``tensors`` (on the first tensor's device)."""
    first = tensors[0].device
    out: list[torch.Tensor | None] = [None] * len(tensors)
    for device, ts, idx in grouped(tensors):
        if p == float("inf") and any(g.numel() == 0 for g in ts):  # torch refuses max of nothing; it is 0
            zero = torch.zeros((), dtype=dtype, device=device)
            norms = [torch.linalg.vector_norm(g, p, dtype=dtype) if g.numel() else zero for g in ts]
        else:
            norms = _group_norms(ts, device, p, foreach, dtype)
        for i, n in zip(idx, norms):
            out[i] = n.to(first)
    return torch.stack(out)  # type: ignore[arg-type]


def zero_(grads: list[torch.Tensor]) -> None:
    """Set every gradient to zero in place (one foreach call per device and dtype)."""
    for _, ts, _ in grouped(grads):
        torch._foreach_zero_(ts)


def scale_(grads: list[torch.Tensor], coef: torch.Tensor, foreach: bool | None) -> None:
    """Multiply every gradient by the 0-d tensor ``coef`` in place (torch's kernels)."""
    for device, ts, _ in grouped(grads):
        c = coef.to(device)
        if use_foreach(foreach, ts, device):
            torch._foreach_mul_(ts, c)
        else:
            for g in ts:
                g.mul_(c)


def scale_each_(grads: list[torch.Tensor], coefs: torch.Tensor) -> None:
    """Multiply gradient ``i`` by ``coefs[i]`` in place (no host sync)."""
    for g, c in zip(grads, coefs.unbind()):
        g.mul_(c.to(g.device))


def outside(grads: list[torch.Tensor], lo: float | None, hi: float | None) -> torch.Tensor:
    """0-d bool tensor: does any element lie outside ``[lo, hi]``?"""
    first = grads[0].device
    hits = []
    for g in grads:
        if lo is not None:
            hits.append((g < lo).any().to(first))
        if hi is not None:
            hits.append((g > hi).any().to(first))
    return torch.stack(hits).any() if hits else torch.zeros((), dtype=torch.bool, device=first)


def clamp_(grads: list[torch.Tensor], lo: float | None, hi: float | None, foreach: bool | None) -> None:
    """Clamp every gradient element into ``[lo, hi]`` in place (torch's kernels; NaN stays NaN)."""
    for device, ts, _ in grouped(grads):
        if use_foreach(foreach, ts, device):
            if lo is not None:
                torch._foreach_clamp_min_(ts, lo)
            if hi is not None:
                torch._foreach_clamp_max_(ts, hi)
        else:
            for g in ts:
                g.clamp_(min=lo, max=hi)


def offenders(names: list[str], index: list[int], grads: list[torch.Tensor]) -> tuple[Offender, ...]:
    """The gradients holding NaN/Inf, with counts (one pass over each gradient; host sync)."""
    found = []
    for name, i, g in zip(names, index, grads):
        if g.is_floating_point() or g.is_complex():
            nan = int(torch.isnan(g).sum())
            inf = int(torch.isinf(g).sum())
            if nan or inf:
                found.append(Offender(name, i, tuple(g.shape), nan, inf))
    return tuple(found)


def overflow_hint(norm: torch.Tensor, grads: list[torch.Tensor]) -> str:
    """A hint for a non-finite norm whose gradients are all finite (the norm overflowed)."""
    dtypes = sorted({str(g.dtype).replace("torch.", "") for g in grads})
    return (
        f" No gradient holds NaN or Inf: the norm overflowed in {norm.dtype} (gradient dtypes: "
        f"{', '.join(dtypes)}). Pass norm_dtype=torch.float32 or torch.float64."
    )
