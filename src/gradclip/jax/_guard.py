"""``guard``: clip, and truly skip a step: the inner optimizer's state is left untouched.

Modelled on ``optax.apply_if_finite``, for every reason to skip: a non-finite update under
``nonfinite="skip"``, or a policy that skips spikes (``SpikeGuard``, ``ZClip(skip_on_spike=True)``).
Giving up is explicit: ``max_consecutive`` bounds the skips in a row, the state counts them, and
:func:`gradclip.jax.stats` reports the counters.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from gradclip import _step, _validate
from gradclip._policies import Policy
from gradclip._policies._agc import names_only
from gradclip._spec import parse_policy
from gradclip.jax import _checks as checks
from gradclip.jax._state import GuardState
from gradclip.jax._transform import clip_tree, init_state

__all__ = ["clipped", "guard"]


def guard(inner: optax.GradientTransformation, policy: Policy | str, *, nonfinite: str = "skip",
          max_consecutive: int | None = None, norm_dtype: Any = None, axis_name: Any = None,
          history: int = _step.HISTORY_CAPACITY) -> optax.GradientTransformationExtraArgs:
    """Clip the updates with ``policy``, then run ``inner``, except on skipped steps.

    A step is skipped when its updates hold NaN/Inf under ``nonfinite="skip"`` (the default
    here), or when the policy skips it (``SpikeGuard``, ``ZClip(skip_on_spike=True)``). A
    skipped step outputs zero updates and leaves ``inner``'s state exactly as it was (Adam's
    moments and step count), as if the step had not happened; the clipping policy's own state
    follows the policy's rule (a non-finite step never changes it). Zeroed updates
    (``nonfinite="zero"``) are not a skip: ``inner`` steps on them.

    Giving up. With ``max_consecutive=N``, after N skipped steps in a row the next step that would
    be skipped is applied anyway: the policy's clipped update for a spike, the updates as received
    for a non-finite step (NaN reaches ``inner``, as with ``optax.apply_if_finite``). That step
    counts as a give-up and the count of consecutive skips starts again. ``None`` (default) never
    gives up. The state (:class:`gradclip.jax.GuardState`) counts ``consecutive_skips``,
    ``total_skips`` and ``give_ups``; :func:`gradclip.jax.stats` returns them as attributes.

    Under ``jax.jit`` the inner update runs in a ``lax.cond`` branch (computed only when applied);
    under ``jax.vmap`` both branches run and one is selected per batch element.

    ``clipped`` is the same function (``gradclip.jax.clipped is gradclip.jax.guard``): the name
    the torch and Keras adapters give their optimizer wrapper; ``guard`` is optax's vocabulary.

    Args:
        inner: The optimizer (any optax transformation).
        policy: A :class:`gradclip.Policy` or spec string (``"none"`` to skip non-finite steps only).
        nonfinite: As in :func:`gradclip.jax.transform`; default ``"skip"``.
        max_consecutive: Skips in a row before giving up (int >= 0), or ``None`` (never).
        norm_dtype, axis_name, history: As in :func:`gradclip.jax.transform`.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` whose state is a :class:`gradclip.jax.GuardState`.

    Raises:
        ConfigError: an invalid policy or option; at ``update``, as :func:`gradclip.jax.transform`.

    References:
        OLMo Team. "2 OLMo 2 Furious", 2024 (arXiv:2501.00656): skipping spiking updates.

    Example:
        >>> import jax.numpy as jnp, optax, gradclip.jax as gjax
        >>> tx = gjax.guard(optax.adam(0.1), "norm:1.0")
        >>> params = {"w": jnp.ones(2)}
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
        >>> updates["w"].tolist(), int(state.inner[0].count), gjax.stats(state).total_skips
        ([0.0, 0.0], 0, 1)
    """
    policy = _step.fixed_shape(parse_policy(policy), _validate.integer("history", history))
    names_only(policy, "gradclip.jax.guard")
    mode = _validate.choice("nonfinite", nonfinite, _validate.NONFINITE_MODES)
    limit = _validate.integer("max_consecutive", max_consecutive, minimum=0, maximum=None, allow_none=True)
    acc = checks.norm_dtype(norm_dtype)
    checks.check_axis(policy, axis_name)
    inner = optax.with_extra_args_support(inner)

    def init(params: Any) -> GuardState:
        zero = jnp.zeros((), jnp.int32)
        return GuardState(clip=init_state(policy, mode, acc, params, "gradclip.jax.guard"), inner=inner.init(params),
                          consecutive_skips=zero, total_skips=zero, give_ups=zero, gave_up=jnp.zeros((), bool))

    def update(updates: Any, state: GuardState, params: Any = None, **extra_args: Any) -> tuple[Any, GuardState]:
        checks.check_loss(policy, extra_args)
        out, clip, policy_skip = clip_tree(updates, state.clip, params, axis_name, unskip=True)
        stats = clip.stats
        skip = stats.skipped if policy_skip is None else stats.skipped | policy_skip
        give_up = jnp.zeros((), bool) if limit is None else skip & (state.consecutive_skips >= limit)
        skipped = skip & ~give_up
        if policy_skip is not None:  # a spike held back reads as in every adapter: factor 0, norm 0, clipped
            held = policy_skip & ~give_up
            zero = jnp.zeros_like(stats.norm)
            stats = stats._replace(clipped_norm=jnp.where(held, zero, stats.clipped_norm), clipped=stats.clipped | held,
                                   coef=jnp.where(held, zero, stats.coef) if clip.info.coef else stats.coef)
        stats = stats._replace(skipped=skipped)

        def apply(_: Any) -> tuple[Any, Any]:
            return inner.update(out, state.inner, params, **extra_args)

        shapes = jax.eval_shape(apply, None)

        def hold(_: Any) -> tuple[Any, Any]:
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[0]), state.inner

        if _same_types(shapes[1], jax.eval_shape(lambda: state.inner)):  # the inner step runs only when applied
            new_updates, inner_state = lax.cond(skipped, hold, apply, None)
        else:  # an inner state whose types change in a step (weak types): compute both, select
            new_updates, inner_state = jax.tree.map(lambda a, b: jnp.where(skipped, a, b), hold(None), apply(None))
        one = jnp.ones((), jnp.int32)
        return new_updates, GuardState(
            clip=clip._replace(stats=stats), inner=inner_state,
            consecutive_skips=jnp.where(skipped, state.consecutive_skips + one, 0),
            total_skips=state.total_skips + skipped.astype(jnp.int32),
            give_ups=state.give_ups + give_up.astype(jnp.int32), gave_up=give_up,
        )

    return optax.GradientTransformationExtraArgs(init, update)


def _same_types(a: Any, b: Any) -> bool:
    """Same tree, shapes, dtypes and weak types (what ``lax.cond`` needs of its two branches)."""
    key = lambda s: (s.shape, s.dtype, getattr(s, "weak_type", False))
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        key(x) == key(y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


#: The cross-adapter name of the optimizer wrapper (``gradclip.torch.clipped``, Keras): the same function.
clipped = guard
