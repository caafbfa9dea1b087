"""gradclip for JAX: any clipping policy as an optax transformation, jit-, scan- and vmap-safe.

``transform(policy)`` is an ``optax.GradientTransformationExtraArgs``: put it first in an
``optax.chain``. Its state (:class:`ClipState`) holds the policy state and the last step's
statistics as fixed-shape arrays, so a whole training loop can run under ``jax.jit`` or
``jax.lax.scan`` with no host read; :func:`stats` reads them afterwards as a
:class:`gradclip.ClipStats` (which :class:`gradclip.Monitor` accepts). :func:`guard` (also
spelled :func:`clipped`, the wrapper's name in every adapter) clips and truly skips steps: the
inner optimizer's state is left untouched on non-finite or spiking updates.
:func:`state_dict` / :func:`load_state_dict` move the policy state to and from the torch
``Clipper``'s format.

Measure, decide, apply: the measurement and the decision are :mod:`gradclip._step` and the
policies, shared with every adapter, over :class:`gradclip.jax._ops.JaxOps`; the same policy on
the same gradients gives the torch adapter's numbers (float32 rounding aside).

Example:
    >>> import jax, jax.numpy as jnp, optax, gradclip, gradclip.jax as gjax
    >>> tx = optax.chain(gjax.transform(gradclip.ZClip(warmup_steps=3)), optax.adam(1e-2))
    >>> params = {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> def step(carry, scale):
    ...     params, state = carry
    ...     grads = jax.tree.map(lambda p: scale * jnp.ones_like(p), params)
    ...     updates, state = tx.update(grads, state, params)
    ...     return (optax.apply_updates(params, updates), state), None
    >>> (params, state), _ = jax.lax.scan(step, (params, state), jnp.array([0.1, 0.2, 0.1, 50.0]))
    >>> s = gjax.stats(state)
    >>> round(float(s.norm), 2), bool(s.clipped), s.names
    (158.11, True, ('b', 'w'))

References:
    Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks", ICML 2013
    (arXiv:1211.5063). Seetharaman et al. "AutoClip", MLSP 2020 (arXiv:2007.14469). Kumar et al.
    "ZClip", 2025 (arXiv:2504.02507). Brock et al. "High-Performance Large-Scale Image Recognition
    Without Normalization" (AGC), ICML 2021 (arXiv:2102.06171). optax ``apply_if_finite`` and
    ``clip_by_global_norm`` (github.com/google-deepmind/optax).
"""

from gradclip.jax._checkpoint import load_state_dict, state_dict
from gradclip.jax._guard import clipped, guard
from gradclip.jax._private import PrivateAggregateState, per_example_clip, private_aggregate
from gradclip.jax._read import GuardStats, stats
from gradclip.jax._state import ClipState, GuardState, LeafInfo, StepStats
from gradclip.jax._transform import transform

__all__ = [
    "ClipState",
    "GuardState",
    "GuardStats",
    "LeafInfo",
    "PrivateAggregateState",
    "StepStats",
    "clipped",
    "guard",
    "load_state_dict",
    "per_example_clip",
    "private_aggregate",
    "state_dict",
    "stats",
    "transform",
]
