"""optax's own arithmetic, op for op: the policies whose JAX results are bit-identical to optax.

The generic step (:mod:`gradclip._step`) measures per-tensor norms in float32, takes the global
norm as the norm of those, and multiplies by a coefficient. optax measures in the leaves' dtype
(a bfloat16 leaf's sum of squares stays bfloat16 until it meets a float32 one), sums the leaves'
squares in tree order and divides. The two agree to an ulp or two, not bit for bit. For the
policies that name optax's semantics, this module runs optax's operations in optax's order and
dtypes instead, so that ``gradclip.jax.transform(policy)`` returns what the optax transformation
returns, bit for bit, eager or under ``jax.jit``:

============================================  =======================================
policy                                        optax twin
============================================  =======================================
``GlobalNorm(c, semantics="optax")`` (L2)     ``optax.clip_by_global_norm(c)``
``AGC(λ, eps, axis=a, semantics="optax")``    ``optax.adaptive_grad_clip(λ, eps, a)``
``BlockRMS(c)``                               ``optax.clip_by_block_rms(c)``
``Value(c)``                                  ``optax.clip(c)``: no twin needed, the
                                              generic step's ``jnp.clip`` is optax's
============================================  =======================================

BlockRMS has one meaning, optax's, so JAX always takes this path for it. AGC's exclusions are
honoured (an excluded leaf passes through, as under ``optax.masked``). Not here: sharded norms
(``axis_name``; optax measures the local shard) and the torch layout.

The statistics in the :class:`gradclip._step.Outcome` (norms, coefficient, flags) are reported
in ``acc`` (float32 by default) and come from the sums optax already made, with no second pass
over the gradients; for bfloat16 leaves they carry the precision of those sums (optax's norm).

Everything is array arithmetic with static shapes: no Python branch on a traced value.

Example:
    >>> import jax.numpy as jnp, gradclip, optax
    >>> g = [jnp.array([3.0, 4.0]), jnp.array([0.0])]
    >>> out, outcome = run(gradclip.GlobalNorm(1.0, semantics="optax"), g, None, ("a", "b"))
    >>> ref, _ = optax.clip_by_global_norm(1.0).update(g, optax.EmptyState())
    >>> all(bool((o == r).all()) for o, r in zip(out, ref)), float(outcome.norm), bool(outcome.clipped)
    (True, 5.0, True)
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from gradclip._errors import ConfigError
from gradclip._policies._agc import AGC, GRAD_FLOOR, optax_unit_axes
from gradclip._policies._base import Policy
from gradclip._policies._fixed import GlobalNorm
from gradclip._policies._rms import BlockRMS
from gradclip._step import Outcome

__all__ = ["handles", "run"]


def handles(policy: Policy, *, layout: str = "jax", axis_name: Any = None) -> bool:
    """Whether :func:`run` reproduces ``policy``'s optax twin (else use the generic step).

    Example:
        >>> import gradclip
        >>> handles(gradclip.GlobalNorm(1.0, semantics="optax")), handles(gradclip.GlobalNorm(1.0))
        (True, False)
    """
    if axis_name is not None:
        return False
    if isinstance(policy, GlobalNorm):
        return policy.semantics == "optax" and policy.norm_type == 2.0
    if isinstance(policy, AGC):
        return policy.semantics == "optax" and layout != "torch" and all(isinstance(e, str) for e in policy.exclude)
    return isinstance(policy, BlockRMS)


def run(policy: Policy, leaves: list[Any], params: list[Any] | None, names: tuple[str, ...], *,
        acc: Any = jnp.float32) -> tuple[list[Any], Outcome]:
    """Clip ``leaves`` as ``policy``'s optax twin does; return ``(new_leaves, outcome)``.

    Args:
        policy: A policy :func:`handles` accepts.
        leaves: The gradient arrays, in tree order (``None`` entries pass through).
        params: The parameter arrays in the same order (AGC only; else ignored).
        names: The leaves' names (AGC's ``exclude`` matches them).
        acc: dtype of the reported statistics. Default float32.

    Returns:
        The new leaves (optax's, bit for bit; ``None`` entries kept) and an ``Outcome`` as
        :func:`gradclip._step.run`'s with ``skipped`` False: non-finite modes other than
        ``"propagate"`` (optax's behaviour) are the caller's, applied to this result.

    Raises:
        ConfigError: ``policy`` is not one :func:`handles` accepts; AGC without ``params``; an
            AGC tensor with no optax unit rule (rank > 5 without ``axis``).
    """
    if not handles(policy):
        raise ConfigError(f"{policy!r} has no optax twin. Received: {type(policy).__name__}.")
    kept = [i for i, g in enumerate(leaves) if g is not None]
    grads = [leaves[i] for i in kept]
    if isinstance(policy, GlobalNorm):
        out, outcome = _global_norm(policy.max_norm, grads, acc)
    elif isinstance(policy, BlockRMS):
        out, outcome = _block_rms(policy.threshold, grads, acc)
    else:
        if params is None:
            raise ConfigError(f"{policy.spec()!r} compares each gradient with its parameter (AGC), so it needs "
                              "them. Received: params=None.")
        excluded = [policy.excluded(names[i]) for i in kept]
        out, outcome = _agc(policy, grads, [params[i] for i in kept], excluded, acc)
    new = list(leaves)
    for i, o in zip(kept, out):
        new[i] = o
    return new, outcome


def _tree_sum(xs: list[Any]) -> Any:
    """``optax.tree.sum``'s order: ``((0 + x0) + x1) + ...`` (``jax.tree.reduce`` with ``initializer=0``)."""
    return functools.reduce(operator.add, xs, 0)


def _square(x: Any) -> Any:
    """optax's ``_square`` in ``optax.tree.norm``."""
    return jnp.square(x.real) + jnp.square(x.imag)


def _abs_sq(x: Any) -> Any:
    """optax's ``numerics.abs_sq``."""
    return (x.conj() * x).real


def _global_norm(max_norm: float, grads: list[Any], acc: Any) -> tuple[list[Any], Outcome]:
    sums = [jnp.sum(_square(g)) for g in grads]
    g_norm = jnp.array(jnp.sqrt(_tree_sum(sums)))  # optax.tree.norm
    trigger = jnp.squeeze(g_norm < max_norm)
    out = [lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * max_norm) for t in grads]
    return out, _outcome(*_global_norm_stats(tuple(sums), g_norm, trigger, max_norm, acc), max_norm)


# The statistics are small arrays: each computation is one jitted function, so that an eager step
# compiles it once instead of dispatching (and compiling) a dozen tiny operations per leaf. Under an
# outer ``jax.jit`` they are inlined. They never feed the clipped leaves. Thresholds are traced (not
# static), so a new threshold does not compile them again.
@functools.partial(jax.jit, static_argnums=(4,))
def _global_norm_stats(sums: tuple[Any, ...], g_norm: Any, trigger: Any, max_norm: float, acc: Any) -> tuple:
    norm = g_norm.astype(acc)
    coef = jnp.where(trigger, jnp.ones((), acc), max_norm / norm)  # NaN when optax divides by a NaN norm
    tensor_norms = _stack([jnp.sqrt(s.astype(acc)) for s in sums], acc)
    return norm, norm * coef, coef, coef < 1, tensor_norms


def _block_rms(threshold: float, grads: list[Any], acc: Any) -> tuple[list[Any], Outcome]:
    out, means = [], []
    for u in grads:
        mean = jnp.mean(_abs_sq(u))
        clip_denom = jnp.maximum(1.0, jnp.sqrt(mean) / threshold)
        out.append(u / clip_denom)
        means.append(mean)
    sizes = tuple(u.size for u in grads)
    norm, clipped_norm, clipped, tensor_norms = _block_rms_stats(tuple(means), sizes, threshold, acc)
    return out, _outcome(norm, clipped_norm, None, clipped, tensor_norms, threshold)


@functools.partial(jax.jit, static_argnums=(1, 3))
def _block_rms_stats(means: tuple[Any, ...], sizes: tuple[int, ...], threshold: float, acc: Any) -> tuple:
    # an empty leaf's mean is NaN (optax divides nothing by it): report RMS 0
    rms = _stack([jnp.sqrt(m.astype(acc)) if n else jnp.zeros((), acc) for m, n in zip(means, sizes)], acc)
    coefs = 1.0 / jnp.maximum(rms / threshold, 1.0)
    tensor_norms = rms * jnp.asarray([math.sqrt(max(n, 1)) for n in sizes], acc)
    norm = jnp.sqrt(jnp.sum(jnp.square(tensor_norms)))
    return norm, jnp.sqrt(jnp.sum(jnp.square(tensor_norms * coefs))), jnp.any(coefs < 1), tensor_norms


def _agc(policy: AGC, grads: list[Any], params: list[Any], excluded: list[bool],
         acc: Any) -> tuple[list[Any], Outcome]:
    out, squares, after, hits = [], [], [], []
    for g, w, skip in zip(grads, params, excluded):
        if skip:
            out.append(g)
            squares.append(jnp.sum(_abs_sq(g)).astype(acc))
            after.append(squares[-1])
            continue
        axes = optax_unit_axes(tuple(g.shape), policy.axis)
        # optax.unitwise_norm, then adaptive_grad_clip and unitwise_clip, op for op
        sq_g = jnp.sum(_abs_sq(g), axis=axes, keepdims=True)
        sq_w = jnp.sum(_abs_sq(w), axis=axes, keepdims=True)
        g_norm = jnp.broadcast_to(jnp.sqrt(sq_g), g.shape)
        p_norm = jnp.broadcast_to(jnp.sqrt(sq_w), w.shape)
        max_norm = policy.clip_factor * jnp.maximum(p_norm, policy.eps)
        clipped_grad = g * (max_norm / jnp.maximum(g_norm, GRAD_FLOOR))
        out.append(jnp.where(g_norm < max_norm, g, clipped_grad))
        before, scaled, hit = _agc_unit_stats(sq_g, sq_w, policy.clip_factor, policy.eps, acc)
        squares.append(before)
        after.append(scaled)
        hits.append(hit)
    norm, clipped_norm, clipped, tensor_norms = _agc_stats(tuple(squares), tuple(after), tuple(hits), acc)
    return out, _outcome(norm, clipped_norm, None, clipped, tensor_norms, policy.clip_factor)


@functools.partial(jax.jit, static_argnums=(4,))
def _agc_unit_stats(sq_g: Any, sq_w: Any, clip_factor: float, eps: float, acc: Any) -> tuple:
    """Per leaf: the squared norm before and after clipping, and whether a unit was scaled down."""
    unit = jnp.sqrt(sq_g.astype(acc))
    limit = clip_factor * jnp.maximum(jnp.sqrt(sq_w.astype(acc)), eps)
    coef = jnp.where(unit < limit, jnp.ones((), acc), limit / jnp.maximum(unit, GRAD_FLOOR))
    return jnp.sum(sq_g.astype(acc)), jnp.sum(jnp.square(unit * coef)), jnp.any(coef < 1)


@functools.partial(jax.jit, static_argnums=(3,))
def _agc_stats(squares: tuple, after: tuple, hits: tuple, acc: Any) -> tuple:
    before = _stack(squares, acc)
    clipped = jnp.any(jnp.stack(hits)) if hits else jnp.zeros((), bool)
    return jnp.sqrt(jnp.sum(before)), jnp.sqrt(jnp.sum(_stack(after, acc))), clipped, jnp.sqrt(before)


def _stack(xs: list[Any], acc: Any) -> Any:
    return jnp.stack(xs) if xs else jnp.zeros((0,), acc)


def _outcome(norm: Any, clipped_norm: Any, coef: Any, clipped: Any, tensor_norms: Any,
             threshold: float) -> Outcome:
    false = jnp.zeros((), bool)
    return Outcome(norm=norm, clipped_norm=clipped_norm, coef=coef, clipped=clipped, nonfinite=~jnp.isfinite(norm),
                   skipped=false, threshold=threshold, tensor_norms=tensor_norms)

