"""One-dimensional toy problems on the bias of per-example clipping (Chen, Wu & Hong 2020).

NumPy only, deterministic: the expectations are computed in closed form or by quadrature, and
the stochastic runs take a seed. Two findings of the paper are reproduced here and checked in
``tests/test_privacy_repro.py``:

1. **Example 2** (their Section 3): two examples ``a = ±3``, ``f(x) = ½ Σ_i ½ (x − a_i)²``,
   clip ``c = 1``. For every ``x`` in ``[−2, 2]`` the clipped gradients are ``+1`` and ``−1``,
   so clipped gradient descent stops wherever it starts there, though the minimum is 0.
   Adding Gaussian noise ``k ζ`` to each per-example gradient *before* clipping (their
   pre-clipping perturbation, Section 5) makes the expected clipped gradient point to 0 again.
2. **Fixed-point bias**: clipped SGD on ``f(x) = ½ x²`` with per-example gradients ``x + ξ``
   (``E ξ = 0``) settles where ``E clip(x + ξ) = 0``. That is 0 when ``ξ`` is symmetric, and
   away from 0 when it is skewed (a centred exponential); the perturbation shrinks the gap.

In one dimension clipping to norm ``c`` is ``clip(v) = v · min(1, c / |v|) = min(max(v, −c), c)``.

Example:
    >>> from gradclip.privacy._toy import expected_clipped_gradient, fixed_point
    >>> float(expected_clipped_gradient(1.5, (-3.0, 3.0), c=1.0))          # stuck
    0.0
    >>> round(float(expected_clipped_gradient(1.5, (-3.0, 3.0), c=1.0, k=1.0)), 4) > 0
    True
    >>> abs(round(fixed_point("gaussian", c=1.0), 6)), fixed_point("exponential", c=1.0) > 0.1
    (0.0, True)

References:
    Chen, Wu, Hong. "Understanding Gradient Clipping in Private SGD: A Geometric Perspective",
    NeurIPS 2020 (arXiv:2006.15429), Example 2 and Section 5 (pre-clipping perturbation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gradclip._errors import ConfigError
from gradclip._validate import choice

__all__ = ["clipped_gd", "clipped_sgd_fixed_point", "expected_clipped_gradient", "fixed_point",
           "gaussian_clipped_mean", "noisy_clipped_mean"]

_Z_GRID = np.linspace(-9.0, 9.0, 18_001)  # quadrature nodes for N(0, 1) (trapezoid); mass beyond 9 is < 1e-18
_NOISES = ("gaussian", "exponential")


def gaussian_clipped_mean(mu, c: float, k: float) -> np.ndarray:
    """``E[clip(mu + k ζ)]`` for ``ζ ~ N(0, 1)``, in closed form (``k = 0``: ``clip(mu)``).

    ``E[clip(Y)] = c P(Y > c) − c P(Y < −c) + E[Y; |Y| <= c]`` with ``Y ~ N(mu, k²)``.
    """
    mu = np.asarray(mu, dtype=np.float64)
    if k == 0:
        return np.clip(mu, -c, c)
    lo, hi = (-c - mu) / k, (c - mu) / k
    cdf = np.vectorize(lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))), otypes=[float])
    pdf = np.exp(-0.5 * lo**2) / math.sqrt(2 * math.pi), np.exp(-0.5 * hi**2) / math.sqrt(2 * math.pi)
    p_lo, p_hi = cdf(lo), cdf(hi)
    inside = mu * (p_hi - p_lo) + k * (pdf[0] - pdf[1])
    return c * (1.0 - p_hi) - c * p_lo + inside


def expected_clipped_gradient(x, a: Sequence[float] = (-3.0, 3.0), c: float = 1.0, k: float = 0.0) -> np.ndarray:
    """Example 2's expected clipped gradient ``(1/n) Σ_i E clip(x − a_i + k ζ_i)``.

    Args:
        x: Point(s) to evaluate at.
        a: The examples; ``f(x) = (1/n) Σ ½ (x − a_i)²`` so the per-example gradient is ``x − a_i``.
        c: Clip bound.
        k: Scale of the pre-clipping Gaussian perturbation (0: none).
    """
    x = np.asarray(x, dtype=np.float64)
    return np.mean([gaussian_clipped_mean(x - ai, c, k) for ai in a], axis=0)


def clipped_gd(x0: float, a: Sequence[float] = (-3.0, 3.0), c: float = 1.0, k: float = 0.0, lr: float = 0.1,
               steps: int = 2000, seed: int = 0) -> np.ndarray:
    """Clipped gradient descent on Example 2, each per-example gradient perturbed by ``k ζ`` first.

    ``x ← x − lr · (1/n) Σ_i clip(x − a_i + k ζ_{t,i})``; ``k = 0`` is plain clipped GD.

    Returns:
        The iterates ``x_0 .. x_steps`` (float64).
    """
    rng = np.random.default_rng(seed)
    a = np.asarray(a, dtype=np.float64)
    zeta = rng.standard_normal((steps, a.size)) if k else np.zeros((steps, a.size))
    xs = np.empty(steps + 1)
    xs[0] = x0
    for t in range(steps):
        xs[t + 1] = xs[t] - lr * np.mean(np.clip(xs[t] - a + k * zeta[t], -c, c))
    return xs


def noisy_clipped_mean(x, noise: str, c: float = 1.0, k: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """``E clip(x + ξ + k ζ)``: the expected clipped stochastic gradient of ``½ x²``.

    Args:
        x: Point(s).
        noise: ``"gaussian"`` (``ξ ~ N(0, scale²)``, symmetric) or ``"exponential"``
            (``ξ = scale (E − 1)``, ``E ~ Exp(1)``: mean 0, skewed to the right).
        c: Clip bound.
        k: Pre-clipping perturbation scale.
        scale: Scale of ``ξ``.
    """
    choice("noise", noise, _NOISES)
    x = np.asarray(x, dtype=np.float64)
    if noise == "gaussian":
        return gaussian_clipped_mean(x, c, math.hypot(scale, k))
    if k == 0:
        return _exponential_clipped_mean(x, c, scale)
    z = _Z_GRID
    weights = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return np.trapezoid(_exponential_clipped_mean(x[..., None] + k * z, c, scale) * weights, z, axis=-1)


def _exponential_clipped_mean(x: np.ndarray, c: float, scale: float) -> np.ndarray:
    """``E clip(x + s (E − 1))`` for ``E ~ Exp(1)`` in closed form.

    With ``m = x − s``, ``clip(m + s e)`` is ``−c`` below ``e1 = max(0, (−c − m) / s)``, ``c`` above
    ``e2 = max(0, (c − m) / s)`` and ``m + s e`` between; integrate each piece against ``e^{−e}``.
    """
    m = x - scale
    e1, e2 = np.maximum(0.0, (-c - m) / scale), np.maximum(0.0, (c - m) / scale)
    q1, q2 = np.exp(-e1), np.exp(-e2)
    middle = m * (q1 - q2) + scale * ((e1 + 1.0) * q1 - (e2 + 1.0) * q2)
    return -c * (1.0 - q1) + middle + c * q2


def fixed_point(noise: str, c: float = 1.0, k: float = 0.0, scale: float = 1.0) -> float:
    """Where clipped SGD settles: the root of :func:`noisy_clipped_mean` (bisection, to 1e-10).

    The true minimum is 0 (``E ξ = 0``); the returned value is the clipping bias.
    """
    lo, hi = -10.0 * (scale + c), 10.0 * (scale + c)
    g = lambda x: float(noisy_clipped_mean(x, noise, c, k, scale))
    if not g(lo) < 0 < g(hi):
        raise ConfigError(f"no fixed point in [{lo}, {hi}] for noise={noise!r}, c={c}, k={k}, scale={scale}.")
    while hi - lo > 1e-10:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if g(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def clipped_sgd_fixed_point(noise: str, c: float = 1.0, k: float = 0.0, scale: float = 1.0, lr: float = 0.01,
                            steps: int = 40_000, seed: int = 0) -> float:
    """Run clipped SGD on ``½ x²`` with per-example gradient ``x + ξ_t + k ζ_t``; average the last half.

    A simulation of what :func:`fixed_point` computes; they agree to about ``sqrt(lr)``.
    """
    choice("noise", noise, _NOISES)
    rng = np.random.default_rng(seed)
    xi = scale * (rng.standard_normal(steps) if noise == "gaussian" else rng.exponential(size=steps) - 1.0)
    zeta = k * rng.standard_normal(steps)
    x, xs = 0.0, np.empty(steps)
    for t in range(steps):
        x -= lr * min(max(x + xi[t] + zeta[t], -c), c)
        xs[t] = x
    return float(xs[steps // 2:].mean())
