"""``transform``: any gradclip policy as an optax ``GradientTransformationExtraArgs``.

``update`` measures, decides and applies with :func:`gradclip._step.run` over
:class:`gradclip.jax._ops.JaxOps` (layout ``"jax"``: kernels are ``[..., in, out]``): array
arithmetic only, no Python branch on a traced value, no host callback. What can be checked
without values is checked when the transformation is built (the policy spec, the options), at
``init`` (non-float leaves) or when ``update`` is traced (a tree that is not the one ``init``
saw, AGC without ``params``): never inside the compiled step.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradclip import _step, _validate
from gradclip._apply import decision_form, reports_coef
from gradclip._errors import (
    ConfigError,
    NonFiniteError,
    Offender,
    nonfinite_message,
)
from gradclip._policies import Policy
from gradclip._policies._base import DecisionForm
from gradclip._policies._agc import names_only
from gradclip._spec import parse_policy
from gradclip.jax import _checks as checks
from gradclip.jax._ops import ops_for
from gradclip.jax._state import ClipState, LeafInfo, StepStats, register_flax

__all__ = ["clip_leaves", "clip_tree", "init_state", "to_stats", "transform"]

#: optax's message for a transformation that needs ``params`` (``optax._src.base.NO_PARAMS_MSG``).
NO_PARAMS_MSG = ("You are using a transformation that requires the current value of parameters, but you are not "
                 "passing `params` when calling `update`.")


def transform(policy: Policy | str, *, nonfinite: str = "propagate", norm_dtype: Any = None, axis_name: Any = None,
              history: int = _step.HISTORY_CAPACITY) -> optax.GradientTransformationExtraArgs:
    """Clip updates with any gradclip policy, as an optax transformation (jit-, scan- and vmap-safe).

    Put it first in an ``optax.chain``: ``optax.chain(gradclip.jax.transform("zclip"),
    optax.adam(1e-3))``. ``init(params)`` builds the whole state (fixed shapes); ``update``
    measures the global and per-leaf norms (in float32 whatever the leaves' dtype, float64 when a
    leaf is float64 under ``jax_enable_x64``), lets the policy decide, scales the updates, and
    stores the policy state and the step's statistics in the state: read them with
    :func:`gradclip.jax.stats`. Leaves are named by their path
    (``jax.tree_util.keystr(path, simple=True, separator=".")``: ``"params.Dense_0.kernel"``,
    ``"layers.0.weight"`` for an equinox model); ``None`` leaves (equinox filters) are skipped.

    Distributed use. Under ``jax.jit`` with sharded ``jax.Array``\\ s (``NamedSharding``) nothing
    is needed: norms are global. Inside ``shard_map`` (or ``pmap``) where each device holds a
    *disjoint shard of every leaf* (parameters sharded over the axis), pass ``axis_name``: each
    leaf's norm is then the norm of the whole leaf (``psum`` of the local p-th powers, ``pmax``
    for ``p = inf``) and every device decides the same. Do **not** pass it for data parallelism
    where every device holds the full, averaged gradients (``lax.pmean`` first): those are
    replicated and a ``psum`` would count them once per device. AGC with ``axis_name`` assumes
    the unit (output) axis is not the sharded one.

    Non-finite updates. ``"propagate"`` (default) applies the policy anyway: NaN spreads as in
    ``torch.nn.utils.clip_grad_norm_``. ``"skip"`` outputs zeros and reports ``skipped``; the
    optimizers after this transformation still take a step on those zeros (Adam's moments decay,
    its count advances): for a true skip wrap the optimizer with :func:`gradclip.jax.guard`.
    ``"zero"`` outputs zeros and reports ``clipped``. ``"error"`` raises
    :class:`gradclip.NonFiniteError` naming the leaves, in eager calls only: raising needs the
    value on the host, which a traced step (``jit``, ``vmap``, ``scan``) cannot do, so tracing
    ``update`` with ``"error"`` raises :class:`gradclip.ConfigError` saying so. In every mode a
    non-finite step leaves the policy's state unchanged.

    AutoClip's history. ``AutoClip(window=None)`` keeps every norm in torch; a JAX state needs a
    fixed shape, so here it keeps the last ``history`` norms (exact until then), with the
    percentile taken as NumPy does. Without ``jax_enable_x64`` that arithmetic is float32 (in
    torch float64): thresholds agree with ``numpy.percentile`` to float32 rounding.

    Args:
        policy: A :class:`gradclip.Policy` or a spec string (``"zclip"``, ``"spikeguard+norm:1.0"``).
        nonfinite: ``"propagate"``, ``"skip"``, ``"zero"`` or ``"error"``, as above.
        norm_dtype: dtype to accumulate norms in (``jnp.float32`` or ``jnp.float64``; default:
            float32, float64 when a leaf is float64). The policy state takes this dtype.
        axis_name: Mapped axis name(s) the leaves are sharded over, inside ``shard_map``/``pmap``.
        history: Norms an unbounded ``AutoClip`` history keeps (default 10,000).

    Returns:
        An ``optax.GradientTransformationExtraArgs``; ``update(updates, state, params=None,
        **extra_args)`` accepts extra arguments such as ``loss=`` (a policy that declares
        ``needs_loss`` requires it; the others ignore it).

    Raises:
        ConfigError: an invalid policy or option (here); at ``update``, AGC without ``params``,
            a tree other than ``init``'s, or ``"error"`` in a traced step.
        InputTypeError: at ``init``, a leaf that is not a float array.

    References:
        Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks",
        ICML 2013 (arXiv:1211.5063).

    Example:
        >>> import jax, jax.numpy as jnp, optax, gradclip, gradclip.jax as gjax
        >>> tx = optax.chain(gjax.transform(gradclip.GlobalNorm(1.0)), optax.sgd(0.1))
        >>> params = {"w": jnp.ones(3)}
        >>> state = tx.init(params)
        >>> updates, state = jax.jit(tx.update)({"w": jnp.array([3.0, 4.0, 0.0])}, state)
        >>> stats = gjax.stats(state)
        >>> round(float(stats.norm), 4), round(float(stats.clipped_norm), 4), bool(stats.clipped)
        (5.0, 1.0, True)
    """
    policy = _step.fixed_shape(parse_policy(policy), _validate.integer("history", history))
    names_only(policy, "gradclip.jax.transform")
    mode = _validate.choice("nonfinite", nonfinite, _validate.NONFINITE_MODES)
    acc = checks.norm_dtype(norm_dtype)
    checks.check_axis(policy, axis_name)

    def init(params: Any) -> ClipState:
        return init_state(policy, mode, acc, params, "gradclip.jax.transform")

    def update(updates: Any, state: ClipState, params: Any = None, **extra_args: Any) -> tuple[Any, ClipState]:
        checks.check_loss(policy, extra_args)  # loss=... (read by no policy yet), and whatever optax passes along
        out, new_state, _ = clip_tree(updates, state, params, axis_name)
        return out, new_state

    return optax.GradientTransformationExtraArgs(init, update)


def init_state(policy: Policy, mode: str, acc: Any, params: Any, what: str) -> ClipState:
    """The full state for ``params``: policy state, zero statistics, count 0, static info."""
    register_flax()
    leaves, names, _ = checks.leaves_of(params, "params")
    if acc is None:
        acc = jnp.float64 if any(leaf.dtype == jnp.float64 for leaf in leaves) else jnp.float32
    acc = jnp.dtype(acc)
    if acc == jnp.float64 and not jax.config.jax_enable_x64:
        raise ConfigError(f"{what}: norm_dtype=float64 needs jax_enable_x64 (jax.config.update('jax_enable_x64', "
                          "True)). Received: float64 without it.")
    ops = ops_for(acc)
    like = jnp.zeros((), acc)
    pstate = {k: jnp.asarray(v) for k, v in policy.init_state(like, ops, names).items()}
    info = LeafInfo(policy=policy, names=names, shapes=tuple(tuple(leaf.shape) for leaf in leaves), acc=acc.name,
                    nonfinite=mode)
    threshold = _threshold_kind(decision_form(policy))  # declared: nothing is run to learn the shapes
    n = len(leaves)
    zero = jnp.zeros((), acc)
    false = jnp.zeros((), bool)
    stats = StepStats(norm=zero, clipped_norm=zero, coef=zero,
                      threshold=jnp.zeros({"pair": (2,), "array": (n,)}.get(threshold, ()), acc),
                      clipped=false, skipped=false, nonfinite=false, first_nonfinite=jnp.full((), -1, jnp.int32),
                      tensor_norms=jnp.zeros((n,), acc))
    info = dataclasses.replace(info, coef=reports_coef(policy), threshold=threshold)
    return ClipState(policy=pstate, stats=stats, count=jnp.zeros((), jnp.int32), info=info)


def _threshold_kind(form: DecisionForm) -> str:
    """How :class:`StepStats` holds the threshold: ``"none"``, ``"scalar"``, ``"pair"`` or ``"array"``."""
    if form.threshold == "fixed":
        return "pair" if isinstance(form.fixed, tuple) else "scalar"
    return {"tensor": "array"}.get(form.threshold, form.threshold)


def clip_tree(updates: Any, state: ClipState, params: Any, axis_name: Any, *,
              unskip: bool = False) -> tuple[Any, ClipState, Any]:
    """One step on a tree: ``(new_updates, new_state, policy_skip)`` (see :func:`clip_leaves`)."""
    info = checks.check_state(state)
    leaves, names, treedef = checks.leaves_of(updates, "updates")
    checks.check_tree(info, names, leaves, axis_name)
    params_leaves = None
    if info.policy.needs_unit_norms:
        if params is None:
            raise ConfigError(f"{NO_PARAMS_MSG} {checks.spec(info.policy)!r} compares each update with its parameter's "
                              "values (AGC): call update(updates, state, params). Received: params=None.")
        try:
            params_leaves = treedef.flatten_up_to(params)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"params must have the structure of the updates. Received: {e}") from None
        variable = checks.variable_type()
        if variable is not None:
            params_leaves = [p.get_value() if isinstance(p, variable) else p for p in params_leaves]
    if info.nonfinite == "error" and any(isinstance(x, jax.core.Tracer) for x in leaves):
        raise ConfigError(
            "nonfinite='error' reads the norm on the host to decide whether to raise, which a traced step "
            "(jax.jit, vmap, scan) cannot do. Received: a traced update. Use nonfinite='skip' with "
            "gradclip.jax.guard (the step is skipped; gradclip.jax.stats(opt_state) names the non-finite leaves), "
            "or call update eagerly."
        )
    out, outcome, pstate, skip = clip_leaves(info, leaves, params_leaves, state.policy, axis_name, unskip=unskip)
    if info.nonfinite == "error" and bool(outcome.nonfinite):  # eager only (checked above)
        found = tuple(Offender(info.names[i], int(i), tuple(leaves[i].shape), int(jnp.isnan(leaves[i]).sum()),
                               int(jnp.isinf(leaves[i]).sum()))
                      for i in np.flatnonzero(~np.isfinite(np.asarray(outcome.tensor_norms))))
        norm = float(outcome.norm)
        raise NonFiniteError(nonfinite_message(norm, info.policy.measure_norm_type, found), found, norm)
    stats = to_stats(outcome, jnp.dtype(info.acc), len(leaves))
    new = ClipState(policy=pstate, stats=stats, count=state.count + 1, info=info)
    return jax.tree_util.tree_unflatten(treedef, out), new, skip


def clip_leaves(info: LeafInfo, leaves: list[Any], params: list[Any] | None, pstate: dict[str, Any], axis_name: Any,
                *, unskip: bool = False) -> tuple[list[Any], _step.Outcome, dict[str, Any], Any]:
    """Measure, decide, apply on a list of leaves; ``(out, outcome, new_policy_state, policy_skip)``.

    With ``unskip`` (a guard, which may give up) the policy's own skip flag is not applied: it is
    returned (``None`` when the policy decides none), ``out``/``outcome`` are the clipped, unskipped
    step, and a non-finite step skipped under ``"skip"`` keeps its gradients as received. Otherwise
    ``policy_skip`` is ``None`` and a skipped step outputs zeros.
    """
    acc = jnp.dtype(info.acc)
    if not leaves:
        zero = jnp.zeros((), acc)
        false = jnp.zeros((), bool)
        empty = _step.Outcome(norm=zero, clipped_norm=zero, coef=None, clipped=false, nonfinite=false, skipped=false,
                              threshold=None, tensor_norms=jnp.zeros((0,), acc))
        return [], empty, pstate, None
    ops = ops_for(acc, axis_name)
    mode = "skip" if info.nonfinite == "error" else info.nonfinite
    exact = _exact_module()
    if exact is not None and axis_name is None and exact.handles(info.policy, axis_name=axis_name):
        out, outcome = exact.run(info.policy, leaves, params, info.names, acc=acc)
        out, outcome = _step.refuse_nonfinite(leaves, out, outcome, mode, ops)
        new_state, skip = pstate, None
    else:
        policy = _Unskipped(info.policy) if unskip and info.policy.can_skip else info.policy
        out, outcome, new_state = _step.run(policy, list(leaves), pstate, ops, names=info.names, params=params,
                                            nonfinite=mode, layout="jax")
        skip = policy.skip if isinstance(policy, _Unskipped) else None
        if skip is not None and policy.bare:  # folding the skip would have made a factor: 1 when applied
            outcome = dataclasses.replace(outcome, coef=jnp.ones_like(outcome.norm))
    if mode == "skip" and not unskip:  # the gradients of a skipped non-finite step would reach the optimizer
        out = [jnp.where(outcome.skipped, jnp.zeros_like(o), o) for o in out]
    return out, outcome, _same_layout(pstate, new_state, info), skip


class _Unskipped:
    """The policy, with the skip flag of its decision handed to the caller instead of applied."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self.skip: Any = None
        self.bare = False  # the decision had no factor (a skip flag alone)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def decide(self, m: Any, state: dict[str, Any], ops: Any) -> tuple[Any, dict[str, Any]]:
        decision, new_state = self._policy.decide(m, state, ops)
        self.skip = decision.skip
        self.bare = decision.kind == "none"
        return dataclasses.replace(decision, skip=None), new_state


