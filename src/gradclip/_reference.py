"""Float64 NumPy reference implementation of every clipping method: the test oracle.

Written straight from the formulas, independently of the policies' code, so that tests compare
two implementations rather than one with itself. Inputs are lists of arrays; outputs are new
float64 arrays (inputs are never modified).

References:
    Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks",
    ICML 2013 (arXiv:1211.5063).

Example:
    >>> import numpy as np
    >>> from gradclip import _reference as ref
    >>> out, norm = ref.clip_global_norm([np.array([3.0]), np.array([4.0])], max_norm=1.0)
    >>> float(norm), [round(float(x[0]), 6) for x in out]
    (5.0, [0.6, 0.8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TORCH_EPS = 1e-6


def _f64(grads: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(g, dtype=np.float64) for g in grads]


def tensor_norm(g: np.ndarray, p: float = 2.0) -> float:
    """The p-norm of one array viewed as a vector (``max|g|`` for p = inf; 0 for an empty array)."""
    a = np.abs(np.asarray(g, dtype=np.float64)).ravel()
    if a.size == 0:
        return 0.0
    if np.isinf(p):
        return float(a.max())
    if np.isnan(a).any():
        return float("nan")
    scale = a.max()  # scaled to avoid overflow and underflow in float64
    if scale == 0 or np.isinf(scale):
        return float(scale)
    return float(scale * np.sum((a / scale) ** p) ** (1.0 / p))


def global_norm(grads: Sequence[np.ndarray], p: float = 2.0) -> float:
    """The p-norm of all arrays together, as one vector."""
    norms = [tensor_norm(g, p) for g in grads]
    return tensor_norm(np.array(norms), p) if norms else 0.0


def coef(norm: float, max_norm: float, semantics: str = "torch") -> float:
    """The global scale factor of each framework (see ``gradclip.GlobalNorm``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if semantics == "torch":
            return float(np.minimum(1.0, max_norm / (norm + TORCH_EPS)))  # NaN stays NaN (inf/inf too)
        if semantics in ("tf", "keras"):
            if not np.isfinite(norm):
                return float("nan")
            return 1.0 if norm <= max_norm else max_norm / norm
        if semantics == "optax":
            return 1.0 if norm < max_norm else (float("nan") if norm == 0 else max_norm / norm)
    raise ValueError(f"unknown semantics {semantics!r}")


def clip_global_norm(
    grads: Sequence[np.ndarray], max_norm: float, p: float = 2.0, semantics: str = "torch"
) -> tuple[list[np.ndarray], float]:
    """Scale all arrays by one factor so that their global norm is at most ``max_norm``."""
    g = _f64(grads)
    norm = global_norm(g, p)
    c = coef(norm, max_norm, semantics)
    return [x * c for x in g], norm


def clip_tensor_norm(
    grads: Sequence[np.ndarray], max_norm: float, p: float = 2.0, semantics: str = "torch"
) -> tuple[list[np.ndarray], list[float]]:
    """Scale each array by its own factor so that its norm is at most ``max_norm``."""
    g = _f64(grads)
    norms = [tensor_norm(x, p) for x in g]
    return [x * coef(n, max_norm, semantics) for x, n in zip(g, norms)], norms


def clip_value(grads: Sequence[np.ndarray], lo: float | None, hi: float | None) -> list[np.ndarray]:
    """Clamp every element into ``[lo, hi]``; NaN stays NaN."""
    return [np.clip(x, lo, hi) for x in _f64(grads)]


def unit_norms(x: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    """L2 norm per unit over ``axes`` (kept as size-1 dims); the whole array when ``None``."""
    a = np.asarray(x, dtype=np.float64)
    if axes is None:
        return np.sqrt(np.sum(a * a))
    return np.sqrt(np.sum(a * a, axis=axes, keepdims=True))


def agc(grad: np.ndarray, param: np.ndarray, clip_factor: float, eps: float, axes: tuple[int, ...] | None) -> np.ndarray:
    """Brock et al. 2021 unit-wise AGC of one tensor, unit by unit with a plain loop."""
    g = np.asarray(grad, dtype=np.float64).copy()
    w = np.asarray(param, dtype=np.float64)
    if axes is None:
        units = [Ellipsis]
    else:
        kept = [d for d in range(g.ndim) if d not in axes]
        units = [tuple(idx[kept.index(d)] if d in kept else slice(None) for d in range(g.ndim))
                 for idx in np.ndindex(*[g.shape[d] for d in kept])]
    for u in units:
        gn = np.sqrt(np.sum(g[u] ** 2))
        wn = max(np.sqrt(np.sum(w[u] ** 2)), eps)
        if gn / wn > clip_factor:
            g[u] = g[u] * (clip_factor * wn / max(gn, 1e-6))
    return g


def block_rms(grads: Sequence[np.ndarray], threshold: float) -> tuple[list[np.ndarray], list[float]]:
    """optax ``clip_by_block_rms``: each array divided by ``max(1, rms / threshold)``; returns the RMSs.

    ``rms = sqrt(mean(g**2))``, 0 for an empty array (optax's mean of nothing is NaN, which
    divides nothing).
    """
    out, rmss = [], []
    for g in _f64(grads):
        rms = tensor_norm(g) / math.sqrt(max(g.size, 1))
        with np.errstate(invalid="ignore"):
            out.append(g / np.maximum(1.0, rms / threshold))
        rmss.append(rms)
    return out, rmss


def optax_agc(grad: np.ndarray, param: np.ndarray, clip_factor: float, eps: float,
              axes: tuple[int, ...] | None) -> np.ndarray:
    """``optax.adaptive_grad_clip`` of one tensor: units with ``‖G‖ < λ·max(‖W‖, ε)`` are kept, others scaled."""
    g = np.asarray(grad, dtype=np.float64)
    w = np.asarray(param, dtype=np.float64)
    gn = np.sqrt(np.sum(g * g, axis=axes, keepdims=True))
    limit = clip_factor * np.maximum(np.sqrt(np.sum(w * w, axis=axes, keepdims=True)), eps)
    with np.errstate(invalid="ignore"):
        return np.where(gn < limit, g, g * (limit / np.maximum(gn, 1e-6)))


def _history_coef(norm: float, threshold: float, semantics: str = "exact") -> float:
    """AutoClip/MaxNormHistory factor: ``threshold / norm`` only above the threshold (or torch's)."""
    if not np.isfinite(norm):
        return float("nan")
    if semantics == "torch":
        return float(min(1.0, threshold / (norm + TORCH_EPS)))
    return threshold / norm if norm > threshold else 1.0


def _cap(threshold: float, max_norm: float | None) -> float:
    return threshold if max_norm is None else min(threshold, float(max_norm))


def autoclip(
    norms: Sequence[float], percentile: float, window: int | None = None, semantics: str = "exact",
    max_norm: float | None = 1.0,
) -> tuple[list[float], list[float]]:
    """Seetharaman et al. 2020 AutoClip on a sequence of global norms: ``(thresholds, coefs)``.

    Each finite norm is appended to the history first; the threshold is
    ``min(numpy.percentile(history[-window:], percentile), max_norm)`` (the percentile is +inf
    while the history is empty; ``max_norm=None``: no cap, the paper's rule); non-finite norms
    are not recorded and get a NaN factor.
    """
    history: list[float] = []
    thresholds, coefs = [], []
    for n in norms:
        n = float(n)
        if np.isfinite(n):
            history.append(n)
        kept = history if window is None else history[-window:]
        thr = float(np.percentile(np.array(kept, dtype=np.float64), percentile)) if kept else float("inf")
        thr = _cap(thr, max_norm)
        thresholds.append(thr)
        coefs.append(_history_coef(n, thr, semantics))
    return thresholds, coefs


def max_norm_history(
    norms: Sequence[float], factor: float, window: int, stat: str = "mean", semantics: str = "exact",
    max_norm: float | None = 1.0,
) -> tuple[list[float], list[float]]:
    """Pascanu et al. 2013: threshold = ``factor`` × mean (or max) of the previous ``window`` finite
    norms, the current one excluded (+inf before the first), capped at ``max_norm`` (``None``: no
    cap). Returns ``(thresholds, coefs)``."""
    history: list[float] = []
    thresholds, coefs = [], []
    for n in norms:
        n = float(n)
        past = np.array(history[-window:], dtype=np.float64)
        thr = float("inf") if past.size == 0 else factor * float(past.mean() if stat == "mean" else past.max())
        thr = _cap(thr, max_norm)
        thresholds.append(thr)
        coefs.append(_history_coef(n, thr, semantics))
        if np.isfinite(n):
            history.append(n)
    return thresholds, coefs


def adagc(steps, lambda_rel, beta, warmup_steps, warmup_max_norm, eps, return_gamma=False):
    """AdaGC (Wang et al. 2025) step by step on lists of arrays; non-finite steps are skipped.

    Returns the clipped gradients of every step (and, with ``return_gamma``, the final γ).
    """
    gamma: list[float] | None = None
    t, out = 0, []
    for grads in steps:
        g = _f64(grads)
        norms = [tensor_norm(x) for x in g]
        total = tensor_norm(np.array(norms))
        if not np.isfinite(total):
            out.append(g)
            continue
        if t < warmup_steps:
            c = min(1.0, warmup_max_norm / (total + eps))
            clipped = [x * c for x in g]
            post = [n * c for n in norms]
            gamma = post if gamma is None else [min(a, b) for a, b in zip(gamma, post)]
        else:
            coefs = [min(1.0, lambda_rel * gm / (n + eps)) for gm, n in zip(gamma, norms)]
            clipped = [x * c for x, c in zip(g, coefs)]
            gamma = [beta * gm + (1 - beta) * n * c for gm, n, c in zip(gamma, norms, coefs)]
        out.append(clipped)
        t += 1
    return (out, gamma) if return_gamma else out


def zclip_trajectory(
    norms: Sequence[float],
    *,
    alpha: float = 0.97,
    z_thresh: float = 2.5,
    warmup_steps: int = 25,
    mode: str = "reciprocal",
    max_norm: float | None = 1.0,
    skip_on_spike: bool = False,
    eps: float = 1e-6,
) -> dict[str, np.ndarray]:
    """Kumar et al. 2025 ZClip over a sequence of global norms, step by step in float64.

    Warm-up: the first ``warmup_steps`` finite norms are collected (only ``max_norm`` clips,
    1.0 by default as in the policy; ``None``: nothing clips);
    then ``mu``/``var`` are their mean and population variance. Afterwards a norm with
    ``z = (g - mu) / (sqrt(var) + eps) > z_thresh`` is a spike, clipped to ``g*`` (reciprocal:
    ``mu + z_thresh**2 / z * sigma``, max: ``mu + z_thresh * sigma``, mean: ``mu``), the threshold
    is ``min(g*, max_norm)`` (``max_norm`` or inf off spikes), the coefficient is
    ``threshold / (g + 1e-6)`` when ``g > threshold`` else 1 (0 on skipped spikes), and the EMA
    is fed with ``g*`` (frozen on skipped spikes). Non-finite norms leave the state unchanged.

    Returns:
        ``{"threshold", "coef", "skipped", "spike", "mu", "var"}``: one float64 (bool) array
        entry per step; ``mu``/``var`` are the statistics after the step (NaN during warm-up).
    """
    cap = math.inf if max_norm is None else float(max_norm)
    warm: list[float] = []
    mu = var = math.nan
    out: dict[str, list] = {k: [] for k in ("threshold", "coef", "skipped", "spike", "mu", "var")}
    for g in (float(x) for x in norms):
        finite = math.isfinite(g)
        spike = False
        threshold = cap
        if finite and len(warm) >= warmup_steps:
            sigma = math.sqrt(var)
            if sigma + eps > 0:
                z = (g - mu) / (sigma + eps)
            else:
                z = math.inf if g > mu else -math.inf
            gstar = g
            if z > z_thresh:
                spike = True
                if mode == "reciprocal":
                    gstar = mu + z_thresh**2 / z * sigma
                elif mode == "max":
                    gstar = mu + z_thresh * sigma
                else:
                    gstar = mu
                threshold = min(gstar, cap)
            if not (spike and skip_on_spike):
                mu = alpha * mu + (1 - alpha) * gstar
                var = alpha * var + (1 - alpha) * (gstar - mu) ** 2
        elif finite:
            warm.append(g)
            if len(warm) == warmup_steps:
                mu = sum(warm) / warmup_steps
                var = sum((x - mu) ** 2 for x in warm) / warmup_steps
        c = threshold / (g + TORCH_EPS) if g > threshold else 1.0
        skipped = spike and skip_on_spike
        for key, value in (("threshold", threshold), ("coef", 0.0 if skipped else c), ("skipped", skipped),
                           ("spike", spike), ("mu", mu), ("var", var)):
            out[key].append(value)
    return {k: np.array(v, dtype=bool if k in ("skipped", "spike") else np.float64) for k, v in out.items()}


def spike_guard(
    norms: Sequence[float], window: int = 128, min_history: int = 64, sigma: float = 6.0,
    on_spike: str = "skip", max_norm: float | None = 1.0,
) -> dict[str, np.ndarray]:
    """OLMo 2's skip rule (OLMo Team 2024) over a sequence of global norms, in float64.

    With ``min_history`` or more finite past norms in the window (the last ``window``), a finite
    norm above ``limit = mean + sigma * std`` (sample std) is a spike; every finite norm then
    enters the window. The threshold is ``min(limit, max_norm)`` (``max_norm`` before
    ``min_history`` norms; ``None`` counts as ``inf``). ``"skip"``: the factor is
    ``max_norm / (g + 1e-6)`` when ``g > max_norm``, else 1, and spikes are skipped; ``"clip"``:
    spikes get ``min(1, min(limit, max_norm) / (g + 1e-6))``, other steps the cap's factor.

    Returns:
        ``{"threshold", "coef", "skipped"}``: one entry per step.
    """
    cap = math.inf if max_norm is None else float(max_norm)
    hist: list[float] = []
    out: dict[str, list] = {"threshold": [], "coef": [], "skipped": []}
    for g in (float(x) for x in norms):
        limit = math.inf
        if len(hist) >= min_history:
            mean = sum(hist) / len(hist)
            limit = mean + sigma * math.sqrt(sum((h - mean) ** 2 for h in hist) / (len(hist) - 1))
        spike = math.isfinite(g) and g > limit
        capped = cap / (g + TORCH_EPS) if g > cap else 1.0
        if on_spike == "clip" and spike:
            c = min(1.0, min(limit, cap) / (g + TORCH_EPS))
        else:
            c = capped
        out["threshold"].append(min(limit, cap))
        out["coef"].append(c)
        out["skipped"].append(spike and on_spike == "skip")
        if math.isfinite(g):
            hist = (hist + [g])[-window:]
    return {k: np.array(v, dtype=bool if k == "skipped" else np.float64) for k, v in out.items()}
