"""Policy operations on torch tensors: tensor arithmetic only, no host sync."""

from __future__ import annotations

from typing import Any

import torch


class TorchOps:
    """The :class:`gradclip._ops.PolicyOps` of torch tensors (0-d or 1-D, on any device)."""

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
