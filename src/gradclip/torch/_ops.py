"""Policy operations on torch tensors: tensor arithmetic only, no host sync."""

from __future__ import annotations

from typing import Any

import torch


class TorchOps:
    """The :mod:`gradclip._ops` interface for torch tensors (0-d or 1-D, on any device)."""

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
