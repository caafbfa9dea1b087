"""Per-example clipping and the DP-SGD aggregate for JAX, bit-identical to optax's.

:func:`per_example_clip` clips each example's gradient (a tree whose leaves carry a leading
batch axis, as ``jax.vmap(jax.grad(loss))`` returns) and sums them; :func:`private_aggregate`
adds the Gaussian noise of DP-SGD and averages, as an optax transformation. Both spell out the
same operations, in the same order, as ``optax.per_example_global_norm_clip``,
``optax.per_example_layer_norm_clip`` and ``optax.contrib.differentially_private_aggregate``
(optax 0.2.8), so their results are equal bit for bit; what they add is argument checking that
fails with a typed error when the transformation is built or traced, never inside the step.

Non-finite examples behave as in optax: an example whose norm is NaN gets multiplier 1 (it is
*not* clipped, and its NaN reaches the sum); an Inf norm gives multiplier 0 (``C / inf``).

References:
    Abadi et al. "Deep Learning with Differential Privacy", CCS 2016 (arXiv:1607.00133).
    McMahan et al. "Learning Differentially Private Recurrent Language Models", ICLR 2018
    (arXiv:1710.06963), per-layer clipping. optax ``transforms/_clipping.py`` and
    ``contrib/_privacy.py`` (github.com/google-deepmind/optax).
"""

from __future__ import annotations

import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradclip._errors import ConfigError, InputTypeError
from gradclip._validate import choice, threshold

__all__ = ["PrivateAggregateState", "per_example_clip", "private_aggregate"]


class PrivateAggregateState(NamedTuple):
    """State of :func:`private_aggregate`: the key the next step's noise is split from."""

    rng_key: jax.Array


def per_example_clip(grads: Any, max_norm: Any, mode: str = "flat", *, uniform: bool = True) -> tuple[Any, Any]:
    """Clip every example's gradient to L2 norm ``max_norm`` and sum over the batch.

    The multiplier of example ``i`` is ``nan_to_num(min(C / n_i, 1), nan=1)``: no epsilon, so an
    example with ``n_i == C`` is left as is and not counted as clipped.

    Args:
        grads: A tree (or list) of arrays, each with the same leading batch axis ``B``.
        max_norm: ``C`` >= 0, a Python number or a JAX scalar (traced values are not checked).
            ``0`` zeroes every non-zero example; ``inf`` clips nothing.
        mode: ``"flat"`` (default) clips each example's norm over all leaves
            (``optax.per_example_global_norm_clip``); ``"per_layer"`` clips each leaf on its own
            (``optax.per_example_layer_norm_clip``).
        uniform: For ``"per_layer"``: each of the ``K`` leaves gets ``C / sqrt(K)`` if True
            (default), else ``C * sqrt(D_k / D)`` by its share of the parameters.

    Returns:
        ``(summed, num_clipped)``: the clipped gradients summed over the batch, a tree like
        ``grads`` without the batch axis, and the number of examples clipped (an int32 scalar
        for ``"flat"``; for ``"per_layer"``, a tree like ``grads`` with one count per leaf).

    Raises:
        ConfigError: an unknown ``mode``, a negative or NaN ``max_norm``, or leaves without a
            common leading batch axis.

    Example:
        >>> import jax.numpy as jnp
        >>> from gradclip.jax import per_example_clip
        >>> grads = [jnp.array([[0, 0, 0], [0, 3, 4], [4, 0, 3], [3, 4, 0]])]
        >>> per_example_clip(grads, 1.25)
        ([Array([1.75, 1.75, 1.75], dtype=float32)], Array(3, dtype=int32))
        >>> per_example_clip(grads, 1.25, mode="per_layer")
        ([Array([1.75, 1.75, 1.75], dtype=float32)], [Array(3, dtype=int32)])

    References:
        Abadi et al. 2016 (arXiv:1607.00133); McMahan et al. 2018 (arXiv:1710.06963).
    """
    choice("mode", mode, ("flat", "per_layer"))
    _check_max_norm("max_norm", max_norm)
    leaves, treedef = _check_batched(grads)
    if mode == "flat":
        return _clip_sum(grads, max_norm)
    if uniform:
        clip_norms = [max_norm * (1.0 / len(leaves)) ** 0.5 for _ in leaves]
    else:
        total = jax.tree.reduce(lambda x, g: x + g[0].size, grads, 0)
        clip_norms = [max_norm * (g[0].size / total) ** 0.5 for g in leaves]
    pairs = [_clip_sum(g, c) for g, c in zip(leaves, clip_norms)]
    return (jax.tree.unflatten(treedef, [s for s, _ in pairs]),
            jax.tree.unflatten(treedef, [n for _, n in pairs]))