def _same_layout(old: dict[str, Any], new: dict[str, Any], info: LeafInfo) -> dict[str, Any]:
    """The new policy state with the old one's keys, shapes and dtypes (a scan carry must not change)."""
    _step.check_state(info.policy, old, new)
    return {k: jnp.asarray(new[k]).astype(old[k].dtype) for k in old}


def to_stats(outcome: _step.Outcome, acc: Any, n: int) -> StepStats:
    """The outcome as fixed-shape arrays: NaN for an undefined coefficient or threshold."""
    nan = jnp.full((), jnp.nan, acc)
    threshold = outcome.threshold
    if threshold is None:
        threshold = nan
    elif isinstance(threshold, tuple):
        lo, hi = threshold
        threshold = jnp.array([-jnp.inf if lo is None else lo, jnp.inf if hi is None else hi], acc)
    tn = jnp.asarray(outcome.tensor_norms, acc) if n else jnp.zeros((0,), acc)
    bad = ~jnp.isfinite(tn)
    first = jnp.where(jnp.any(bad), jnp.argmax(bad), -1) if n else jnp.asarray(-1)
    return StepStats(
        norm=jnp.asarray(outcome.norm, acc),
        clipped_norm=jnp.asarray(outcome.clipped_norm, acc),
        coef=nan if outcome.coef is None else jnp.asarray(outcome.coef, acc),
        threshold=jnp.asarray(threshold, acc),
        clipped=jnp.asarray(outcome.clipped, bool),
        skipped=jnp.asarray(outcome.skipped, bool),
        nonfinite=jnp.asarray(outcome.nonfinite, bool),
        first_nonfinite=first.astype(jnp.int32),
        tensor_norms=tn,
    )


_EXACT: list[Any] = []


def _exact_module() -> Any:
    """``gradclip.jax._exact`` (the optax-exact twins), or ``None`` before it exists."""
    if not _EXACT:
        try:
            _EXACT.append(importlib.import_module("gradclip.jax._exact"))
        except ImportError:
            _EXACT.append(None)
    return _EXACT[0]
