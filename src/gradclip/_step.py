"""One clipping step, written once for the functional adapters (Keras, TensorFlow, NumPy).

The torch adapter works in place with foreach kernels; the functional adapters take a list of
gradient arrays and return new ones. They share this module: measure (per-tensor norms, global
norm, unit norms), let the policy decide, apply the decision, handle non-finite gradients, and
return an :class:`Outcome` of arrays. Everything is array arithmetic with the backend's ``ops``
(no Python branch on a value), so it runs inside ``tf.function`` and under ``jax.jit``.

A backend's ``ops`` is the policy interface of :mod:`gradclip._ops` plus the tensor-level
methods ``tensor_norm``, ``unit_norm``, ``mul``, ``clip``, ``zeros_like``, ``select``, ``any``
and ``acc_dtype`` (see :class:`gradclip._ops.NumpyOps`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gradclip._errors import ConfigError
from gradclip._policies import Decision, Measurement, Policy
from gradclip._policies._agc import unit_axes
from gradclip._policies._chain import Chain
from gradclip._policies._history import AutoClip

__all__ = ["Outcome", "fixed_shape", "fold_skip", "initial_state", "may_skip", "run"]

#: Norms an unbounded AutoClip history keeps in the functional adapters (a state array there
#: needs a fixed shape): the last 10,000 steps.
HISTORY_CAPACITY = 10_000


@dataclass(frozen=True)
class Outcome:
    """What one step measured and did, as arrays of the backend (``None`` where not defined)."""

    norm: Any
    clipped_norm: Any
    coef: Any
    clipped: Any
    nonfinite: Any
    skipped: Any
    threshold: Any
    tensor_norms: Any


def fixed_shape(policy: Policy, capacity: int = HISTORY_CAPACITY) -> Policy:
    """The policy with every unbounded history bounded to ``capacity`` norms.

    Functional adapters keep the state in fixed-shape arrays (``tf.Variable``, Keras variables,
    JAX pytrees), so ``AutoClip(window=None)``, whose history grows by one slot per step, keeps
    the last ``capacity`` norms instead (it is exact until then).

    Example:
        >>> import gradclip
        >>> fixed_shape(gradclip.AutoClip(10.0), capacity=500).window
        500
    """
    if isinstance(policy, AutoClip) and policy.window is None:
        return dataclasses.replace(policy, window=capacity)
    if isinstance(policy, Chain):
        return Chain(tuple(fixed_shape(p, capacity) for p in policy.policies))
    return policy


def measure(policy: Policy, grads: list[Any], ops: Any, *, names: tuple[str, ...],
            params: list[Any] | None = None, layout: str = "keras") -> Measurement:
    """Per-tensor norms, the global norm, finiteness and (for AGC) unit norms.

    Raises:
        ConfigError: the policy needs parameter values (AGC) and ``params`` is ``None``.
    """
    p = policy.measure_norm_type
    acc = ops.acc_dtype(grads)
    tensor_norms = ops.stack([ops.tensor_norm(g, p, acc) for g in grads])
    norm = ops.vector_norm(tensor_norms, p)
    units: tuple[Any, Any] = (None, None)
    if policy.needs_unit_norms:
        if params is None:
            raise ConfigError(
                f"{policy.spec()!r} compares each gradient with its parameter's values (AGC), so it "
                "needs them. Pass variables=... (the variables in the order of the gradients)."
            )
        gu, pu = [], []
        for name, g, w in zip(names, grads, params):
            if policy.excluded(name):
                gu.append(None)
                pu.append(None)
                continue
            axes = unit_axes(len(g.shape), layout, policy.axis)
            gu.append(ops.unit_norm(g, axes, acc))
            pu.append(ops.unit_norm(w, axes, acc))
        units = (gu, pu)
    return Measurement(norm=norm, tensor_norms=tensor_norms, finite=ops.isfinite(norm), names=tuple(names),
                       unit_norms=units[0], param_unit_norms=units[1])


def run(policy: Policy, grads: list[Any], state: dict[str, Any], ops: Any, *, names: tuple[str, ...],
        params: list[Any] | None = None, nonfinite: str = "propagate",
        layout: str = "keras") -> tuple[list[Any], Outcome, dict[str, Any]]:
    """Measure, decide and apply one step; return ``(new_grads, outcome, new_state)``.

    ``nonfinite`` as in the torch Clipper, as arrays: ``"propagate"`` applies the decision
    anyway; ``"skip"`` returns the gradients unchanged with ``skipped`` True; ``"zero"`` returns
    zeros. In every mode a non-finite step leaves the state unchanged. ``"error"`` is the
    adapter's job (raising needs a host read); here it behaves as ``"skip"``.
    """
    m = measure(policy, grads, ops, names=names, params=params, layout=layout)
    decision, new_state = policy.decide(m, state, ops)
    new_state = {k: ops.where(m.finite, v, state[k]) if _same_shape(v, state.get(k)) else v
                 for k, v in new_state.items()}
    out, outcome = _apply(decision, grads, m, policy.measure_norm_type, ops)
    if nonfinite == "propagate":
        return out, outcome, new_state
    bad = ~m.finite
    zero = nonfinite == "zero"
    kept = [ops.select(bad, ops.zeros_like(g) if zero else g, o) for g, o in zip(grads, out)]
    zero_norm = ops.full_like(m.norm, 0.0)
    outcome = dataclasses.replace(
        outcome,
        clipped_norm=ops.where(bad, zero_norm if zero else m.norm, outcome.clipped_norm),
        coef=ops.where(bad, zero_norm, outcome.coef) if zero and outcome.coef is not None else outcome.coef,
        clipped=ops.where(bad, zero, outcome.clipped),
        skipped=ops.where(bad, not zero, outcome.skipped),
    )
    return kept, outcome, new_state


def _same_shape(a: Any, b: Any) -> bool:
    return b is not None and tuple(getattr(a, "shape", ())) == tuple(getattr(b, "shape", ()))


def _apply(d: Decision, grads: list[Any], m: Measurement, p: float, ops: Any) -> tuple[list[Any], Outcome]:
    norm = m.norm
    false = ops.false_like(norm)
    if d.skip is not None:
        d = fold_skip(d, norm, ops)
    coef, clipped, clipped_norm, out = None, false, norm, list(grads)
    if d.coef is not None:
        coef = d.coef
        out = [ops.mul(g, coef) for g in grads]
        clipped, clipped_norm = coef < 1, norm * coef
    elif d.coefs is not None:
        out = [ops.mul(g, d.coefs[i]) for i, g in enumerate(grads)]
        clipped = ops.any(d.coefs < 1)
        clipped_norm = ops.vector_norm(m.tensor_norms * d.coefs, p)
    elif d.unit_coefs is not None:
        out, clipped, clipped_norm = _scale_units(grads, d.unit_coefs, m, ops)
    elif d.clamp is not None:
        lo, hi = d.clamp
        out = [ops.clip(g, lo, hi) for g in grads]
        clipped = ops.any(ops.stack([_outside(g, lo, hi, ops) for g in grads]))
        if d.skip is not None:  # a clamp has no factor to fold the skip into
            out = [ops.select(d.skip, ops.zeros_like(o), o) for o in out]
        acc = ops.acc_dtype(grads)
        clipped_norm = ops.vector_norm(ops.stack([ops.tensor_norm(o, p, acc) for o in out]), p)
    skipped = d.skip if d.skip is not None else false
    return out, Outcome(norm=norm, clipped_norm=clipped_norm, coef=coef, clipped=clipped | skipped,
                        nonfinite=~m.finite, skipped=skipped, threshold=d.threshold, tensor_norms=m.tensor_norms)


def _outside(g: Any, lo: float | None, hi: float | None, ops: Any) -> Any:
    """0-d bool: some element of ``g`` lies outside ``[lo, hi]`` (NaN is not outside)."""
    below = ops.any(g < lo) if lo is not None else None
    above = ops.any(g > hi) if hi is not None else None
    if below is None or above is None:
        return above if below is None else below
    return below | above


def fold_skip(d: Decision, norm: Any, ops: Any) -> Decision:
    """Fold a skip flag into the decision's factors (0 when skipping), without a host read.

    A clamp has no factor: the caller zeroes the clamped gradients itself.
    """
    keep = ops.as_dtype_of(~d.skip, norm)
    if d.coefs is not None:
        return dataclasses.replace(d, coefs=d.coefs * keep)
    if d.unit_coefs is not None:
        return dataclasses.replace(d, unit_coefs=[keep if c is None else c * keep for c in d.unit_coefs])
    if d.clamp is not None:
        return d
    return dataclasses.replace(d, coef=keep if d.coef is None else d.coef * keep)


def _scale_units(grads: list[Any], coefs: list[Any], m: Measurement, ops: Any) -> tuple[list[Any], Any, Any]:
    """Scale each unit; the clipped (L2) norm and flag come from the unit norms, not a new pass."""
    out, squares, hits = [], [], []
    for i, (g, c) in enumerate(zip(grads, coefs)):
        if c is None:
            out.append(g)
            squares.append(m.tensor_norms[i] * m.tensor_norms[i])
            continue
        out.append(ops.mul(g, c))
        scaled = m.unit_norms[i] * c
        squares.append(ops.sum(scaled * scaled))
        hits.append(ops.any(c < 1))
    clipped = ops.any(ops.stack(hits)) if hits else ops.false_like(m.norm)
    return out, clipped, ops.sqrt(ops.sum(ops.stack(squares)))


def initial_state(policy: Policy, shapes: list[tuple[int, ...]], names: tuple[str, ...],
                  acc_dtype: Any) -> tuple[dict[str, Any], Outcome]:
    """The policy's state with its steady-state shapes, and an outcome with the shapes a step returns.

    Decides once on a measurement flagged non-finite, with :class:`gradclip._ops.NumpyOps`: such
    a step never changes a policy's state, but it makes every array the policy creates lazily
    (per-tensor rows, per-name entries) with its "nothing seen yet" value. A second step checks
    that the shapes are stable.

    Raises:
        ConfigError: the policy's state changes shape from step to step.
    """
    import numpy as np

    from gradclip._ops import NumpyOps

    small = [(1,) * len(s) for s in shapes]  # the state depends on ranks and names, not on sizes
    ones = [np.ones(s, acc_dtype) for s in small]
    m = measure(policy, ones, NumpyOps, names=names, params=ones)
    m = dataclasses.replace(m, finite=np.False_)
    with np.errstate(all="ignore"):
        state = policy.init_state(np.asarray(1.0, acc_dtype), NumpyOps)
        _, state = policy.decide(m, state, NumpyOps)
        _, again = policy.decide(m, state, NumpyOps)
        outcome = run(policy, ones, state, NumpyOps, names=names, params=ones)[1]
    state = {k: np.asarray(v) for k, v in state.items()}
    if set(again) != set(state) or any(np.shape(again[k]) != np.shape(state[k]) for k in state):
        raise ConfigError(
            f"{policy.spec()!r} keeps a state whose shape changes from step to step, which a "
            "variable cannot hold. Give it a fixed size (for AutoClip: window=N)."
        )
    return state, outcome


def may_skip(policy: Policy, shapes: list[tuple[int, ...]], names: tuple[str, ...]) -> bool:
    """Whether the policy's decisions carry a skip flag (SpikeGuard and chains holding one)."""
    import numpy as np

    from gradclip._ops import NumpyOps

    one = np.float32(1.0)
    grads = [np.ones((1,) * len(s), np.float32) for s in shapes]
    with np.errstate(all="ignore"):
        m = measure(policy, grads, NumpyOps, names=names, params=grads)
        decision, _ = policy.decide(m, policy.init_state(one, NumpyOps), NumpyOps)
    return decision.skip is not None
