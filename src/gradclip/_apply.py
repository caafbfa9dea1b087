"""The "apply" step, in one place: what a :class:`Decision` does to the gradients, and its form.

A policy's :class:`Decision` carries exactly one kind of action (:attr:`Decision.kind`): one
global factor, a factor per tensor, factors per unit, a clamp, or nothing, and may carry a skip
flag besides. :func:`apply` is the only code that branches on that kind. Both the functional step
(:mod:`gradclip._step`: Keras, TensorFlow, JAX, NumPy) and the torch ``Clipper`` call it; they
differ only in the :class:`GradOps` that acts on the gradient tensors: new arrays
(:class:`FunctionalGrads`, built from a backend's :class:`gradclip._ops.StepOps`), or the same
tensors changed in place with foreach kernels (``gradclip.torch._ops.TorchGradOps``).

:func:`decision_form` says, without running the policy, which kind its decisions have and what
its threshold is (:class:`gradclip.policy.DecisionForm`), so that an adapter can make its
variables before the first step. A policy declares it in ``Policy.decision_form``; the built-in
policies that do not are listed here, and a chain's form follows from its members'.

Example:
    >>> import numpy as np
    >>> from gradclip._ops import NumpyOps
    >>> from gradclip._policies import Decision, Measurement
    >>> grads = [np.array([3.0, 4.0], np.float32)]
    >>> m = Measurement(norm=np.float32(5.0), tensor_norms=np.array([5.0], np.float32), finite=np.True_)
    >>> out, outcome = apply(Decision(threshold=1.0, coef=np.float32(0.2)), grads, m, NumpyOps, norm_type=2.0)
    >>> out[0].tolist(), float(outcome.clipped_norm), bool(outcome.clipped)
    ([0.6000000238418579, 0.800000011920929], 1.0, True)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from gradclip._errors import ConfigError
from gradclip._policies._base import Decision, DecisionForm, Measurement, Policy

__all__ = ["FunctionalGrads", "GradOps", "Outcome", "apply", "decision_form", "foldable", "remeasured",
           "reports_coef"]


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


@runtime_checkable
class GradOps(Protocol):
    """What :func:`apply` does to a list of gradient tensors.

    Each method returns the gradients after the change: new arrays (functional backends), or
    the same tensors changed in place (torch). The flags and norms are 0-d or 1-D arrays of the
    backend; nothing is read on the host, except where a backend documents a free read (torch on
    the CPU).
    """

    def scale(self, grads: list[Any], coef: Any) -> list[Any]: ...
    def scale_each(self, grads: list[Any], coefs: Any) -> list[Any]: ...
    def scale_units(self, grads: list[Any], coefs: list[Any]) -> list[Any]: ...
    def clamp(self, grads: list[Any], lo: float | None, hi: float | None) -> list[Any]: ...
    def outside(self, grads: list[Any], lo: float | None, hi: float | None) -> Any: ...
    def norms(self, grads: list[Any], p: float) -> Any: ...


class FunctionalGrads:
    """:class:`GradOps` from a backend's :class:`gradclip._ops.StepOps`: every method returns new arrays."""

    def __init__(self, ops: Any) -> None:
        self.ops = ops

    def scale(self, grads: list[Any], coef: Any) -> list[Any]:
        return [self.ops.mul(g, coef) for g in grads]

    def scale_each(self, grads: list[Any], coefs: Any) -> list[Any]:
        return [self.ops.mul(g, coefs[i]) for i, g in enumerate(grads)]

    def scale_units(self, grads: list[Any], coefs: list[Any]) -> list[Any]:
        return [g if c is None else self.ops.mul(g, c) for g, c in zip(grads, coefs)]

    def clamp(self, grads: list[Any], lo: float | None, hi: float | None) -> list[Any]:
        return [self.ops.clip(g, lo, hi) for g in grads]

    def outside(self, grads: list[Any], lo: float | None, hi: float | None) -> Any:
        """0-d bool: some element lies outside ``[lo, hi]`` (NaN is not outside)."""
        ops = self.ops
        hits = [ops.any(g < lo) for g in grads if lo is not None] + [ops.any(g > hi) for g in grads if hi is not None]
        return ops.any(ops.stack(hits))

    def norms(self, grads: list[Any], p: float) -> Any:
        acc = self.ops.acc_dtype(grads)
        return self.ops.stack([self.ops.tensor_norm(g, p, acc) for g in grads])


