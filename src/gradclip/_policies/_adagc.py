"""AdaGC: per-tensor adaptive clipping thresholds from an EMA of each tensor's clipped norm.

References:
    Wang et al. "AdaGC: Improving Training Stability for Large Language Model Pretraining",
    2025 (arXiv:2502.11034).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradclip import _validate
from gradclip._errors import ConfigError
from gradclip._policies._base import Decision, DecisionForm, Measurement, Policy

__all__ = ["AdaGC"]

_INF = float("inf")


@dataclass(frozen=True)
class AdaGC(Policy):
    """Per-tensor clipping to ``lambda_rel`` times an EMA of that tensor's past clipped norms.

    Warm-up (the first ``warmup_steps`` finite steps): clip by global norm to
    ``warmup_max_norm`` (coefficient ``min(1, warmup_max_norm / (‖g‖ + eps))``) while ``γ_i``
    tracks the minimum post-clip norm of tensor ``i``. Afterwards, per tensor: when
    ``‖g_i‖ > λ·γ_i`` scale it to ``λ·γ_i`` (coefficient ``min(1, λ·γ_i / (‖g_i‖ + eps))``), then
    ``γ_i ← β·γ_i + (1 − β)·‖ĝ_i‖`` with the clipped norm ``‖ĝ_i‖``.

    The state is keyed by parameter name (``"gamma.<name>"``), so a checkpoint survives a change
    in parameter order, and a parameter first seen after the warm-up starts its ``γ`` at its
    current norm (it is not clipped that step). Non-finite steps leave the state unchanged.
    As published, ``γ_i`` is a minimum during warm-up: a tensor whose gradient is exactly zero in
    some warm-up step gets ``γ_i = 0`` and is zeroed from then on (the EMA of zeros stays zero).

    Defaults: ``lambda_rel=1.05``, ``beta=0.98`` are the paper's (Section 4); the authors' public
    patch uses ``lambda_rel=1.04``, ``beta=0.99``: pass those to reproduce it. The paper calls
    ``warmup_max_norm`` λ_abs (1.0). Deviation: the reference optimizer counts the warm-up from
    step 1 and so clips ``warmup_steps - 1`` steps globally; here the warm-up is exactly
    ``warmup_steps`` steps.

    Args:
        lambda_rel: Relative threshold λ > 0. Default 1.05.
        beta: EMA factor β in [0, 1). Default 0.98.
        warmup_steps: Steps of global clipping before per-tensor thresholds (int, 1 to 2**24). Default 100.
        warmup_max_norm: Global threshold during warm-up, >= 0. Default 1.0.
        eps: Added to norms in denominators, >= 0. Default 1e-6.

    Raises:
        ConfigError: on any hyper-parameter outside the ranges above.

    References:
        Wang et al. 2025 (arXiv:2502.11034).

    Example:
        >>> from gradclip._policies._adagc import AdaGC
        >>> AdaGC(lambda_rel=1.04, beta=0.99).spec()
        'adagc:lambda_rel=1.04,beta=0.99'
    """

    lambda_rel: float = 1.05
    beta: float = 0.98
    warmup_steps: int = 100
    warmup_max_norm: float = 1.0
    eps: float = 1e-6

    spec_name = "adagc"
    decision_form = DecisionForm("coefs", "tensor")
    spec_aliases = {"lambda": "lambda_rel", "l": "lambda_rel", "warmup": "warmup_steps"}
    state_rules = {"step": "finite,integer,nonnegative", "gamma.*": "nonnegative"}
    needs_tensor_norms = True

    def __post_init__(self) -> None:
        lam = _validate.threshold("lambda_rel", self.lambda_rel, allow_inf=False)
        beta = _validate.threshold("beta", self.beta, allow_inf=False)
        if lam == 0:
            raise ConfigError("lambda_rel must be > 0. Received: 0.0.")
        if beta >= 1:
            raise ConfigError(f"beta must be in [0, 1). Received: {beta}.")
        object.__setattr__(self, "warmup_steps", _validate.integer("warmup_steps", self.warmup_steps))
        object.__setattr__(self, "lambda_rel", lam)
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "warmup_max_norm", _validate.threshold("warmup_max_norm", self.warmup_max_norm))
        object.__setattr__(self, "eps", _validate.threshold("eps", self.eps, allow_inf=False))

    def init_state(self, like: Any, ops: Any, names: tuple[str, ...] = ()) -> dict[str, Any]:
        """``step``, and ``gamma.<name>`` per tensor: +inf until the tensor is first seen."""
        state = {"step": ops.scalar(0.0, like)}
        state.update({f"gamma.{name}": ops.scalar(_INF, like) for name in names})
        return state

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        n = m.tensor_norms
        step = state["step"]
        unseen = ops.full_like(n, _INF)
        gamma = ops.stack([state.get(f"gamma.{name}", unseen[i]) for i, name in enumerate(m.names)])
        warm = step < self.warmup_steps
        global_coef = ops.clamp(self.warmup_max_norm / (m.norm + self.eps), hi=1.0)
        new_gamma_seen = ops.where(gamma == _INF, n, gamma)  # first sight after warm-up: its own norm
        tensor_coef = ops.clamp(self.lambda_rel * new_gamma_seen / (n + self.eps), hi=1.0)
        coefs = ops.where(warm, ops.propagate_nan(global_coef, n), tensor_coef)
        clipped = n * coefs
        updated = ops.where(
            warm, ops.minimum(gamma, clipped), self.beta * new_gamma_seen + (1.0 - self.beta) * clipped
        )
        keep = m.finite
        new_state = dict(state)
        new_state["step"] = ops.where(keep, step + 1.0, step)
        for i, name in enumerate(m.names):
            new_state[f"gamma.{name}"] = ops.where(keep, updated[i], gamma[i])
        warm_threshold = ops.propagate_nan(ops.full_like(n, self.warmup_max_norm), n)
        threshold = ops.where(warm, warm_threshold, self.lambda_rel * new_gamma_seen)
        return Decision(threshold=threshold, coefs=coefs), new_state
