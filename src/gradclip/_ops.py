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

    # -- state helpers: arrays created like the measured norm (same device and dtype) --
    @staticmethod
    def arange(n: int, like: Any) -> Any:
        return np.arange(n, dtype=np.result_type(like, np.float32))

    @staticmethod
    def scalar(value: float, like: Any) -> Any:
        return np.asarray(value, dtype=np.result_type(like, np.float32))

    @staticmethod
    def sum(x: Any) -> Any:
        return np.sum(x)

    @staticmethod
    def sqrt(x: Any) -> Any:
        return np.sqrt(x)

    @staticmethod
    def stack(xs: Any) -> Any:
        return np.stack(xs)

    # -- sorted/ring history buffers (AutoClip, MaxNormHistory); index arrays are int64 --
    @staticmethod
    def isfinite(x: Any) -> Any:
        return np.isfinite(x)

    @staticmethod
    def filled(shape: tuple[int, ...], value: float, like: Any) -> Any:
        return np.full(shape, value, dtype=np.result_type(like, np.float32))

    @staticmethod
    def index_arange(n: int, like: Any) -> Any:
        return np.arange(n, dtype=np.int64)

    @staticmethod
    def index_scalar(value: int, like: Any) -> Any:
        return np.asarray(value, dtype=np.int64)

    @staticmethod
    def concat(xs: Any, axis: int = -1) -> Any:
        return np.concatenate(list(xs), axis=axis)

    @staticmethod
    def reshape(x: Any, shape: tuple[int, ...]) -> Any:
        return np.reshape(x, shape)

    @staticmethod
    def take_last(x: Any, index: Any) -> Any:
        """``x[..., index]`` for a 0-d integer array ``index``."""
        return np.take(x, index, axis=-1)

    @staticmethod
    def searchsorted_left(rows: Any, values: Any) -> Any:
        """Per row of ascending ``rows`` (K, L), how many entries are < ``values[k]`` (int64, (K,))."""
        return np.sum(np.asarray(rows) < np.asarray(values)[..., None], axis=-1).astype(np.int64)

    @staticmethod
    def floor(x: Any) -> Any:
        return np.floor(x)

    @staticmethod
    def as_float64(x: Any) -> Any:
        return np.asarray(x, dtype=np.float64)

    @staticmethod
    def as_int64(x: Any) -> Any:
        return np.asarray(x).astype(np.int64)

    @staticmethod
    def as_dtype_of(x: Any, like: Any) -> Any:
        return np.asarray(x).astype(np.result_type(like, np.float32))

    @staticmethod
    def amax(x: Any) -> Any:
        return np.max(x)

    # -- tensor-level operations of the functional step (gradclip._step) --
    @staticmethod
    def acc_dtype(grads: Any) -> Any:
        """Accumulation dtype of the norms: float64 when a gradient is float64, else float32."""
        return np.float64 if any(np.asarray(g).dtype == np.float64 for g in grads) else np.float32

    @staticmethod
    def tensor_norm(g: Any, p: float, acc: Any) -> Any:
        return NumpyOps.vector_norm(np.asarray(g, dtype=acc).ravel(), p)

    @staticmethod
    def unit_norm(x: Any, axes: tuple[int, ...] | None, acc: Any) -> Any:
        x = np.asarray(x, dtype=acc)
        return np.sqrt(np.sum(x * x, axis=axes, keepdims=axes is not None))

    @staticmethod
    def mul(g: Any, factor: Any) -> Any:
        g = np.asarray(g)
        return g * np.asarray(factor, dtype=g.dtype)

    @staticmethod
    def clip(g: Any, lo: float | None, hi: float | None) -> Any:
        return np.clip(g, lo, hi)

    @staticmethod
    def zeros_like(g: Any) -> Any:
        return np.zeros_like(g)

    @staticmethod
    def select(cond: Any, a: Any, b: Any) -> Any:
        """``a`` where the 0-d ``cond`` is True, else ``b`` (whole arrays)."""
        return np.where(cond, a, b)
