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
