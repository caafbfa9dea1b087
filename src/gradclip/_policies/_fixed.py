"""Fixed-threshold policies: global norm, per-tensor norm, value, and measure-only.

References:
    Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks",
    ICML 2013 (arXiv:1211.5063): clipping the gradient norm to a threshold.
    Mikolov. "Statistical language models based on neural networks", PhD thesis, 2012:
    clipping gradient values element-wise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gradclip import _validate
from gradclip._errors import ConfigError
from gradclip._policies._base import Decision, DecisionForm, Measurement, Policy

__all__ = ["GlobalNorm", "NoClip", "PerTensorNorm", "Value"]

#: Semantics of the norm-clipping coefficient, after the framework whose numbers they reproduce.
SEMANTICS = ("torch", "tf", "keras", "optax")
TORCH_EPS = 1e-6


def norm_coef(norm: Any, max_norm: float, semantics: str, ops: Any) -> Any:
    """The scale that brings ``norm`` down to ``max_norm``, never above 1, per framework.

    - ``"torch"``: ``min(1, max_norm / (norm + 1e-6))`` (``torch.nn.utils.clip_grad_norm_``);
      ``max_norm = 0`` zeroes the gradients.
    - ``"tf"``/``"keras"``: ``max_norm * min(1/norm, 1/max_norm)``, NaN when ``norm`` is not
      finite (``tf.clip_by_global_norm``, Keras ``global_clipnorm``); no epsilon.
    - ``"optax"``: ``1`` if ``norm < max_norm`` else ``max_norm / norm`` (``optax.clip_by_global_norm``).
    """
    if semantics == "torch":
        return ops.clamp(max_norm / (norm + TORCH_EPS), hi=1.0)
    if semantics in ("tf", "keras"):
        if max_norm == 0 or math.isinf(max_norm):  # TF's formula: 1/0 raises, inf * 0 is NaN
            return ops.propagate_nan(ops.where(norm <= max_norm, ops.full_like(norm, 1.0), ops.full_like(norm, 0.0)), norm)
        return ops.propagate_nan(max_norm * ops.minimum(1.0 / norm, 1.0 / max_norm), norm)
    return ops.where(norm < max_norm, ops.full_like(norm, 1.0), max_norm / norm)


@dataclass(frozen=True)
class GlobalNorm(Policy):
    """Clip by the norm of all gradients together: ``g ← g · min(1, max_norm / ‖g‖)``.

    The direction of the whole gradient is kept. This is ``torch.nn.utils.clip_grad_norm_``,
    ``tf.clip_by_global_norm``, Keras ``global_clipnorm`` and ``optax.clip_by_global_norm``.

    Args:
        max_norm: Threshold, >= 0 (``inf`` never clips; ``0`` zeroes the gradients under
            ``semantics="torch"``). Default 1.0.
        norm_type: Order p of the norm, > 0 or ``inf``. Default 2.
        semantics: Which framework's coefficient to reproduce: ``"torch"`` (default, with its
            ``1e-6`` epsilon), ``"tf"``/``"keras"`` or ``"optax"`` (see :func:`norm_coef`).

    Raises:
        ConfigError: ``max_norm`` negative or NaN, ``norm_type`` <= 0, unknown ``semantics``.

    References:
        Pascanu, Mikolov, Bengio, ICML 2013 (arXiv:1211.5063).

    Example:
        >>> import gradclip
        >>> gradclip.GlobalNorm(1.0).spec()
        'norm:1.0'
    """

    max_norm: float = 1.0
    norm_type: float = 2.0
    semantics: str = "torch"

    spec_name = "norm"
    spec_positional = "max_norm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_norm", _validate.threshold("max_norm", self.max_norm))
        object.__setattr__(self, "norm_type", _validate.norm_type(self.norm_type))
        _validate.choice("semantics", self.semantics, SEMANTICS)

    @property
    def decision_form(self) -> DecisionForm:  # type: ignore[override]
        return DecisionForm("coef", "fixed", self.max_norm)

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        coef = norm_coef(m.norm, self.max_norm, self.semantics, ops)
        return Decision(threshold=self.max_norm, coef=coef), state


@dataclass(frozen=True)
class PerTensorNorm(Policy):
    """Clip each gradient tensor by its own norm: ``g_i ← g_i · min(1, max_norm / ‖g_i‖)``.

    Each tensor keeps its direction, but the direction of the whole gradient changes. This is
    ``tf.clip_by_norm`` applied to every tensor, and Keras' ``clipnorm`` (which is per variable,
    not global).

    Args:
        max_norm: Threshold per tensor, >= 0. Default 1.0.
        norm_type: Order p of the norm, > 0 or ``inf``. Default 2 (``tf.clip_by_norm`` is L2 only).
        semantics: ``"torch"`` (default: ``min(1, c / (n + 1e-6))``, as the global clip),
            ``"tf"``/``"keras"`` (``c / max(n, c)``, no epsilon) or ``"optax"``.

    Raises:
        ConfigError: on a negative or NaN threshold, ``norm_type`` <= 0, unknown ``semantics``.

    Example:
        >>> import gradclip
        >>> gradclip.PerTensorNorm(0.5).spec()
        'pertensor:0.5'
    """

    max_norm: float = 1.0
    norm_type: float = 2.0
    semantics: str = "torch"

    spec_name = "pertensor"
    spec_positional = "max_norm"
    needs_tensor_norms = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_norm", _validate.threshold("max_norm", self.max_norm))
        object.__setattr__(self, "norm_type", _validate.norm_type(self.norm_type))
        _validate.choice("semantics", self.semantics, SEMANTICS)

    @property
    def decision_form(self) -> DecisionForm:  # type: ignore[override]
        return DecisionForm("coefs", "fixed", self.max_norm)

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        n = m.tensor_norms
        if self.semantics in ("tf", "keras") and 0 < self.max_norm < math.inf:
            coefs = ops.propagate_nan(self.max_norm / ops.maximum(n, self.max_norm), n)
        else:
            coefs = norm_coef(n, self.max_norm, self.semantics, ops)
        return Decision(threshold=self.max_norm, coefs=coefs), state


@dataclass(frozen=True)
class Value(Policy):
    """Clamp every gradient element into ``[-clip_value, clip_value]`` (or ``[min, max]``).

    This is ``torch.nn.utils.clip_grad_value_``, ``tf.clip_by_value`` and Keras ``clipvalue``. It
    bounds each element but changes the gradient's direction.

    Args:
        clip_value: Symmetric bound, >= 0. Give either it or ``min``/``max``.
        min: Lower bound of the asymmetric form (``None``: unbounded below).
        max: Upper bound of the asymmetric form (``None``: unbounded above).

    Raises:
        ConfigError: on a negative or NaN ``clip_value``, on both forms at once, on ``min > max``.

    Example:
        >>> import gradclip
        >>> gradclip.Value(0.5).bounds
        (-0.5, 0.5)
        >>> gradclip.Value(min=-1.0, max=0.25).bounds
        (-1.0, 0.25)
    """

    clip_value: float | None = None
    min: float | None = None
    max: float | None = None

    spec_name = "value"
    spec_positional = "clip_value"

    def __post_init__(self) -> None:
        asym = self.min is not None or self.max is not None
        if self.clip_value is None and not asym:
            raise ConfigError("Value needs clip_value (symmetric) or min/max. Received neither.")
        if self.clip_value is not None and asym:
            raise ConfigError(
                f"Value takes clip_value or min/max, not both. Received clip_value={self.clip_value!r}, "
                f"min={self.min!r}, max={self.max!r}."
            )
        if self.clip_value is not None:
            object.__setattr__(self, "clip_value", _validate.threshold("clip_value", self.clip_value))
        lo, hi = _validate.bound("min", self.min), _validate.bound("max", self.max)
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"Value needs min <= max. Received min={lo}, max={hi}.")
        object.__setattr__(self, "min", lo)
        object.__setattr__(self, "max", hi)

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """The ``(lo, hi)`` clamp interval."""
        if self.clip_value is not None:
            return (-self.clip_value, self.clip_value)
        return (self.min, self.max)

    @property
    def decision_form(self) -> DecisionForm:  # type: ignore[override]
        return DecisionForm("clamp", "fixed", self.clip_value if self.clip_value is not None else self.bounds)

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        threshold = self.clip_value if self.clip_value is not None else self.bounds
        return Decision(threshold=threshold, clamp=self.bounds), state


@dataclass(frozen=True)
class NoClip(Policy):
    """Measure only: never changes the gradients. Use it to monitor, or as the baseline.

    Example:
        >>> import gradclip
        >>> gradclip.NoClip().spec()
        'none'
    """

    norm_type: float = 2.0

    spec_name = "none"
    decision_form = DecisionForm("none", "none")

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm_type", _validate.norm_type(self.norm_type))

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        return Decision(), state