def private_aggregate(l2_norm_clip: Any, noise_multiplier: Any, key: Any) -> optax.GradientTransformation:
    """DP-SGD's aggregation as an optax transformation: clip per example, sum, add noise, average.

    ``update`` takes per-example gradients (leading batch axis ``B``) and returns
    ``(sum_i clip(g_i) + N(0, (C σ)²)) / B`` per leaf; put it first in an ``optax.chain``. The
    key is split into ``1 + #leaves`` keys each step (the first is carried to the next step),
    as ``optax.contrib.differentially_private_aggregate`` does, so the same key gives the same
    noise, bit for bit. Privacy accounting is the caller's (noise multiplier, sampling rate,
    steps).

    Args:
        l2_norm_clip: ``C`` >= 0, the per-example L2 bound.
        noise_multiplier: ``σ`` >= 0; the noise's standard deviation is ``C σ``.
        key: A typed key (``jax.random.key(0)``), a raw ``jax.random.PRNGKey`` or an int seed.
            Required: reusing a key across runs reuses the noise.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`PrivateAggregateState`.

    Raises:
        ConfigError: a negative or NaN ``l2_norm_clip`` / ``noise_multiplier``, or ``key=None``.
        InputTypeError: a ``key`` that is neither a key nor an int.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gradclip.jax import private_aggregate
        >>> tx = private_aggregate(l2_norm_clip=1.0, noise_multiplier=0.0, key=0)
        >>> per_example = {"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}   # norms 5 and 0.5
        >>> updates, state = tx.update(per_example, tx.init(None))
        >>> [round(float(v), 4) for v in updates["w"]]   # ((0.6, 0.8) + (0.3, 0.4)) / 2
        [0.45, 0.6]

    References:
        Abadi et al. "Deep Learning with Differential Privacy", CCS 2016 (arXiv:1607.00133).
    """
    _check_max_norm("l2_norm_clip", l2_norm_clip)
    _check_max_norm("noise_multiplier", noise_multiplier)
    key = _canonical_key(key)
    noise_std = l2_norm_clip * noise_multiplier

    def init_fn(params: Any) -> PrivateAggregateState:
        del params
        return PrivateAggregateState(rng_key=key)

    def update_fn(updates: Any, state: PrivateAggregateState, params: Any = None):
        del params
        leaves, treedef = _check_batched(updates)
        bsize = leaves[0].shape[0]
        clipped, _ = _clip_sum(leaves, l2_norm_clip)
        new_key, *rngs = jax.random.split(state.rng_key, len(leaves) + 1)
        noised = [(g + noise_std * jax.random.normal(r, g.shape, g.dtype)) / bsize for g, r in zip(clipped, rngs)]
        return jax.tree.unflatten(treedef, noised), PrivateAggregateState(rng_key=new_key)

    return optax.GradientTransformation(init_fn, update_fn)


def _clip_sum(grads: Any, max_norm: Any) -> tuple[Any, jax.Array]:
    """optax's per-example global-norm clip, operation for operation."""
    norms = jax.vmap(_norm)(grads)
    multipliers = jnp.nan_to_num(jnp.minimum(max_norm / norms, 1.0), nan=1.0)
    num_clipped = jnp.sum(multipliers < 1.0)
    return jax.tree.map(lambda g: jnp.tensordot(multipliers, g, axes=1), grads), num_clipped


def _norm(tree: Any) -> jax.Array:
    """L2 norm of one example's tree: per-leaf sums of squares, added in leaf order from 0."""
    sums = jax.tree.map(lambda x: jnp.sum(jnp.square(x.real) + jnp.square(x.imag)), tree)
    return jnp.array(jnp.sqrt(jax.tree.reduce(operator.add, sums, initializer=0)))


def _check_batched(grads: Any) -> tuple[list[Any], Any]:
    leaves, treedef = jax.tree.flatten(grads)
    if not leaves:
        raise ConfigError("per-example gradients must hold at least one array. Received: an empty tree.")
    shapes = [jnp.shape(g) for g in leaves]
    if any(len(s) == 0 or s[0] != shapes[0][0] for s in shapes):
        raise ConfigError(f"per-example gradients need a common leading batch axis on every leaf. Received shapes "
                          f"{shapes}; compute them with jax.vmap(jax.grad(loss), in_axes=(None, 0)).")
    return leaves, treedef


def _check_max_norm(name: str, value: Any) -> None:
    if isinstance(value, jax.Array):  # possibly traced: checked by the caller
        return
    threshold(name, value)


def _canonical_key(key: Any) -> jax.Array:
    if key is None:
        raise ConfigError("key is required. Received: None. Pass jax.random.key(seed) or an int seed.")
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.ndim >= 1:
        return jax.random.wrap_key_data(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return jax.random.key(key)
    raise InputTypeError(f"key must be a jax.random.key, a jax.random.PRNGKey or an int seed. "
                         f"Received: {type(key).__name__}.")