# -- applying a decision --------------------------------------------------------------------------
#: A kind's action: ``(decision, grads, measurement, ops, grad_ops, p, apply_coef)`` ->
#: ``(grads, coef, clipped, clipped_norm)`` (``clipped`` None: False).
_Action = Callable[[Decision, list, Measurement, Any, GradOps, float, bool], tuple[list, Any, Any, Any]]


def apply(d: Decision, grads: list[Any], m: Measurement, ops: Any, *, norm_type: float,
          grad_ops: GradOps | None = None, apply_coef: bool = True) -> tuple[list[Any], Outcome]:
    """Apply a decision to the gradients; return ``(grads, outcome)``.

    A skip flag is folded into the factors (0 when skipping), so skipping reads nothing on the
    host; a clamp, which has no factor, is followed by a multiply with it. The clipped norm is
    derived from the measurement where the action allows (global, per-tensor and unit factors)
    and measured again after a clamp.

    Args:
        d: The policy's decision.
        grads: The gradients the decision was made on.
        m: Their measurement.
        ops: The backend's array operations (:class:`gradclip._ops.PolicyOps`; the functional
            step's :class:`gradclip._ops.StepOps` when ``grad_ops`` is not given).
        norm_type: Order of the norms (``policy.measure_norm_type``).
        grad_ops: What acts on the gradient tensors; default :class:`FunctionalGrads` of ``ops``.
        apply_coef: When False, one global factor is reported in ``outcome.coef`` but not applied
            (the torch fused-optimizer path multiplies inside its kernel). Other kinds are applied.

    Returns:
        The gradients after the decision, and an :class:`Outcome` of arrays.
    """
    grad_ops = FunctionalGrads(ops) if grad_ops is None else grad_ops
    false = ops.false_like(m.norm)
    skipped = false if d.skip is None else d.skip
    if d.skip is not None:
        d = _fold_skip(d, m.norm, ops)
    grads, coef, clipped, clipped_norm = _ACTIONS[d.kind](d, grads, m, ops, grad_ops, norm_type, apply_coef)
    clipped = false if clipped is None else clipped  # None: nothing was clipped
    return grads, Outcome(norm=m.norm, clipped_norm=clipped_norm, coef=coef, clipped=clipped | skipped,
                          nonfinite=~m.finite, skipped=skipped, threshold=d.threshold, tensor_norms=m.tensor_norms)


def _fold_skip(d: Decision, norm: Any, ops: Any) -> Decision:
    """Fold the skip flag into the decision's factors (0 when skipping), without a host read.

    A clamp has no factor: :func:`_clamp` multiplies the clamped gradients by the flag itself.
    A decision with no action becomes the global factor 0 or 1.
    """
    keep = ops.as_dtype_of(~d.skip, norm)
    kind = d.kind
    if kind == "coefs":
        return dataclasses.replace(d, coefs=d.coefs * keep)
    if kind == "units":
        return dataclasses.replace(d, unit_coefs=[keep if c is None else c * keep for c in d.unit_coefs])
    if kind == "clamp":
        return d
    return dataclasses.replace(d, coef=keep if d.coef is None else d.coef * keep)


def _coef(d: Decision, grads: list, m: Measurement, ops: Any, on: GradOps, p: float, apply_coef: bool) -> tuple:
    if apply_coef:
        grads = on.scale(grads, d.coef)
    return grads, d.coef, d.coef < 1, m.norm * d.coef


def _coefs(d: Decision, grads: list, m: Measurement, ops: Any, on: GradOps, p: float, apply_coef: bool) -> tuple:
    grads = on.scale_each(grads, d.coefs)
    return grads, None, ops.any(d.coefs < 1), ops.vector_norm(m.tensor_norms * d.coefs, p)


