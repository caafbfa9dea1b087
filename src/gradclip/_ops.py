"""The few array operations a policy's decision uses, for each backend.

Policies are written once against this small interface, so the same decision code runs on NumPy
arrays, torch tensors (on their device, with no host sync) and, later, JAX and TensorFlow arrays.
A backend is a class of static methods; the NumPy one lives here and is the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class NumpyOps:
    """Array operations on NumPy arrays (also accepts Python scalars)."""

    @staticmethod
    def clamp(x: Any, lo: float | None = None, hi: float | None = None) -> Any:
        return np.clip(x, lo, hi)

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        return np.where(cond, a, b)

    @staticmethod
    def minimum(a: Any, b: Any) -> Any:
        return np.minimum(a, b)

    @staticmethod
    def maximum(a: Any, b: Any) -> Any:
        return np.maximum(a, b)

    @staticmethod
    def any(x: Any) -> Any:
        return np.any(x)

    @staticmethod
    def vector_norm(x: Any, p: float) -> Any:
        x = np.abs(np.asarray(x))
        if x.size == 0:
            return np.zeros((), dtype=x.dtype if x.dtype.kind == "f" else np.float64)
        if np.isinf(p):
            return x.max()
        return (x**p).sum() ** (1.0 / p)
