"""The "measure" step for torch: total and per-tensor norms, non-finite detection.

The drop-in path reproduces ``torch.nn.utils`` kernel for kernel (same grouping by device and
dtype, same ``_foreach_norm``/``vector_norm`` calls, same order), so its numbers are bitwise equal.
The faster CPU kernels of :mod:`gradclip.torch._fast` come in where they give the same bits (the
scale and clamp passes) or where the caller asks for them (``fast=``); see that module for the
measurements behind each choice.
"""

from __future__ import annotations

import functools

import torch
from torch.utils._foreach_utils import _device_has_foreach_support, _group_tensors_by_device_and_dtype

from gradclip._errors import ConfigError, Offender
from gradclip.torch import _fast

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
    """Norms of one (device, dtype) group with torch's kernels: foreach where allowed, else a loop.

    A complex group accumulated in a real ``dtype`` is measured in the matching complex dtype
    (torch's norm kernels want that), which gives the same real norm of the moduli.
    """
    if dtype is not None and ts and ts[0].is_complex() and not dtype.is_complex:
        dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    if use_foreach(foreach, ts, device):
        return list(torch._foreach_norm(ts, p, dtype=dtype))
    return [torch.linalg.vector_norm(g, p, dtype=dtype) for g in ts]


def total_norm(
    tensors: list[torch.Tensor], p: float, foreach: bool | None, dtype: torch.dtype | None, fast: bool = False
) -> torch.Tensor:
    """Total norm, computed exactly as ``torch.nn.utils.get_total_norm`` (plus ``dtype``).

    With ``fast=True`` the 2-norm of CPU float tensors takes the blocked-dot kernel instead
    (:func:`fast_total_norm`): not bitwise torch's, usually more accurate.
    """
    if not tensors:
        return torch.tensor(0.0, dtype=dtype) if dtype is not None else torch.tensor(0.0)
    norm = fast_total_norm(tensors, p, dtype) if fast else None
    if norm is not None:
        return norm
    first = tensors[0].device
    norms = per_tensor_norms(tensors, p, foreach, dtype)
    return torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), p)


def fast_total_norm(tensors: list[torch.Tensor], p: float, dtype: torch.dtype | None) -> torch.Tensor | None:
    """The 2-norm by blocked dot products (fp32 accumulation, fp64 for fp64), or None where it does not apply.

    Returned in ``dtype``, else in the promoted dtype of the tensors (torch's result dtype).
    """
    groups = grouped(tensors)
    out = dtype or functools.reduce(torch.promote_types, [ts[0].dtype for _, ts, _ in groups])
    acc = dtype if dtype in (torch.float32, torch.float64) else (torch.float64 if out == torch.float64 else torch.float32)
    if not all(_fast.applies(p, device, ts[0].dtype, acc) for device, ts, _ in groups):
        return None
    total = _fast.total_sumsq(groups[0][1], acc)
    for _, ts, _ in groups[1:]:
        total = total + _fast.total_sumsq(ts, acc)
    return total.sqrt().to(out)


def norms_in_order(
    tensors: list[torch.Tensor], p: float, foreach: bool | None, dtype: torch.dtype, fast: bool | None = None
) -> torch.Tensor:
    """1-D tensor of per-tensor norms in the order of ``tensors`` (on the first tensor's device).

    ``fast``: take the blocked-dot 2-norm (:mod:`gradclip.torch._fast`) for CPU groups; ``None``
    takes it only where torch's kernel would convert (bf16/fp16 gradients, a wider ``dtype``).
    """
    first = tensors[0].device
    parts, order = [], []
    for device, ts, idx in grouped(tensors):
        parts.append(_group_norm_vector(ts, device, p, foreach, dtype, fast).to(first))
        order.extend(idx)
    if order == list(range(len(order))):
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    rows: list[torch.Tensor] = [None] * len(order)  # type: ignore[list-item]
    for i, n in zip(order, (n for part in parts for n in part.unbind())):
        rows[i] = n  # reordered on the host side: an index tensor would be a host-to-device copy
    return torch.stack(rows)


def _group_norm_vector(
    ts: list[torch.Tensor], device: torch.device, p: float, foreach: bool | None, dtype: torch.dtype,
    fast: bool | None,
) -> torch.Tensor:
    """1-D tensor of the norms of one (device, dtype) group."""
    if fast is not False and _fast.applies(p, device, ts[0].dtype, dtype) and _fast.wanted(fast, ts[0].dtype, dtype):
        return _fast.sumsqs(ts, dtype).sqrt()
    if p == float("inf") and any(g.numel() == 0 for g in ts):  # torch refuses max of nothing; it is 0
        zero = torch.zeros((), dtype=dtype, device=device)
        return torch.stack([torch.linalg.vector_norm(g, p, dtype=dtype) if g.numel() else zero for g in ts])
    return torch.stack(_group_norms(ts, device, p, foreach, dtype))


def zero_(grads: list[torch.Tensor]) -> None:
    """Set every gradient to zero in place (one foreach call per device and dtype)."""
    for _, ts, _ in grouped(grads):
        torch._foreach_zero_(ts)


def scale_(grads: list[torch.Tensor], coef: torch.Tensor, foreach: bool | None) -> None:
    """Multiply every gradient by the 0-d tensor ``coef`` in place (torch's kernels, same bits).

    On the CPU, where reading ``coef`` costs no device sync, a coefficient of exactly 1 skips the
    pass (``x * 1 == x`` bit for bit; a NaN coefficient still multiplies), and adjacent views of
    one buffer are multiplied as one tensor. On accelerators and under ``torch.compile`` the
    multiply always runs, as in torch (:func:`gradclip.torch._fast.host_reads`).
    """
    groups = grouped(grads)
    if _fast.host_reads(coef.device) and all(d.type == "cpu" for d, _, _ in groups) and bool(coef == 1):
        return
    for device, ts, _ in groups:
        c = coef.to(device)
        if use_foreach(foreach, ts, device):
            _fast.foreach_mul_(ts, c)
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
    hits = [h.to(first) for g in grads for h in _outside_one(g, lo, hi)]
    return torch.stack(hits).any() if hits else torch.zeros((), dtype=torch.bool, device=first)


def _outside_one(g: torch.Tensor, lo: float | None, hi: float | None) -> list[torch.Tensor]:
    """0-d bool tensors: has ``g`` an element below ``lo`` / above ``hi``?

    On the CPU one ``aminmax`` read answers both (a host read of one flag there is free; a NaN
    minimum falls back to the comparisons, which skip NaN). Elsewhere (and under ``torch.compile``):
    comparisons, no sync.
    """
    low = high = g
    if _fast.host_reads(g.device) and g.numel():
        low, high = torch.aminmax(g)
        if bool(torch.isnan(low)):
            low = high = g
    hits = []
    if lo is not None:
        hits.append((low < lo).any())
    if hi is not None:
        hits.append((high > hi).any())
    return hits


def clamp_(grads: list[torch.Tensor], lo: float | None, hi: float | None, foreach: bool | None) -> None:
    """Clamp every gradient element into ``[lo, hi]`` in place (torch's kernels; NaN stays NaN).

    ``foreach=None`` on the CPU clamps each tensor (or run of adjacent views) in one pass
    (``clamp_(lo, hi)``, same bits as foreach ``clamp_min_`` + ``clamp_max_``, half the traffic).
    """
    for device, ts, _ in grouped(grads):
        if foreach is None and device.type == "cpu":
            _fast.clamp_(ts, lo, hi)
        elif use_foreach(foreach, ts, device):
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
