"""One clipping step, written once for the functional adapters (Keras, TensorFlow, NumPy).

The torch adapter works in place with foreach kernels; the functional adapters take a list of
gradient arrays and return new ones. They share this module: measure (per-tensor norms, global
norm, unit norms), let the policy decide, apply the decision, handle non-finite gradients, and
return an :class:`Outcome` of arrays. Everything is array arithmetic with the backend's ``ops``
(no Python branch on a value), so it runs inside ``tf.function`` and under ``jax.jit``.

A backend's ``ops`` is the policy interface of :mod:`gradclip._ops` plus the tensor-level
methods ``tensor_norm``, ``unit_norm``, ``mul``, ``clip``, ``zeros_like``, ``select``, ``any``
and ``acc_dtype`` (see :class:`gradclip._ops.NumpyOps`). Applying the decision is
:func:`gradclip._apply.apply`, shared with the torch adapter.

The state and the statistics are declared, not learned by running the policy:
:func:`initial_state` gives the state with its final shapes (``Policy.init_state``) and an
:class:`Outcome` of zeros shaped like every step's (from :func:`gradclip._apply.decision_form`),
from which an adapter makes its variables before the first step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gradclip._apply import Outcome, apply, decision_form, reports_coef
from gradclip._errors import ConfigError
from gradclip._policies import Measurement, Policy
from gradclip._policies._chain import Chain
from gradclip._policies._history import AutoClip

__all__ = ["HISTORY_CAPACITY", "Outcome", "check_outcome", "check_state", "fixed_shape", "initial_state", "run"]

#: Norms an unbounded AutoClip history keeps in the functional adapters (a state array there
#: needs a fixed shape): the last 10,000 steps.
HISTORY_CAPACITY = 10_000


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
        unit = next(q for q in policy.members() if q.needs_unit_norms)  # the AGC (of a chain)
        for name, g, w in zip(names, grads, params):
            if policy.excluded(name):
                gu.append(None)
                pu.append(None)
                continue
            axes = unit.axes_for(tuple(g.shape), layout)
            gu.append(ops.unit_norm(g, axes, acc))
            pu.append(ops.unit_norm(w, axes, acc))
        units = (gu, pu)
    return Measurement(norm=norm, tensor_norms=tensor_norms, finite=ops.isfinite(norm), names=tuple(names),
                       unit_norms=units[0], param_unit_norms=units[1], sizes=_sizes(grads))


def _sizes(grads: list[Any]) -> tuple[int, ...] | None:
    """Element count of each gradient (static shapes), or ``None`` when a dimension is unknown."""
    try:
        return tuple(math.prod(int(d) for d in g.shape) for g in grads)
    except TypeError:  # a dimension of None (an unknown TF shape)
        return None


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
    out, outcome = apply(decision, grads, m, ops, norm_type=policy.measure_norm_type)
    out, outcome = refuse_nonfinite(grads, out, outcome, nonfinite, ops)
    return out, outcome, new_state


def refuse_nonfinite(grads: list[Any], out: list[Any], outcome: Outcome, nonfinite: str,
                     ops: Any) -> tuple[list[Any], Outcome]:
    """On a non-finite step, replace the applied step by the ``nonfinite`` mode's (array selects only).

    ``"propagate"`` keeps ``out``; ``"skip"`` returns the gradients as received, reported as skipped;
    ``"zero"`` returns zeros, reported as clipped with a clipped norm and ``coef`` of 0.
    """
    if nonfinite == "propagate":
        return out, outcome
    bad = outcome.nonfinite
    zero = nonfinite == "zero"
    kept = [ops.select(bad, ops.zeros_like(g) if zero else g, o) for g, o in zip(grads, out)]
    zero_norm = ops.full_like(outcome.norm, 0.0)
    return kept, dataclasses.replace(
        outcome,
        clipped_norm=ops.where(bad, zero_norm if zero else outcome.norm, outcome.clipped_norm),
        coef=ops.where(bad, zero_norm, outcome.coef) if zero and outcome.coef is not None else outcome.coef,
        clipped=ops.where(bad, zero, outcome.clipped),
        skipped=ops.where(bad, not zero, outcome.skipped),
    )


def _same_shape(a: Any, b: Any) -> bool:
    return b is not None and tuple(getattr(a, "shape", ())) == tuple(getattr(b, "shape", ()))


def initial_state(policy: Policy, shapes: list[tuple[int, ...]], names: tuple[str, ...],
                  acc_dtype: Any) -> tuple[dict[str, Any], Outcome]:
    """The policy's state with its final shapes, and an :class:`Outcome` of zeros shaped like a step's.

    Both are declared: the state is ``policy.init_state`` with :class:`gradclip._ops.NumpyOps`
    in the accumulation dtype, and the outcome follows the policy's decision form
    (:func:`gradclip._apply.decision_form`): ``coef`` is a 0-d array or ``None``; ``threshold``
    a 0-d or 1-D array, a fixed Python value (a number or ``(lo, hi)``), or ``None``. Nothing is
    run. An adapter makes its variables from them (state, and the statistics of the last step).

    Args:
        policy: The policy (with bounded histories: :func:`fixed_shape`).
        shapes: The gradients' shapes, in the order of ``names`` (the state depends on their
            number and names, not on their sizes).
        names: The gradients' names.
        acc_dtype: The dtype the norms are accumulated in (NumPy float32 or float64).

    Returns:
        ``(state, outcome)``: NumPy arrays (the outcome's flags are bool, the rest ``acc_dtype``).

    Raises:
        ConfigError: a state array with an empty dimension, which would grow at every step (an
            unbounded ``AutoClip`` history: bound it with :func:`fixed_shape`); a new policy
            that declares no decision form; ``shapes`` and ``names`` of different lengths.

    Example:
        >>> import numpy as np, gradclip
        >>> state, outcome = initial_state(gradclip.AutoClip(window=8, scope="tensor"), [(3, 2), (2,)], ("w", "b"),
        ...                                np.float32)
        >>> state["sorted"].shape, outcome.threshold.shape, outcome.coef
        ((2, 8), (2,), None)
    """
    import numpy as np

    from gradclip._ops import NumpyOps

    if len(shapes) != len(names):
        raise ConfigError(f"initial_state needs one shape per name. Received {len(shapes)} shapes for "
                          f"{len(names)} names.")
    like = np.zeros((), acc_dtype)
    state = {k: np.asarray(v) for k, v in policy.init_state(like, NumpyOps, tuple(names)).items()}
    growing = sorted(k for k, v in state.items() if 0 in v.shape)
    if growing:
        raise ConfigError(
            f"{_identity(policy)} keeps a state whose shape changes from step to step (empty so far: {growing}), "
            "which a variable cannot hold. Give it a fixed size (for AutoClip: window=N)."
        )
    form = decision_form(policy)
    n, zero, flag = len(names), np.zeros((), acc_dtype), np.zeros((), bool)
    threshold = {"scalar": zero, "tensor": np.zeros((n,), acc_dtype), "fixed": form.fixed, "none": None}[form.threshold]
    outcome = Outcome(norm=zero, clipped_norm=zero, coef=zero if reports_coef(policy) else None, clipped=flag,
                      nonfinite=flag, skipped=flag, threshold=threshold, tensor_norms=np.zeros((n,), acc_dtype))
    return state, outcome


def check_state(policy: Policy, state: dict[str, Any], new_state: dict[str, Any]) -> None:
    """Check that a step's new state fits the variables holding ``state`` (same keys, same shapes).

    Shapes are static, so this reads nothing (it runs once when a step is traced).

    Raises:
        ConfigError: a key added or dropped, or a shape changed (a state that grows, or a policy
            whose ``init_state`` does not give the final shapes).
    """
    changed = sorted(set(state) ^ set(new_state))
    changed += sorted(k for k in set(state) & set(new_state)
                      if tuple(getattr(state[k], "shape", ())) != tuple(getattr(new_state[k], "shape", ())))
    if changed:
        raise ConfigError(
            f"{_identity(policy)} keeps a state whose shape changes from step to step ({changed}), which a variable "
            "cannot hold. Give it a fixed size (for AutoClip: window=N), and make init_state(like, ops, names) return "
            "the final shapes."
        )


def check_outcome(policy: Policy, template: Outcome, outcome: Outcome) -> None:
    """Check that a step's outcome has the form :func:`initial_state` declared (``coef`` and ``threshold``).

    Shapes are static, so this reads nothing (it runs once when a step is traced).

    Raises:
        ConfigError: the policy's decision does not match its declared form (a new policy whose
            ``decision_form`` says another kind or threshold than its ``decide`` returns).
    """
    for field in ("coef", "threshold"):
        want, got = getattr(template, field), getattr(outcome, field)
        if want is None and got is None:
            continue
        if want is not None and got is not None and _fixed(want) == _fixed(got) and (
                _fixed(want) or len(getattr(want, "shape", ())) == len(getattr(got, "shape", ()))):
            continue
        raise ConfigError(
            f"{_identity(policy)} declares decision_form={decision_form(policy)}, but its decision gives "
            f"{field}={_describe(got)} where the form means {_describe(want)}. Declare the form decide() returns."
        )


def _fixed(value: Any) -> bool:
    """A threshold fixed on the Python side (a number or ``(lo, hi)``), not an array."""
    return isinstance(value, (float, int, tuple)) and not hasattr(value, "shape")


def _describe(value: Any) -> str:
    if value is None or _fixed(value):
        return repr(value)
    return f"an array of rank {len(getattr(value, 'shape', ()))}"


def _identity(policy: Policy) -> str:
    """The policy's spec string for messages, or its repr (a policy without a spec name, AGC excluding by type)."""
    try:
        spec = policy.spec()
    except ConfigError:
        return repr(policy)
    return repr(spec) if spec and not spec.startswith(":") else repr(policy)
