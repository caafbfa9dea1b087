"""Policy and apply operations on torch tensors: tensor arithmetic only, no host sync.

:class:`TorchOps` is the :class:`gradclip._ops.PolicyOps` of torch tensors (what a policy decides
with). :class:`TorchGradOps` is the :class:`gradclip._apply.GradOps` of the torch ``Clipper``: it
applies a decision to the gradients in place, with the kernels of :mod:`gradclip.torch._measure`
(foreach, grouped by device and dtype, torch's bits) and :mod:`gradclip.torch._units`.
"""

from __future__ import annotations

from typing import Any

import torch

from gradclip.torch import _measure, _units

__all__ = ["TorchGradOps", "TorchOps"]


class TorchOps:
    """The :class:`gradclip._ops.Ops` of torch tensors (policy arrays 0-d to 2-D, on any device).

    Example:
        >>> from gradclip.policy import Ops
        >>> isinstance(TorchOps, Ops)
        True
    """

    @staticmethod
    def clamp(x: Any, lo: float | None = None, hi: float | None = None) -> torch.Tensor:
        return torch.clamp(x, min=lo, max=hi)

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> torch.Tensor:
        return torch.where(cond, a, b)

    @staticmethod
    def minimum(a: Any, b: Any) -> torch.Tensor:
        return torch.clamp(a, max=b) if not isinstance(b, torch.Tensor) else torch.minimum(a, b)

    @staticmethod
    def maximum(a: Any, b: Any) -> torch.Tensor:
        return torch.clamp(a, min=b) if not isinstance(b, torch.Tensor) else torch.maximum(a, b)

    @staticmethod
    def any(x: Any) -> torch.Tensor:
        return torch.any(x)

    @staticmethod
    def vector_norm(x: Any, p: float) -> torch.Tensor:
        return torch.linalg.vector_norm(x, p)

    # -- named idioms (see gradclip._ops) --
    @staticmethod
    def full_like(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.full_like(x, value)

    @staticmethod
    def false_like(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), dtype=torch.bool, device=x.device)

    @staticmethod
    def propagate_nan(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y + (x - x)

    # -- state helpers: arrays created like the measured norm (same device and dtype) --
    @staticmethod
    def arange(n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.arange(n, dtype=like.dtype, device=like.device)

    @staticmethod
    def scalar(value: float, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(value, dtype=like.dtype, device=like.device)

    @staticmethod
    def sum(x: torch.Tensor) -> torch.Tensor:
        return torch.sum(x)

    @staticmethod
    def sqrt(x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)

    @staticmethod
    def stack(xs: Any) -> torch.Tensor:
        return torch.stack(list(xs))

    # -- sorted/ring history buffers (AutoClip, MaxNormHistory); index arrays are int64 --
    @staticmethod
    def isfinite(x: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(x)

    @staticmethod
    def filled(shape: tuple[int, ...], value: float, like: torch.Tensor) -> torch.Tensor:
        return torch.full(tuple(shape), value, dtype=like.dtype, device=like.device)

    @staticmethod
    def index_arange(n: int, like: torch.Tensor) -> torch.Tensor:
        return torch.arange(n, dtype=torch.int64, device=like.device)

    @staticmethod
    def index_scalar(value: int, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(value, dtype=torch.int64, device=like.device)

    @staticmethod
    def concat(xs: Any, axis: int = -1) -> torch.Tensor:
        return torch.cat(list(xs), dim=axis)

    @staticmethod
    def reshape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.reshape(x, shape)

    @staticmethod
    def take_last(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``x[..., index]`` for a 0-d integer tensor ``index`` (a gather: no host read)."""
        return torch.index_select(x, -1, index.reshape(1)).squeeze(-1)

    @staticmethod
    def searchsorted_left(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Per row of ascending ``rows`` (K, L), how many entries are < ``values[k]`` (int64, (K,))."""
        return torch.searchsorted(rows, values.unsqueeze(-1).to(rows.dtype)).squeeze(-1)

    @staticmethod
    def floor(x: torch.Tensor) -> torch.Tensor:
        return torch.floor(x)

    @staticmethod
    def as_float64(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64)

    @staticmethod
    def as_int64(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.int64)

    @staticmethod
    def as_dtype_of(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return x.to(like.dtype)

    @staticmethod
    def amax(x: torch.Tensor) -> torch.Tensor:
        return torch.amax(x)

    # -- tensor-level operations of the functional step (gradclip._step), so that TorchOps is a
    #    whole gradclip._ops.Ops: the functional step runs on torch tensors too (torch.func) --
    @staticmethod
    def acc_dtype(grads: Any) -> torch.dtype:
        """float64 when a gradient is float64, else float32 (the Clipper's default)."""
        return torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32

    @staticmethod
    def tensor_norm(g: torch.Tensor, p: float, acc: torch.dtype) -> torch.Tensor:
        return torch.linalg.vector_norm(g, p, dtype=acc)

    @staticmethod
    def unit_norm(x: torch.Tensor, axes: tuple[int, ...] | None, acc: torch.dtype) -> torch.Tensor:
        return _units.norm(x, axes, acc)

    @staticmethod
    def mul(g: torch.Tensor, factor: Any) -> torch.Tensor:
        return g * factor.to(g.dtype)

    @staticmethod
    def clip(g: torch.Tensor, lo: float | None, hi: float | None) -> torch.Tensor:
        return torch.clamp(g, min=lo, max=hi)

    @staticmethod
    def zeros_like(g: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(g)

    @staticmethod
    def select(cond: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a`` where the 0-d ``cond`` is True, else ``b`` (whole tensors)."""
        return torch.where(cond, a, b)


class TorchGradOps:
    """The :class:`gradclip._apply.GradOps` of torch gradients: in place, returning the same list.

    Args:
        foreach: Foreach kernels (``None``: where supported), as the ``Clipper``'s option.
        fast: The CPU norm kernel (:mod:`gradclip.torch._fast`), as the ``Clipper``'s option.
        acc: dtype the norms are accumulated in (a clamp measures the clamped gradients again).

    Example:
        >>> import torch
        >>> g = [torch.tensor([3.0, 4.0])]
        >>> TorchGradOps(None, None, torch.float32).scale(g, torch.tensor(0.5))[0] is g[0], g[0].tolist()
        (True, [1.5, 2.0])
    """

    __slots__ = ("acc", "fast", "foreach")

    def __init__(self, foreach: bool | None, fast: bool | None, acc: torch.dtype) -> None:
        self.foreach, self.fast, self.acc = foreach, fast, acc

    def scale(self, grads: list[torch.Tensor], coef: torch.Tensor) -> list[torch.Tensor]:
        """Multiply every gradient by the 0-d ``coef`` (:func:`gradclip.torch._measure.scale_`)."""
        _measure.scale_(grads, coef, self.foreach)
        return grads

    def scale_each(self, grads: list[torch.Tensor], coefs: torch.Tensor) -> list[torch.Tensor]:
        _measure.scale_each_(grads, coefs)
        return grads

    def scale_units(self, grads: list[torch.Tensor], coefs: list[Any]) -> list[torch.Tensor]:
        _units.scale_units_(grads, coefs)
        return grads

    def clamp(self, grads: list[torch.Tensor], lo: float | None, hi: float | None) -> list[torch.Tensor]:
        _measure.clamp_(grads, lo, hi, self.foreach)
        return grads

    def outside(self, grads: list[torch.Tensor], lo: float | None, hi: float | None) -> torch.Tensor:
        return _measure.outside(grads, lo, hi)

    def norms(self, grads: list[torch.Tensor], p: float) -> torch.Tensor:
        return _measure.norms_in_order(grads, p, self.foreach, self.acc, self.fast)