def _units(d: Decision, grads: list, m: Measurement, ops: Any, on: GradOps, p: float, apply_coef: bool) -> tuple:
    """Scale each unit; the clipped (L2) norm and flag come from the unit norms, not a new pass."""
    grads = on.scale_units(grads, d.unit_coefs)
    squares, hits = [], []
    for i, c in enumerate(d.unit_coefs):
        if c is None:
            squares.append(m.tensor_norms[i] * m.tensor_norms[i])
            continue
        scaled = m.unit_norms[i] * c
        squares.append(ops.sum(scaled * scaled))
        hits.append(ops.any(c < 1))
    clipped = ops.any(ops.stack(hits)) if hits else ops.false_like(m.norm)
    return grads, None, clipped, ops.sqrt(ops.sum(ops.stack(squares)))


def _clamp(d: Decision, grads: list, m: Measurement, ops: Any, on: GradOps, p: float, apply_coef: bool) -> tuple:
    lo, hi = d.clamp
    clipped = on.outside(grads, lo, hi)  # before clamping: in place, the originals are gone after
    grads = on.clamp(grads, lo, hi)
    if d.skip is not None:  # a clamp has no factor to fold the skip into
        grads = on.scale(grads, ops.as_dtype_of(~d.skip, m.norm))
    return grads, None, clipped, ops.vector_norm(on.norms(grads, p), p)


def _none(d: Decision, grads: list, m: Measurement, ops: Any, on: GradOps, p: float, apply_coef: bool) -> tuple:
    return grads, None, None, m.norm


_ACTIONS: dict[str, _Action] = {"coef": _coef, "coefs": _coefs, "units": _units, "clamp": _clamp, "none": _none}


def foldable(d: Decision) -> bool:
    """Whether the decision is one global factor, into which a skip can fold (a fused kernel's ``found_inf``)."""
    return d.kind == "coef"


def remeasured(d: Decision, *, local_tensor_norms: bool) -> bool:
    """Whether, on sharded gradients, the clipped norm must be measured again after :func:`apply`.

    A clamp changes elements, unit factors come from local unit norms, and per-tensor factors
    from per-tensor norms that are local when the caller shards plain tensors by hand
    (``local_tensor_norms``): then the norm derived from the measurement is this rank's, not the
    global one. One global factor scales the global norm exactly.
    """
    kind = d.kind
    return kind in ("clamp", "units") or (kind == "coefs" and local_tensor_norms)


# -- the declared form of a policy's decisions ----------------------------------------------------
def decision_form(policy: Policy) -> DecisionForm:
    """The :class:`gradclip.policy.DecisionForm` of a policy's decisions, without running it.

    ``policy.decision_form``: every built-in policy declares it (a chain composes its members'),
    and a new policy must, to run in the adapters that size their variables before the first step.

    Raises:
        ConfigError: a policy that declares no form (a new policy must set ``decision_form``).

    Example:
        >>> import gradclip
        >>> decision_form(gradclip.AutoClip(scope="tensor"))
        DecisionForm(kind='coefs', threshold='tensor', fixed=None)
        >>> decision_form(gradclip.chain(gradclip.ZClip(), gradclip.GlobalNorm(2.0)))
        DecisionForm(kind='coef', threshold='fixed', fixed=2.0)
    """
    declared = policy.decision_form
    if declared is not None:
        return declared
    raise ConfigError(
        f"{type(policy).__name__} does not declare the form of its decisions, which this adapter needs to make its "
        "variables before the first step. Set decision_form = gradclip.policy.DecisionForm(kind=..., threshold=...) "
        f"on the class (kind: coef, coefs, units, clamp or none). Received: decision_form=None on {policy!r}."
    )


def reports_coef(policy: Policy) -> bool:
    """Whether the policy's applied decisions report one global factor (``ClipStats.coef``).

    A global factor does, and so does a skip flag alone (it folds into the factor 0 or 1).
    """
    kind = decision_form(policy).kind
    return kind == "coef" or (kind == "none" and policy.can_skip)
