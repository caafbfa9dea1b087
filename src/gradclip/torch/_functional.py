"""Drop-in replacements for ``torch.nn.utils`` clipping functions: same signature, same numbers.

By default every function here returns exactly what ``torch.nn.utils`` returns and leaves the
gradients exactly as it does (the same kernels in the same order). Two differences, both on input
that torch accepts silently and that breaks training:

- a negative or NaN ``max_norm``/``clip_value`` raises :class:`gradclip.ConfigError` (torch flips
  the gradients' signs or turns them to NaN);
- ``norm_type`` <= 0 (other than ``inf``) raises :class:`gradclip.ConfigError`.

Keyword-only extensions, off by default: ``nonfinite=`` (what to do with NaN/Inf gradients),
``norm_dtype=`` (accumulate the norm in a wider dtype, e.g. fp32 for bf16 gradients) and
``fast=`` (a faster 2-norm kernel on the CPU whose last bits differ from torch's).

Always on, with the same numbers as torch: on the CPU the scale pass is skipped when the clip
coefficient is exactly 1 (nothing to clip), value clipping reads and writes each gradient once,
and gradients that are adjacent views of one buffer are processed as one tensor.
"""

from __future__ import annotations

from typing import Any

import torch

from gradclip import _validate
from gradclip._errors import ConfigError, NonFiniteError, nonfinite_message
from gradclip.torch import _dist, _dist_functional, _fast, _measure, _params

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm"]


def _nonfinite_mode(nonfinite: str | None, error_if_nonfinite: bool) -> str:
    if nonfinite is None:
        return "error" if error_if_nonfinite else "propagate"
    _validate.choice("nonfinite", nonfinite, _validate.NONFINITE_MODES)
    if error_if_nonfinite and nonfinite != "error":
        raise ConfigError(
            f"error_if_nonfinite=True conflicts with nonfinite={nonfinite!r}. Pass one of them."
        )
    return nonfinite


def _raise_nonfinite(norm: torch.Tensor, p: float, named: list[tuple[str, torch.Tensor]]) -> None:
    names, index, grads = _params.with_grads(named)
    found = _measure.offenders(names, index, grads)
    message = nonfinite_message(float(norm), p, found)
    if not found:
        message += _measure.overflow_hint(norm, grads)
    raise NonFiniteError(message, found, float(norm))


@torch.no_grad()
def get_total_norm(
    tensors: Any,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    norm_dtype: torch.dtype | None = None,
    fast: bool = False,
    group: Any = None,
    groups: Any = None,
    replicated: Any = None,
) -> torch.Tensor:
    """Norm of the given tensors viewed as one vector (drop-in for ``torch.nn.utils.get_total_norm``).

    Args:
        tensors: A tensor or an iterable of tensors (usually gradients).
        norm_type: Order p of the norm, > 0 or ``inf``. Default 2.
        error_if_nonfinite: Raise :class:`gradclip.NonFiniteError` (also a ``RuntimeError``)
            when the norm is NaN or Inf. Default False.
        foreach: Use foreach kernels (``None``: where supported, as torch).
        norm_dtype: Accumulate and return the norm in this dtype (``None``: the tensors' dtype,
            as torch). ``torch.float32`` gives 7 significant digits for bf16 gradients.
        fast: On the CPU, compute the 2-norm of float tensors with blocked dot products (float32
            accumulation, float64 for float64 tensors; ~1.5x faster with 2 threads, and more
            accurate than torch's kernel on large tensors). The norm then differs from torch's
            in the last bits. Default False (bitwise torch). Other norms and devices: torch's.
        group, groups, replicated: Distributed tensors, as in :func:`clip_grad_norm_` (names
            are ``tensors[i]``).

    Returns:
        0-d tensor on the first tensor's device; ``tensor(0.)`` when ``tensors`` is empty.
        With DTensors or ``group=`` it is the global norm, the same plain tensor on every rank.

    Raises:
        ConfigError: ``norm_type`` <= 0, or ``foreach=True`` on a device without foreach kernels.
        InputTypeError: a non-tensor element.
        NonFiniteError: with ``error_if_nonfinite=True`` and a non-finite norm.

    Example:
        >>> import torch, gradclip.torch as gct
        >>> gct.get_total_norm([torch.tensor([3.0]), torch.tensor([4.0])])
        tensor(5.)
    """
    p = _validate.norm_type(norm_type)
    ts = _params.tensors(tensors)
    norm_dtype = _params.norm_dtype(norm_dtype)
    _params.check_grads([f"tensors[{i}]" for i in range(len(ts))], ts)
    if _dist.wanted(group, groups, ts):
        cfg = _dist.layout(group, groups, replicated)
        return _dist_functional.get_total_norm(cfg, ts, p, error_if_nonfinite, foreach, norm_dtype)
    norm = _measure.total_norm(ts, p, foreach, norm_dtype, _fast.flag(fast, auto=False))
    if error_if_nonfinite and not bool(torch.isfinite(norm)):
        _raise_nonfinite(norm, p, [(f"tensors[{i}]", _Holder(t)) for i, t in enumerate(ts)])
    return norm


