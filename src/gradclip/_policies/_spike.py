"""Spike guard: skip (or clip) a step whose gradient norm is far above the recent ones.

The rule production language-model stacks use to survive loss spikes: compare each step's global
gradient norm with the mean and standard deviation of the previous ``window`` norms and skip the
update when it is more than ``sigma`` deviations above the mean.

References:
    OLMo Team. "2 OLMo 2 Furious", 2024 (arXiv:2501.00656), Section 3: skipping updates whose
    gradient norm exceeds the rolling mean by 6 standard deviations over the last 128 steps, on
    top of clipping the global norm to 1.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradclip import _validate
from gradclip._errors import ConfigError
from gradclip._policies._base import Decision, DecisionForm, Measurement, Policy
from gradclip._policies._fixed import TORCH_EPS

__all__ = ["SpikeGuard"]


@dataclass(frozen=True)
class SpikeGuard(Policy):
    """Skip or clip steps whose global norm exceeds ``mean + sigma·std`` of the recent norms.

    With at least ``min_history`` finite past norms in the rolling window, a step is a spike when
    ``norm > mean + sigma·std`` of the window (the current norm excluded; ``std`` is the unbiased
    sample standard deviation). Every finite norm, spikes included, then enters the window, so a
    lasting change of scale is learned within ``window`` steps instead of blocking training for
    ever. Non-finite norms never enter it. The state is a ring buffer on the gradients' device;
    deciding needs no host read.

    **Safe default: a cap.** Until ``min_history`` norms are in the window nothing can be a
    spike, and afterwards only norms far above the recent ones are, so on their own the rule
    leaves the first steps, and every step of a run whose norms are all too large, untouched
    (``spikeguard,max_norm=none`` diverges at step 4 on ``gradclip compare --task regression``,
    like no clipping). So the global norm is also clipped to ``max_norm`` (1.0 by default, with
    torch's coefficient ``max_norm / (norm + 1e-6)`` when ``norm > max_norm``) at every step:
    OLMo 2's recipe, which clips to 1.0 and skips spikes. Spikes are detected on the pre-clip
    norm, and the window records pre-clip norms. ``max_norm=None`` is the skip rule alone (chain
    it with a clipper yourself: ``"spikeguard:max_norm=none+norm:1.0"``). In a chain, later
    members see the capped gradients; pass ``max_norm=None`` when they should see the raw norms
    (``"spikeguard:max_norm=none+zclip"``). Norms below ``max_norm`` never meet the cap.

    **Reported threshold**: the largest norm that passes unchanged: ``min(mean + sigma·std,
    max_norm)``, ``max_norm`` (or ``inf`` without a cap) before ``min_history`` norms.

    Args:
        window: Number of past norms kept (int, 2 to 2**24). Default 128.
        min_history: Past norms needed before any step can be a spike (2 <= min_history <=
            window). Default 64.
        sigma: How many standard deviations above the mean make a spike (> 0). Default 6.0.
        on_spike: ``"skip"`` (default: the gradients are zeroed and ``ClipStats.skipped`` is
            True; do not step the optimizer) or ``"clip"`` (clip the global norm to
            ``min(mean + sigma·std, max_norm)`` with torch's coefficient).
        max_norm: Cap on the global norm at every step, >= 0 (``inf`` allowed), or ``None`` for
            the skip rule alone. Default 1.0. Spec alias ``cap``.

    Raises:
        ConfigError: on any hyper-parameter outside the ranges above.

    References:
        OLMo Team 2024 (arXiv:2501.00656).

    Example:
        >>> import numpy as np
        >>> from gradclip._ops import NumpyOps
        >>> from gradclip._policies import Measurement
        >>> from gradclip._policies._spike import SpikeGuard
        >>> guard = SpikeGuard(window=4, min_history=3, sigma=3.0)
        >>> state = guard.init_state(np.float64(0), NumpyOps)
        >>> coefs = []
        >>> for g in [1.0, 1.1, 0.9, 50.0]:
        ...     d, state = guard.decide(Measurement(norm=np.float64(g)), state, NumpyOps)
        ...     coefs.append(round(float(d.coef), 4))
        >>> bool(d.skip), coefs  # 1.1 is capped to 1.0; 50 is a spike: skipped
        (True, [1.0, 0.9091, 1.0, 0.02])
    """

    window: int = 128
    min_history: int = 64
    sigma: float = 6.0
    on_spike: str = "skip"
    max_norm: float | None = 1.0

    spec_name = "spikeguard"
    spec_aliases = {"w": "window", "n": "min_history", "s": "sigma", "cap": "max_norm"}
    state_rules = {"norms": "finite,nonnegative", "count": "integer,nonnegative,max=window,with=norms",
                   "pos": "integer,nonnegative,below=window,with=norms"}

    def __post_init__(self) -> None:
        for name in ("window", "min_history"):
            object.__setattr__(self, name, _validate.integer(name, getattr(self, name), minimum=2))
        if self.min_history > self.window:
            raise ConfigError(
                f"min_history must be <= window. Received: min_history={self.min_history}, window={self.window}."
            )
        sigma = _validate.threshold("sigma", self.sigma, allow_inf=False)
        if sigma == 0:
            raise ConfigError("sigma must be > 0 (0 would flag every step above the mean). Received: 0.0.")
        object.__setattr__(self, "sigma", sigma)
        _validate.choice("on_spike", self.on_spike, ("skip", "clip"))
        if self.max_norm is not None:
            object.__setattr__(self, "max_norm", _validate.threshold("max_norm", self.max_norm))

    @property
    def can_skip(self) -> bool:  # type: ignore[override]
        return self.on_spike == "skip"

    @property
    def decision_form(self) -> DecisionForm:  # type: ignore[override]
        return DecisionForm("none" if self.on_spike == "skip" and self.max_norm is None else "coef")

    def init_state(self, like: Any, ops: Any, names: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"norms": ops.filled((self.window,), 0.0, like), "count": ops.scalar(0.0, like), "pos": ops.scalar(0.0, like)}

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        norms, count, pos = state["norms"], state["count"], state["pos"]
        slots = ops.arange(self.window, norms)
        stored = slots < count
        n = ops.maximum(count, 1.0)
        mean = ops.sum(ops.where(stored, norms, 0.0)) / n
        var = ops.sum(ops.where(stored, (norms - mean) ** 2, 0.0)) / ops.maximum(count - 1.0, 1.0)
        limit = mean + self.sigma * ops.sqrt(var)
        spike = (count >= self.min_history) & (m.norm > limit) & m.finite
        keep = m.finite  # record every finite norm
        new = {
            "norms": ops.where(keep & (slots == pos), m.norm, norms),
            "count": ops.where(keep, ops.minimum(count + 1.0, float(self.window)), count),
            "pos": ops.where(keep, (pos + 1.0) % self.window, pos),
        }
        cap = float("inf") if self.max_norm is None else self.max_norm
        threshold = ops.where(count >= self.min_history, ops.minimum(limit, cap), ops.filled((), cap, limit))
        if self.on_spike == "skip":
            if self.max_norm is None:
                return Decision(threshold=threshold, skip=spike), new
            coef = ops.where(m.norm > cap, cap / (m.norm + TORCH_EPS), ops.filled((), 1.0, m.norm))
            return Decision(threshold=threshold, coef=coef, skip=spike), new
        bound = ops.where(spike, ops.minimum(limit, cap), ops.filled((), cap, limit))
        one = ops.filled((), 1.0, m.norm)
        coef = ops.where(spike | (m.norm > cap), ops.clamp(bound / (m.norm + TORCH_EPS), hi=1.0), one)
        return Decision(threshold=threshold, coef=coef), new
