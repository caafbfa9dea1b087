"""Policy and step operations on Keras tensors (``keras.ops``: any Keras backend, traceable)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops as K

__all__ = ["KerasOps", "WIDE_FLOAT", "WIDE_INT", "narrowed"]


def _x64() -> bool:
    """Whether the backend has 64-bit types (JAX only with ``jax_enable_x64``)."""
    if keras.backend.backend() != "jax":
        return True
    import jax

    return bool(jax.config.jax_enable_x64)


#: The widest types of the backend: 64-bit, or 32-bit under JAX without ``jax_enable_x64`` (then
#: AutoClip's percentile is computed in float32 and its counters are int32).
WIDE_FLOAT, WIDE_INT = ("float64", "int64") if _x64() else ("float32", "int32")


def narrowed(dtype: str) -> str:
    """``dtype`` as the backend can hold it (float64/int64 become 32-bit where 64-bit is off)."""
    return {"float64": WIDE_FLOAT, "int64": WIDE_INT}.get(dtype, dtype)


def _dtype(like: Any) -> str:
    return keras.backend.standardize_dtype(like.dtype)


class KerasOps:
    """The :mod:`gradclip._ops` interface (and the tensor methods of :mod:`gradclip._step`) in
    ``keras.ops``, so one implementation serves the TensorFlow, JAX and PyTorch backends."""

    @staticmethod
    def clamp(x: Any, lo: float | None = None, hi: float | None = None) -> Any:
        if lo is not None:
            x = K.maximum(x, lo)
        return x if hi is None else K.minimum(x, hi)

    where = staticmethod(K.where)
    minimum = staticmethod(K.minimum)
    maximum = staticmethod(K.maximum)
    sqrt = staticmethod(K.sqrt)
    isfinite = staticmethod(K.isfinite)
    floor = staticmethod(K.floor)
    zeros_like = staticmethod(K.zeros_like)

    @staticmethod
    def any(x: Any) -> Any:
        return K.any(x)

    @staticmethod
    def vector_norm(x: Any, p: float) -> Any:
        x = K.abs(x)
        if p == float("inf"):
            return K.max(x) if len(x.shape) and x.shape[0] != 0 else K.sum(x)
        if p == 2:
            return K.sqrt(K.sum(x * x))
        if p == 1:
            return K.sum(x)
        return K.power(K.sum(K.power(x, p)), 1.0 / p)

    # -- named idioms (see gradclip._ops) --
    @staticmethod
    def full_like(x: Any, value: float) -> Any:
        return K.full_like(x, value, dtype=_dtype(x))

    @staticmethod
    def false_like(x: Any) -> Any:
        return K.convert_to_tensor(False)

    @staticmethod
    def propagate_nan(y: Any, x: Any) -> Any:
        return y + (x - x)

    @staticmethod
    def arange(n: int, like: Any) -> Any:
        return K.arange(n, dtype=_dtype(like))

    @staticmethod
    def scalar(value: float, like: Any) -> Any:
        return K.convert_to_tensor(value, dtype=_dtype(like))

    @staticmethod
    def sum(x: Any) -> Any:
        return K.sum(x)

    @staticmethod
    def stack(xs: Any) -> Any:
        return K.stack(list(xs))

    @staticmethod
    def filled(shape: tuple[int, ...], value: float, like: Any) -> Any:
        return K.full(tuple(shape), value, dtype=_dtype(like))

    @staticmethod
    def index_arange(n: int, like: Any) -> Any:
        return K.arange(n, dtype=WIDE_INT)

    @staticmethod
    def index_scalar(value: int, like: Any) -> Any:
        return K.convert_to_tensor(value, dtype=WIDE_INT)

    @staticmethod
    def concat(xs: Any, axis: int = -1) -> Any:
        return K.concatenate(list(xs), axis=axis)

    @staticmethod
    def reshape(x: Any, shape: tuple[int, ...]) -> Any:
        return K.reshape(x, shape)

    @staticmethod
    def take_last(x: Any, index: Any) -> Any:
        return K.take(x, index, axis=-1)

    @staticmethod
    def searchsorted_left(rows: Any, values: Any) -> Any:
        below = K.cast(rows < K.expand_dims(K.cast(values, rows.dtype), -1), WIDE_INT)
        return K.sum(below, axis=-1)

    @staticmethod
    def as_float64(x: Any) -> Any:
        return K.cast(x, WIDE_FLOAT)

    @staticmethod
    def as_int64(x: Any) -> Any:
        return K.cast(x, WIDE_INT)

    @staticmethod
    def as_dtype_of(x: Any, like: Any) -> Any:
        return K.cast(x, _dtype(like))

    @staticmethod
    def amax(x: Any) -> Any:
        return K.max(x)

    # -- tensor-level operations of gradclip._step --
    @staticmethod
    def acc_dtype(grads: Any) -> str:
        return "float64" if any(_dtype(g) == "float64" for g in grads) else "float32"

    @staticmethod
    def tensor_norm(g: Any, p: float, acc: str) -> Any:
        return KerasOps.vector_norm(K.reshape(K.cast(g, acc), (-1,)), p)

    @staticmethod
    def unit_norm(x: Any, axes: tuple[int, ...] | None, acc: str) -> Any:
        x = K.cast(x, acc)
        return K.sqrt(K.sum(x * x, axis=axes, keepdims=axes is not None))

    @staticmethod
    def mul(g: Any, factor: Any) -> Any:
        return g * K.cast(factor, _dtype(g))

    @staticmethod
    def clip(g: Any, lo: float | None, hi: float | None) -> Any:
        return KerasOps.clamp(g, lo, hi)

    @staticmethod
    def select(cond: Any, a: Any, b: Any) -> Any:
        return K.where(cond, a, b)
