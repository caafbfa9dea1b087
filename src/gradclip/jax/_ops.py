"""The :class:`gradclip._ops.Ops` of JAX arrays: NumPy's, with ``jax.numpy`` as the array module.

JAX's NumPy API is NumPy's, so :class:`JaxOps` subclasses :class:`gradclip._ops.NumpyOps`, swaps
``xp`` and overrides only what differs:

- 64-bit types exist only under ``jax_enable_x64``. Without it the index arrays are int32 and the
  "wide" float arithmetic (AutoClip's percentile) is float32; :func:`ops_for` picks the class
  when a step is traced, so ``jax.experimental.enable_x64()`` is honoured.
- Gathers with a traced index use plain indexing (``jnp.take`` fills out-of-range indices).
- Norms of order 2 are ``sqrt(sum(x * x))`` (one fused reduction; ``x ** 2.0`` is a ``pow``).
- The accumulation dtype of the norms is fixed per state (``norm_dtype``), not guessed per step.
- With ``axis_name`` (inside ``shard_map``/``pmap``), a gradient tensor's norm is the norm of
  the whole tensor whose shards the devices hold: the local p-th powers are ``psum``-ed (``pmax``
  for ``inf``), and "any" flags are or-ed across devices.

Everything traces under ``jax.jit``; nothing reads a value on the host.

Example:
    >>> import jax.numpy as jnp
    >>> ops = ops_for(jnp.float32)
    >>> float(ops.tensor_norm(jnp.array([3.0, 4.0]), 2.0, jnp.float32))
    5.0
    >>> ops.index_dtype
    <class 'jax.numpy.int32'>
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from gradclip._ops import NumpyOps

__all__ = ["JaxOps", "ops_for"]


class JaxOps(NumpyOps):
    """:class:`gradclip._ops.NumpyOps` over ``jax.numpy`` (32-bit indices, no ``axis_name``)."""

    xp = jnp
    index_dtype: Any = jnp.int32
    wide_float: Any = jnp.float32
    #: Accumulation dtype of the norms (set per state by :func:`ops_for`).
    acc: Any = jnp.float32
    #: Mapped axis name(s) the gradient tensors are sharded over, or ``None``.
    axis_name: Any = None

    @classmethod
    def vector_norm(cls, x: Any, p: float) -> Any:
        x = jnp.abs(jnp.asarray(x))
        if x.size == 0:
            return jnp.zeros((), dtype=x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else cls.wide_float)
        if p == float("inf"):
            return jnp.max(x)
        if p == 2.0:
            return jnp.sqrt(jnp.sum(x * x))
        if p == 1.0:
            return jnp.sum(x)
        return jnp.sum(x**p) ** (1.0 / p)

    @classmethod
    def take_last(cls, x: Any, index: Any) -> Any:
        return x[..., index]

    @classmethod
    def acc_dtype(cls, grads: Any) -> Any:
        return cls.acc

    @classmethod
    def tensor_norm(cls, g: Any, p: float, acc: Any) -> Any:
        x = jnp.abs(jnp.asarray(g).astype(acc).ravel())
        if cls.axis_name is None:
            return cls.vector_norm(x, p)
        if p == float("inf"):
            local = jnp.max(x, initial=0.0)
            return lax.pmax(local, cls.axis_name)
        if p == 2.0:
            return jnp.sqrt(lax.psum(jnp.sum(x * x), cls.axis_name))
        if p == 1.0:
            return lax.psum(jnp.sum(x), cls.axis_name)
        return lax.psum(jnp.sum(x**p), cls.axis_name) ** (1.0 / p)

    @classmethod
    def unit_norm(cls, x: Any, axes: tuple[int, ...] | None, acc: Any) -> Any:
        x = jnp.asarray(x).astype(acc)
        squares = jnp.sum(x * x, axis=axes, keepdims=axes is not None)
        if cls.axis_name is not None:  # the units' reduced axes are sharded; the unit axis is not
            squares = lax.psum(squares, cls.axis_name)
        return jnp.sqrt(squares)

    @classmethod
    def any(cls, x: Any) -> Any:
        flag = jnp.any(x)
        if cls.axis_name is None:
            return flag
        return lax.pmax(flag.astype(jnp.int32), cls.axis_name) > 0  # idempotent on replicated flags

    @classmethod
    def mul(cls, g: Any, factor: Any) -> Any:
        g = jnp.asarray(g)
        return g * jnp.asarray(factor).astype(g.dtype)


@functools.cache
def _ops_class(x64: bool, acc: str, axis_name: Any) -> type:
    attrs = {"acc": jnp.dtype(acc), "axis_name": axis_name}
    if x64:
        attrs.update(index_dtype=jnp.int64, wide_float=jnp.float64)
    return type("JaxOps", (JaxOps,), attrs)


def ops_for(acc: Any, axis_name: Any = None) -> type:
    """The :class:`JaxOps` class for norms accumulated in ``acc``, under the current x64 setting."""
    name = axis_name if not isinstance(axis_name, list) else tuple(axis_name)
    return _ops_class(bool(jax.config.jax_enable_x64), jnp.dtype(acc).name, name)