class _Holder:
    """Lets a bare tensor be reported like a parameter whose ``.grad`` it is."""

    def __init__(self, t: torch.Tensor) -> None:
        self.grad = t


@torch.no_grad()
def clip_grads_with_norm_(
    parameters: Any, max_norm: float, total_norm: torch.Tensor, foreach: bool | None = None
) -> None:
    """Scale gradients by ``min(1, max_norm / (total_norm + 1e-6))`` (drop-in for torch's).

    Use it with :func:`get_total_norm` when the norm is computed, reduced or logged separately.

    Args:
        parameters: Parameters whose ``.grad`` is scaled in place (see :func:`clip_grad_norm_`).
        max_norm: Threshold, >= 0.
        total_norm: The norm to scale by (a tensor, e.g. from :func:`get_total_norm`).
        foreach: Use foreach kernels (``None``: where supported).

    Raises:
        ConfigError: negative or NaN ``max_norm``.

    Example:
        >>> import torch, gradclip.torch as gct
        >>> w = torch.nn.Parameter(torch.zeros(2)); w.grad = torch.tensor([3.0, 4.0])
        >>> gct.clip_grads_with_norm_([w], 1.0, gct.get_total_norm([w.grad]))
        >>> w.grad
        tensor([0.6000, 0.8000])
    """
    max_norm = _validate.threshold("max_norm", max_norm)
    _, _, grads = _params.with_grads(_params.named_tensors(parameters))
    if _dist.has_dtensor(grads) or _dist.has_dtensor([total_norm]):  # scale the local shards
        grads, total_norm = _dist_functional.localize(grads, total_norm)
    if grads:
        _measure.scale_(grads, torch.clamp(max_norm / (total_norm + 1e-6), max=1.0), foreach)


@torch.no_grad()
def clip_grad_norm_(
    parameters: Any,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
    *,
    nonfinite: str | None = None,
    norm_dtype: torch.dtype | None = None,
    fast: bool = False,
    group: Any = None,
    groups: Any = None,
    replicated: Any = None,
) -> torch.Tensor:
    """Clip the gradients' total norm to ``max_norm`` in place; return the norm before clipping.

    Drop-in for ``torch.nn.utils.clip_grad_norm_``: same arguments, same return value, same
    gradients. Gradients are multiplied by ``min(1, max_norm / (norm + 1e-6))``; on the CPU a
    coefficient of exactly 1 skips the multiply (same result, one pass fewer).

    Args:
        parameters: A tensor, an ``nn.Module``, ``model.parameters()``, ``model.named_parameters()``
            (names appear in error messages) or ``optimizer.param_groups``. Parameters without a
            gradient are ignored.
        max_norm: Threshold, >= 0 (``0`` zeroes the gradients, ``inf`` never clips).
        norm_type: Order p of the norm, > 0 or ``inf``. Default 2.
        error_if_nonfinite: As torch: raise when the norm is NaN/Inf (same as
            ``nonfinite="error"``).
        foreach: Use foreach kernels (``None``: where supported, as torch).
        nonfinite: What to do when the norm is NaN or Inf. ``"propagate"`` (default, as torch:
            the gradients become NaN), ``"error"`` (raise :class:`gradclip.NonFiniteError` naming
            every offending parameter with its shape and NaN/Inf counts; gradients untouched),
            ``"skip"`` (leave the gradients untouched; check the returned norm with
            ``torch.isfinite`` and skip ``optimizer.step()``), ``"zero"`` (set all gradients to
            zero). Every mode but ``"propagate"`` reads one boolean from the device.
        norm_dtype: Accumulate and return the norm in this dtype (``None``: the gradients' dtype,
            as torch).
        fast: On the CPU, compute the 2-norm of float gradients with blocked dot products (float32
            accumulation, float64 for float64 tensors; ~1.5x faster with 2 threads, and more
            accurate than torch's kernel on large gradients). The norm then differs from torch's
            in the last bits. Default False (bitwise torch). Other norms and devices: torch's.
        group: Distributed, sharded by hand or by pipeline stage: the
            ``torch.distributed.ProcessGroup`` over which partial norms are summed (every rank
            of it must call). DTensor gradients (FSDP2, tensor parallel) need nothing: they are
            detected and reduced over their meshes; replicated gradients (DDP) need nothing.
        groups: Several groups to sum over in turn, e.g. ``(tp_group, pp_group)``; not with ``group``.
        replicated: Tensors held identically by several ranks of the sum (tied or
            tensor-parallel-replicated), counted once: a list of names (held by every rank of
            the first group), a ``{name: copies}`` mapping, or a predicate
            ``(name, grad) -> bool | int``.

    Returns:
        The total norm of the gradients before clipping, a 0-d tensor. With DTensors or
        ``group=`` it is the global norm, the same plain tensor on every rank (one all-reduce
        per process group).

    Raises:
        ConfigError: negative or NaN ``max_norm``, ``norm_type`` <= 0, unknown ``nonfinite``.
        InputTypeError: ``parameters`` is not one of the accepted containers.
        NonFiniteError: non-finite norm with ``nonfinite="error"`` or ``error_if_nonfinite=True``.

    References:
        Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks",
        ICML 2013 (arXiv:1211.5063).

    Example:
        >>> import torch, gradclip.torch as gct
        >>> model = torch.nn.Linear(4, 1)
        >>> model(torch.ones(2, 4)).sum().mul(100).backward()
        >>> norm = gct.clip_grad_norm_(model.parameters(), max_norm=1.0)
        >>> bool(norm > 1.0), round(float(gct.get_total_norm([p.grad for p in model.parameters()])), 4)
        (True, 1.0)
    """
    max_norm = _validate.threshold("max_norm", max_norm)
    p = _validate.norm_type(norm_type)
    mode = _nonfinite_mode(nonfinite, error_if_nonfinite)
    named = _params.named_tensors(parameters, warn_empty_generator=True)
    names, _, grads = _params.with_grads(named)
    norm_dtype = _params.norm_dtype(norm_dtype)
    _params.check_grads(names, grads)
    if _dist.wanted(group, groups, grads):
        cfg = _dist.layout(group, groups, replicated)
        return _dist_functional.clip_grad_norm_(cfg, named, max_norm, p, mode, foreach, norm_dtype)
    norm = _measure.total_norm(grads, p, foreach, norm_dtype, _fast.flag(fast, auto=False))
    if mode != "propagate" and grads and not bool(torch.isfinite(norm)):
        if mode == "error":
            _raise_nonfinite(norm, p, named)
        if mode == "zero":
            _measure.zero_(grads)
        return norm
    if grads:
        _measure.scale_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0), foreach)
    return norm


