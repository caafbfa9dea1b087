"""Policy and step operations on TensorFlow tensors (graph-safe: no Python branch on a value)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = ["TFOps"]


class TFOps:
    """The :mod:`gradclip._ops` interface (and the tensor methods of :mod:`gradclip._step`) in
    TensorFlow ops; everything traces inside ``tf.function``."""

    @staticmethod
    def clamp(x: Any, lo: float | None = None, hi: float | None = None) -> Any:
        if lo is not None:
            x = tf.maximum(x, tf.cast(lo, x.dtype))
        return x if hi is None else tf.minimum(x, tf.cast(hi, x.dtype))

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> Any:
        """``tf.where`` that lets one side be a Python number (it takes the other side's dtype)."""
        if not tf.is_tensor(a) and tf.is_tensor(b):
            a = tf.cast(a, b.dtype)
        elif not tf.is_tensor(b) and tf.is_tensor(a):
            b = tf.cast(b, a.dtype)
        return tf.where(cond, a, b)

    @staticmethod
    def minimum(a: Any, b: Any) -> Any:
        return tf.minimum(a, tf.cast(b, a.dtype))

    @staticmethod
    def maximum(a: Any, b: Any) -> Any:
        return tf.maximum(a, tf.cast(b, a.dtype))

    sqrt = staticmethod(tf.sqrt)
    isfinite = staticmethod(tf.math.is_finite)
    floor = staticmethod(tf.floor)
    zeros_like = staticmethod(tf.zeros_like)

    @staticmethod
    def any(x: Any) -> Any:
        return tf.reduce_any(x)

    @staticmethod
    def vector_norm(x: Any, p: float) -> Any:
        x = tf.abs(x)
        if p == float("inf"):
            return tf.reduce_max(tf.concat([tf.reshape(x, (-1,)), tf.zeros((1,), x.dtype)], 0))
        if p == 2:
            return tf.sqrt(tf.reduce_sum(x * x))
        if p == 1:
            return tf.reduce_sum(x)
        return tf.pow(tf.reduce_sum(tf.pow(x, p)), 1.0 / p)

    # -- named idioms (see gradclip._ops) --
    @staticmethod
    def full_like(x: Any, value: float) -> Any:
        return tf.fill(tf.shape(x), tf.constant(value, x.dtype))

    @staticmethod
    def false_like(x: Any) -> Any:
        return tf.constant(False)

    @staticmethod
    def propagate_nan(y: Any, x: Any) -> Any:
        return y + (x - x)

    @staticmethod
    def arange(n: int, like: Any) -> Any:
        return tf.range(n, dtype=like.dtype)

    @staticmethod
    def scalar(value: float, like: Any) -> Any:
        return tf.constant(value, dtype=like.dtype)

    @staticmethod
    def sum(x: Any) -> Any:
        return tf.reduce_sum(x)

    @staticmethod
    def stack(xs: Any) -> Any:
        return tf.stack(list(xs))

    @staticmethod
    def filled(shape: tuple[int, ...], value: float, like: Any) -> Any:
        return tf.fill(tuple(shape), tf.constant(value, like.dtype))

    @staticmethod
    def index_arange(n: int, like: Any) -> Any:
        return tf.range(n, dtype=tf.int64)

    @staticmethod
    def index_scalar(value: int, like: Any) -> Any:
        return tf.constant(value, dtype=tf.int64)

    @staticmethod
    def concat(xs: Any, axis: int = -1) -> Any:
        return tf.concat(list(xs), axis=axis)

    @staticmethod
    def reshape(x: Any, shape: tuple[int, ...]) -> Any:
        return tf.reshape(x, shape)

    @staticmethod
    def take_last(x: Any, index: Any) -> Any:
        return tf.gather(x, index, axis=tf.rank(x) - 1)

    @staticmethod
    def searchsorted_left(rows: Any, values: Any) -> Any:
        below = tf.cast(rows < tf.expand_dims(tf.cast(values, rows.dtype), -1), tf.int64)
        return tf.reduce_sum(below, axis=-1)

    @staticmethod
    def as_float64(x: Any) -> Any:
        return tf.cast(x, tf.float64)

    @staticmethod
    def as_int64(x: Any) -> Any:
        return tf.cast(x, tf.int64)

    @staticmethod
    def as_dtype_of(x: Any, like: Any) -> Any:
        return tf.cast(x, like.dtype)

    @staticmethod
    def amax(x: Any) -> Any:
        return tf.reduce_max(x)

    # -- tensor-level operations of gradclip._step --
    @staticmethod
    def acc_dtype(grads: Any) -> Any:
        return tf.float64 if any(g.dtype == tf.float64 for g in grads) else tf.float32

    @staticmethod
    def tensor_norm(g: Any, p: float, acc: Any) -> Any:
        return TFOps.vector_norm(tf.reshape(tf.cast(g, acc), (-1,)), p)

    @staticmethod
    def unit_norm(x: Any, axes: tuple[int, ...] | None, acc: Any) -> Any:
        x = tf.cast(tf.convert_to_tensor(x), acc)
        return tf.sqrt(tf.reduce_sum(x * x, axis=axes, keepdims=axes is not None))

    @staticmethod
    def mul(g: Any, factor: Any) -> Any:
        return g * tf.cast(factor, g.dtype)

    @staticmethod
    def clip(g: Any, lo: float | None, hi: float | None) -> Any:
        return TFOps.clamp(g, lo, hi)

    @staticmethod
    def select(cond: Any, a: Any, b: Any) -> Any:
        return tf.where(cond, a, b)
