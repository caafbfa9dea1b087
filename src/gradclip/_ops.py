"""The array operations a policy and a clipping step use: the :class:`Ops` contract, and NumPy's.

Policies are written once against :class:`PolicyOps`, so the same decision code runs on NumPy
arrays, torch tensors (on their device, with no host sync), TensorFlow and Keras tensors, and JAX
arrays under ``jit``. The functional step (:mod:`gradclip._step`) also needs the tensor-level
methods of :class:`StepOps`. A backend is a class whose methods are static or class methods; the
class itself is passed as ``ops`` (no instance).

:class:`NumpyOps` is the reference. It names its array module in ``xp``, so a backend whose API is
NumPy's (``jax.numpy``) subclasses it and swaps the module, overriding only what differs.

Idioms have names here instead of being spelled in arithmetic: ``ops.full_like(x, 1.0)`` (an
array of ones shaped like ``x``, whatever ``x`` holds), ``ops.false_like(x)`` (a 0-d False on
``x``'s device) and ``ops.propagate_nan(y, x)`` (``y``, but NaN wherever ``x`` is NaN or ±inf:
how a non-finite norm reaches the coefficient under ``nonfinite="propagate"``, as in torch).

Example:
    >>> import numpy as np
    >>> from gradclip._ops import NumpyOps, Ops
    >>> isinstance(NumpyOps, Ops)
    True
    >>> NumpyOps.full_like(np.float32(np.nan), 1.0), NumpyOps.propagate_nan(np.float32(1.0), np.float32(np.nan))
    (array(1., dtype=float32), np.float32(nan))
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["NumpyOps", "Ops", "PolicyOps", "StepOps"]

Array = Any


@runtime_checkable
class PolicyOps(Protocol):
    """What :meth:`gradclip.policy.Policy.decide` and ``init_state`` may call.

    Arrays are the backend's (0-d, 1-D or 2-D small state arrays); ``like`` arguments give the
    framework, device and float dtype of a new array. Nothing here reads a value on the host.
    """

    # -- elementwise and reductions --
    def where(self, cond: Array, a: Array, b: Array) -> Array: ...
    def minimum(self, a: Array, b: Array) -> Array: ...
    def maximum(self, a: Array, b: Array) -> Array: ...
    def clamp(self, x: Array, lo: float | None = None, hi: float | None = None) -> Array: ...
    def sqrt(self, x: Array) -> Array: ...
    def floor(self, x: Array) -> Array: ...
    def isfinite(self, x: Array) -> Array: ...
    def any(self, x: Array) -> Array: ...
    def sum(self, x: Array) -> Array: ...
    def amax(self, x: Array) -> Array: ...
    def vector_norm(self, x: Array, p: float) -> Array: ...

    # -- named idioms --
    def full_like(self, x: Array, value: float) -> Array: ...
    def false_like(self, x: Array) -> Array: ...
    def propagate_nan(self, y: Array, x: Array) -> Array: ...

    # -- creating state arrays like the measured norm (same framework, device and float dtype) --
    def filled(self, shape: tuple[int, ...], value: float, like: Array) -> Array: ...
    def scalar(self, value: float, like: Array) -> Array: ...
    def arange(self, n: int, like: Array) -> Array: ...
    def index_arange(self, n: int, like: Array) -> Array: ...
    def index_scalar(self, value: int, like: Array) -> Array: ...

    # -- shapes, gathers and casts (history buffers) --
    def stack(self, xs: Any) -> Array: ...
    def concat(self, xs: Any, axis: int = -1) -> Array: ...
    def reshape(self, x: Array, shape: tuple[int, ...]) -> Array: ...
    def take_last(self, x: Array, index: Array) -> Array: ...
    def searchsorted_left(self, rows: Array, values: Array) -> Array: ...
    def as_float64(self, x: Array) -> Array: ...
    def as_int64(self, x: Array) -> Array: ...
    def as_dtype_of(self, x: Array, like: Array) -> Array: ...


@runtime_checkable
class StepOps(PolicyOps, Protocol):
    """:class:`PolicyOps` plus what a functional step does to whole gradient tensors."""

    def acc_dtype(self, grads: Any) -> Any: ...
    def tensor_norm(self, g: Array, p: float, acc: Any) -> Array: ...
    def unit_norm(self, x: Array, axes: tuple[int, ...] | None, acc: Any) -> Array: ...
    def mul(self, g: Array, factor: Array) -> Array: ...
    def clip(self, g: Array, lo: float | None, hi: float | None) -> Array: ...
    def zeros_like(self, g: Array) -> Array: ...
    def select(self, cond: Array, a: Array, b: Array) -> Array: ...


#: The full contract of a backend.
Ops = StepOps


class NumpyOps:
    """The :class:`Ops` of NumPy arrays (also accepts Python scalars); ``xp`` is the array module.

    A NumPy-like backend subclasses this and sets ``xp`` (and the dtypes it can hold):
    ``class JaxOps(NumpyOps): xp = jax.numpy``.
    """

    xp: Any = np
    #: dtypes of the integer index arrays and of the float64 arithmetic (AutoClip's percentile).
    index_dtype: Any = np.int64
    wide_float: Any = np.float64

    @classmethod
    def _float(cls, like: Any) -> Any:
        """The float dtype of ``like`` (at least float32)."""
        return cls.xp.result_type(like, cls.xp.float32)

    @classmethod
    def where(cls, cond: Array, a: Array, b: Array) -> Array:
        return cls.xp.where(cond, a, b)

    @classmethod
    def minimum(cls, a: Array, b: Array) -> Array:
        return cls.xp.minimum(a, b)

    @classmethod
    def maximum(cls, a: Array, b: Array) -> Array:
        return cls.xp.maximum(a, b)

    @classmethod
    def clamp(cls, x: Array, lo: float | None = None, hi: float | None = None) -> Array:
        return cls.xp.clip(x, lo, hi)

    @classmethod
    def sqrt(cls, x: Array) -> Array:
        return cls.xp.sqrt(x)

    @classmethod
    def floor(cls, x: Array) -> Array:
        return cls.xp.floor(x)

    @classmethod
    def isfinite(cls, x: Array) -> Array:
        return cls.xp.isfinite(x)

    @classmethod
    def any(cls, x: Array) -> Array:
        return cls.xp.any(x)

    @classmethod
    def sum(cls, x: Array) -> Array:
        return cls.xp.sum(x)

    @classmethod
    def amax(cls, x: Array) -> Array:
        return cls.xp.max(x)

    @classmethod
    def vector_norm(cls, x: Array, p: float) -> Array:
        xp = cls.xp
        x = xp.abs(xp.asarray(x))
        if x.size == 0:
            return xp.zeros((), dtype=x.dtype if xp.issubdtype(x.dtype, xp.floating) else cls.wide_float)
        if p == float("inf"):
            return xp.max(x)
        return xp.sum(x**p) ** (1.0 / p)

    # -- named idioms --
    @classmethod
    def full_like(cls, x: Array, value: float) -> Array:
        """An array shaped like ``x``, of its float dtype, holding ``value`` (NaN in ``x`` does not matter)."""
        return cls.xp.full(cls.xp.shape(x), value, dtype=cls._float(x))

    @classmethod
    def false_like(cls, x: Array) -> Array:
        """A 0-d boolean False with ``x``'s framework and device."""
        return cls.xp.zeros((), dtype=bool)

    @classmethod
    def propagate_nan(cls, y: Array, x: Array) -> Array:
        """``y`` where ``x`` is finite, NaN where it is NaN or ±inf (``y + (x - x)``)."""
        return y + (x - x)

    # -- creating state arrays --
    @classmethod
    def filled(cls, shape: tuple[int, ...], value: float, like: Array) -> Array:
        return cls.xp.full(tuple(shape), value, dtype=cls._float(like))

    @classmethod
    def scalar(cls, value: float, like: Array) -> Array:
        return cls.xp.asarray(value, dtype=cls._float(like))

    @classmethod
    def arange(cls, n: int, like: Array) -> Array:
        return cls.xp.arange(n, dtype=cls._float(like))

    @classmethod
    def index_arange(cls, n: int, like: Array) -> Array:
        return cls.xp.arange(n, dtype=cls.index_dtype)

    @classmethod
    def index_scalar(cls, value: int, like: Array) -> Array:
        return cls.xp.asarray(value, dtype=cls.index_dtype)

    # -- shapes, gathers and casts --
    @classmethod
    def stack(cls, xs: Any) -> Array:
        return cls.xp.stack(list(xs))

    @classmethod
    def concat(cls, xs: Any, axis: int = -1) -> Array:
        return cls.xp.concatenate(list(xs), axis=axis)

    @classmethod
    def reshape(cls, x: Array, shape: tuple[int, ...]) -> Array:
        return cls.xp.reshape(x, shape)

    @classmethod
    def take_last(cls, x: Array, index: Array) -> Array:
        """``x[..., index]`` for a 0-d integer array ``index``."""
        return cls.xp.take(x, index, axis=-1)

    @classmethod
    def searchsorted_left(cls, rows: Array, values: Array) -> Array:
        """Per row of ascending ``rows`` (K, L), how many entries are < ``values[k]`` (int, (K,))."""
        xp = cls.xp
        below = xp.asarray(rows) < xp.asarray(values)[..., None]
        return xp.sum(below, axis=-1).astype(cls.index_dtype)

    @classmethod
    def as_float64(cls, x: Array) -> Array:
        return cls.xp.asarray(x, dtype=cls.wide_float)

    @classmethod
    def as_int64(cls, x: Array) -> Array:
        return cls.xp.asarray(x).astype(cls.index_dtype)

    @classmethod
    def as_dtype_of(cls, x: Array, like: Array) -> Array:
        return cls.xp.asarray(x).astype(cls._float(like))

    # -- tensor-level operations of the functional step (gradclip._step) --
    @classmethod
    def acc_dtype(cls, grads: Any) -> Any:
        """Accumulation dtype of the norms: float64 when a gradient is float64, else float32."""
        wide = any(cls.xp.asarray(g).dtype == cls.xp.float64 for g in grads)
        return cls.xp.float64 if wide else cls.xp.float32

    @classmethod
    def tensor_norm(cls, g: Array, p: float, acc: Any) -> Array:
        return cls.vector_norm(cls.xp.asarray(g, dtype=acc).ravel(), p)

    @classmethod
    def unit_norm(cls, x: Array, axes: tuple[int, ...] | None, acc: Any) -> Array:
        x = cls.xp.asarray(x, dtype=acc)
        return cls.xp.sqrt(cls.xp.sum(x * x, axis=axes, keepdims=axes is not None))

    @classmethod
    def mul(cls, g: Array, factor: Array) -> Array:
        g = cls.xp.asarray(g)
        return g * cls.xp.asarray(factor, dtype=g.dtype)

    @classmethod
    def clip(cls, g: Array, lo: float | None, hi: float | None) -> Array:
        return cls.xp.clip(g, lo, hi)

    @classmethod
    def zeros_like(cls, g: Array) -> Array:
        return cls.xp.zeros_like(g)

    @classmethod
    def select(cls, cond: Array, a: Array, b: Array) -> Array:
        """``a`` where the 0-d ``cond`` is True, else ``b`` (whole arrays)."""
        return cls.xp.where(cond, a, b)