@torch.no_grad()
def clip_grad_value_(
    parameters: Any, clip_value: float, foreach: bool | None = None, *, nonfinite: str = "propagate",
    group: Any = None, groups: Any = None,
) -> None:
    """Clamp every gradient element into ``[-clip_value, clip_value]`` in place.

    Drop-in for ``torch.nn.utils.clip_grad_value_`` (same gradients; NaN stays NaN).

    Args:
        parameters: As in :func:`clip_grad_norm_`.
        clip_value: Bound, >= 0 (torch flips signs for a negative one; we raise).
        foreach: Use foreach kernels (``None``: where supported).
        nonfinite: ``"propagate"`` (default, as torch), ``"error"``, ``"skip"`` or ``"zero"``, as
            in :func:`clip_grad_norm_`; every mode but ``"propagate"`` costs one extra read of
            the gradients and one device read.
        group, groups: Distributed gradients, as in :func:`clip_grad_norm_`: with ``nonfinite``
            other than ``"propagate"``, a NaN/Inf on any rank is seen on every rank (one
            all-reduce per process group).

    Raises:
        ConfigError: negative or NaN ``clip_value``, unknown ``nonfinite``.
        InputTypeError: ``parameters`` is not one of the accepted containers.
        NonFiniteError: a NaN/Inf gradient with ``nonfinite="error"``.

    Example:
        >>> import torch, gradclip.torch as gct
        >>> w = torch.nn.Parameter(torch.zeros(3)); w.grad = torch.tensor([-2.0, 0.5, 3.0])
        >>> gct.clip_grad_value_([w], 1.0)
        >>> w.grad
        tensor([-1.0000,  0.5000,  1.0000])
    """
    c = _validate.threshold("clip_value", clip_value)
    mode = _nonfinite_mode(nonfinite, False)
    named = _params.named_tensors(parameters)
    _, _, grads = _params.with_grads(named)  # integer gradients clamp as in torch
    if _dist.wanted(group, groups, grads):
        return _dist_functional.clip_grad_value_(_dist.layout(group, groups), named, c, mode, foreach)
    if mode != "propagate" and grads:
        peak = _measure.total_norm(grads, float("inf"), foreach, None)
        if not bool(torch.isfinite(peak)):
            if mode == "error":
                _raise_nonfinite(peak, float("inf"), named)
            if mode == "zero":
                _measure.zero_(grads)
            return
    _measure.clamp_(grads, -c, c, foreach)
