"""ZClip: clip the global norm where its z-score, against EMA statistics of past norms, spikes.

References:
    Kumar, Owen, Chowdhury, Güra. "ZClip: Adaptive Spike Mitigation for LLM Pre-Training",
    2025 (arXiv:2504.02507). Official code: github.com/bluorion-com/ZClip (``zclip/zclip.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gradclip import _validate
from gradclip._errors import ConfigError
from gradclip._policies._base import Decision, DecisionForm, Measurement, Policy
from gradclip._policies._fixed import TORCH_EPS

__all__ = ["ZClip"]

#: What a spike's norm is clipped to (see :class:`ZClip`).
MODES = ("reciprocal", "max", "mean")


@dataclass(frozen=True)
class ZClip(Policy):
    """Clip the global norm ``g`` when its z-score against an EMA of past norms exceeds ``z_thresh``.

    **Warm-up.** The first ``warmup_steps`` finite norms are collected; no statistics exist yet,
    so the adaptive rule cannot clip them and the fallback is the fixed cap ``max_norm`` (a
    global-norm clip, 1.0 by default, as in the official code, which clips to its
    ``max_grad_norm=1.0`` during warm-up). On the step that completes the warm-up, ``mu`` and
    ``sigma**2`` become the mean and the *population* variance of those norms.

    **After warm-up**, each step computes ``z = (g - mu) / (sigma + eps)``. When ``z > z_thresh``
    (a spike) the norm is clipped to ``g*``:

    - ``"reciprocal"`` (default, the paper's reciprocal clipping): ``mu + z_thresh**2 / z * sigma``
      (harder for larger spikes);
    - ``"max"``: ``mu + z_thresh * sigma`` (the package's "percentile" mode);
    - ``"mean"``: ``mu``.

    Otherwise ``g* = g``. The threshold used is ``min(g*, max_norm)`` on spikes and ``max_norm``
    otherwise, and the scale is ``threshold / (g + 1e-6)`` when ``g > threshold``, else 1 (the
    official code's coefficient; the ``1e-6`` is fixed, ``eps`` only enters ``z``). Then the
    statistics follow the *clipped* norm (``max_norm`` does not feed them, as in the official
    code): ``mu <- alpha*mu + (1-alpha)*g*`` and ``sigma**2 <- alpha*sigma**2 +
    (1-alpha)*(g* - mu)**2`` with the already updated ``mu``.

    **Reported threshold** (``ClipStats.threshold``, a 0-d array): the norm the gradients are
    clipped to if they exceed it, as above; ``inf`` when nothing can clip (warm-up or no spike,
    and no ``max_norm``).

    **Non-finite norms** (NaN/Inf) never change the state (the warm-up waits for a finite norm)
    and are never spikes; only ``max_norm`` applies to them. With ``Clipper(nonfinite="skip")``
    the policy is not even run on them.

    **Constant warm-up.** If the warm-up norms are all equal, ``sigma = 0`` and
    ``z = (g - mu) / eps``: every later norm above ``mu + z_thresh*eps`` is a spike and, in
    ``"reciprocal"`` and ``"mean"`` modes, is clipped to ``mu`` while ``sigma`` stays 0, so the
    threshold stays at ``mu`` until a norm below ``mu`` arrives (as in the official code). Zero
    gradients are ordinary norms (0): never spikes, never scaled.

    **Safe default: the cap stays.** ``max_norm=1.0`` is the official code's ``max_grad_norm``
    default, and there too it applies at every step, warm-up included: the threshold is
    ``min(adaptive, max_norm)``. The cap is what protects the warm-up steps (nothing else can
    clip them) and the steps after it whose norms are large but typical (a z-score only catches
    norms far above the recent ones, so it lets through norms of hundreds when every norm is in
    the hundreds). Norms below 1 never meet the cap. ``max_norm=None`` is the paper's rule
    alone: only spikes are clipped and the warm-up steps are not clipped at all.

    Deviations from the ``zclip`` package (v1 ``zclip/zclip.py``), on purpose:

    - ``skip_on_spike=True`` zeroes the whole update on a spike (``ClipStats.skipped`` is True:
      do not step the optimizer) *and* freezes the statistics; the package's
      ``skip_update_on_spike`` only freezes the statistics and still applies the clipped update.
    - During warm-up ``max_norm`` uses the same coefficient as afterwards
      (``max_norm / (g + 1e-6)`` only when ``g > max_norm``), where the package calls
      ``torch.nn.utils.clip_grad_norm_`` (which also scales by ``max_norm / (g + 1e-6)`` for
      ``max_norm - 1e-6 < g <= max_norm``).
    - The state lives on the gradients' device (no ``.item()``), and non-finite norms are kept
      out of it; the package reads every norm to the host and would feed a NaN into its EMA.
    - No ``clip_factor`` (its multiplier of the adaptive threshold; 1.0 by default there).

    Args:
        alpha: EMA smoothing factor, ``0 < alpha < 1``. Default 0.97.
        z_thresh: z-score above which a norm is a spike, finite and > 0. Default 2.5.
        warmup_steps: Number of finite norms collected before the statistics start, int from 1 to 2**24.
            Default 25.
        mode: ``"reciprocal"`` (default), ``"max"`` or ``"mean"``: what a spike is clipped to.
        max_norm: Fixed cap on the global norm, >= 0 (``inf`` allowed), applied at every step
            including warm-up, or ``None`` for no cap (the adaptive rule alone). Default 1.0
            (the official code's ``max_grad_norm``). Spec alias ``cap``.
        skip_on_spike: Zero the update on spikes and freeze the statistics. Default False.
        eps: Added to ``sigma`` in the z-score, finite and >= 0. Default 1e-6.

    Raises:
        ConfigError: any hyper-parameter outside the ranges above (the message says what was
            received and what is allowed).

    References:
        Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training" (arXiv:2504.02507).

    Example:
        >>> import numpy as np
        >>> from gradclip._ops import NumpyOps
        >>> from gradclip._policies import Measurement
        >>> from gradclip._policies._zclip import ZClip
        >>> policy = ZClip(alpha=0.5, z_thresh=2.0, warmup_steps=2, max_norm=None, eps=0.0)
        >>> state = policy.init_state(np.float64(0), NumpyOps)
        >>> for g in [1.0, 3.0, 6.0]:  # warm-up: mu = 2, sigma = 1; then z = 4 is a spike
        ...     d, state = policy.decide(Measurement(norm=np.float64(g)), state, NumpyOps)
        >>> float(d.threshold), round(float(d.coef), 6)  # reciprocal: 2 + 2**2 / 4 * 1 = 3
        (3.0, 0.5)
        >>> float(state["mu"]), float(state["var"])  # the EMA follows the clipped norm 3
        (2.5, 0.625)
        >>> ZClip(z_thresh=2.0, alpha=0.9).spec()
        'zclip:alpha=0.9,z_thresh=2.0'
        >>> d, _ = ZClip().decide(Measurement(norm=np.float64(300.0)), ZClip().init_state(np.float64(0), NumpyOps), NumpyOps)
        >>> float(d.threshold)  # a warm-up step: the default cap applies
        1.0
    """

    alpha: float = 0.97
    z_thresh: float = 2.5
    warmup_steps: int = 25
    mode: str = "reciprocal"
    max_norm: float | None = 1.0
    skip_on_spike: bool = False
    eps: float = 1e-6

    spec_name = "zclip"
    decision_form = DecisionForm("coef")
    spec_aliases = {
        "a": "alpha", "z": "z_thresh", "w": "warmup_steps", "warmup": "warmup_steps", "cap": "max_norm",
        "skip": "skip_on_spike",
    }
    state_rules = {"warm": "finite,nonnegative", "count": "integer,nonnegative,max=warmup_steps,with=warm",
                   "mu": "finite,nonnegative", "var": "finite,nonnegative"}

    def __post_init__(self) -> None:
        alpha = _real("alpha", self.alpha, "a number with 0 < alpha < 1")
        if not 0 < alpha < 1:
            raise ConfigError(f"alpha must satisfy 0 < alpha < 1 (EMA smoothing). Received: {alpha}.")
        z = _real("z_thresh", self.z_thresh, "a finite number > 0")
        if not (z > 0 and math.isfinite(z)):
            raise ConfigError(f"z_thresh must be a finite number > 0 (2.5 is usual). Received: {z}.")
        w = _validate.integer("warmup_steps", self.warmup_steps)
        _validate.choice("mode", self.mode, MODES)
        if not isinstance(self.skip_on_spike, bool):
            raise ConfigError(f"skip_on_spike must be True or False. Received: {self.skip_on_spike!r}.")
        if self.max_norm is not None:
            object.__setattr__(self, "max_norm", _validate.threshold("max_norm", self.max_norm))
        eps = _validate.threshold("eps", self.eps, allow_inf=False)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "z_thresh", z)
        object.__setattr__(self, "warmup_steps", int(w))
        object.__setattr__(self, "eps", eps)

    @property
    def can_skip(self) -> bool:  # type: ignore[override]
        return self.skip_on_spike

    def init_state(self, like: Any, ops: Any, names: tuple[str, ...] = ()) -> dict[str, Any]:
        """Warm-up buffer ``warm`` (``warmup_steps``,), its fill count ``count``, ``mu``, ``var``."""
        return {
            "warm": ops.filled((self.warmup_steps,), 0.0, like),
            "count": ops.filled((), 0.0, like),
            "mu": ops.filled((), 0.0, like),
            "var": ops.filled((), 0.0, like),
        }

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        g, zt, cap = m.norm, self.z_thresh, math.inf if self.max_norm is None else self.max_norm
        buf, count, mu, var = state["warm"], state["count"], state["mu"], state["var"]
        ok = ops.isfinite(g) & m.finite
        warming = count < self.warmup_steps
        # z-score step (its results are only kept after warm-up); division-free spike test
        sigma = ops.sqrt(var)
        denom = sigma + self.eps
        spike = ok & ~warming & (g - mu > zt * denom)
        z = ops.maximum((g - mu) / ops.where(denom > 0, denom, 1.0), zt)  # only read on spikes
        if self.mode == "reciprocal":
            target = mu + zt * zt / z * sigma
        elif self.mode == "max":
            target = mu + zt * sigma
        else:
            target = mu
        gstar = ops.where(spike, target, ops.where(ok, g, mu))  # no inf - inf on non-finite steps
        mu1 = self.alpha * mu + (1.0 - self.alpha) * gstar
        var1 = self.alpha * var + (1.0 - self.alpha) * (gstar - mu1) ** 2
        update = ok & ~warming & ~spike if self.skip_on_spike else ok & ~warming
        # warm-up step: store g, and on the last slot start the statistics
        take = ok & warming
        new_buf = ops.where(take & (ops.arange(self.warmup_steps, buf) == count), g, buf)
        new_count = ops.where(take, count + 1.0, count)
        start = take & (new_count >= self.warmup_steps)
        mean = ops.sum(new_buf) / self.warmup_steps
        pvar = ops.sum((new_buf - mean) ** 2) / self.warmup_steps
        new = {
            "warm": new_buf,
            "count": new_count,
            "mu": ops.where(start, mean, ops.where(update, mu1, mu)),
            "var": ops.where(start, pvar, ops.where(update, var1, var)),
        }
        threshold = ops.where(spike, ops.minimum(target, cap), ops.filled((), cap, g))
        coef = ops.where(g > threshold, threshold / (g + TORCH_EPS), 1.0)
        return Decision(threshold=threshold, coef=coef, skip=spike if self.skip_on_spike else None), new


_real = _validate.real
