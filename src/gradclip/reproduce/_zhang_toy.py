"""``zhang-toy``: clipped GD against the best fixed step on f(x) = Σ x_i⁴/4, as the start scale grows.

Zhang et al. (2020) prove that on (L0, L1)-smooth functions (‖∇²f(x)‖ ≤ L0 + L1‖∇f(x)‖) gradient
descent with any fixed step needs a number of iterations that grows with the largest gradient
norm M met along the way, while clipped GD (their eq. 5 and Theorem 3) does not pay that factor.
This reproduction measures it on the simplest such function.

Setting. ``f(x) = Σ x_i⁴ / 4`` in d = 10 dimensions, ``∇f = x³``, minimum 0 at x = 0. Start
``x0 = s·u`` with ``u = (1, 2, ..., d) / ‖(1, 2, ..., d)‖`` (a fixed unit vector; no randomness,
no seed). Goal: the first iteration with ``‖∇f(x_k)‖ ≤ ε``. Full: s ∈ {2, 5, 10, 30, 100},
ε = 1e-3, 200 step sizes; ``quick``: s ∈ {2, 5, 10, 20}, ε = 1e-2, 60 step sizes.

- **Fixed step**: ``x ← x − h ∇f(x)`` for every h of a log grid over [1e-5, 10],
  all iterated at once as one (h, d) array. A step whose iterate leaves ‖x‖ ≤ 10 ‖x0‖ or becomes
  non-finite has diverged and counts as a failure; the best h is the one that reaches ε first.
- **Clipped GD** (Theorem 3): ``x ← x − h_c ∇f(x)``, ``h_c = min(η_c, γ η_c / ‖∇f(x)‖)`` with
  ``η_c = 1 / (10 L0)`` and ``γ = min(1/η_c, 1/(10 L1 η_c))``, as we recall the theorem (so every
  step is at most ``γ η_c = min(1, 1/(10 L1))`` long). That update is GD with learning rate
  η_c on the gradient clipped to global norm γ (``c = γ / max(‖g‖, γ)``, the TF/Keras rule
  without epsilon): it is computed with gradclip's float64 reference
  :func:`gradclip._reference.clip_global_norm` (``semantics="tf"``), and the run checks that
  the step equals the paper's ``h_c`` and the coefficient of the public policy
  ``gradclip.GlobalNorm(γ, semantics="tf")``.
- **Constants**: ``‖∇²f‖ = 3 max_i x_i² = 3m²`` and ``‖∇f‖ ≥ m³``, so f is (L0, L1)-smooth
  whenever ``3m² ≤ L0 + L1 m³`` for all m ≥ 0; for L1 = 1 the smallest L0 is
  ``max_m (3m² − m³) = 4`` (at m = 2). We take (L0, L1) = (4, 1): η_c = 0.025, γ = 4, steps at
  most 0.1 long. Nothing is tuned.

Expected: the best fixed step must stay below about ``2 / max_i x0_i²`` (else the largest
coordinate grows), so its iterations grow like s²; clipped GD walks in at constant step length
(iterations ~ s) and then finishes with step η_c, so its count grows at most linearly.

Verdict rule, from the log-log slopes of iterations against s (least squares over all s):
*reproduced* when the fixed-step slope exceeds the clipped slope by at least 0.5 **and**
clipped GD needs fewer iterations than the best fixed step at the largest s; *partly* when only
the slope is smaller; *not reproduced* otherwise.

References:
    Zhang, He, Sra, Jadbabaie. "Why gradient clipping accelerates training: a theoretical
    justification for adaptivity", ICLR 2020 (arXiv:1905.11881): Definition of (L0, L1)-smoothness,
    eq. (5) (clipped GD), Theorem 3 (its iteration bound) and Theorem 4 (the fixed-step lower bound
    that grows with M).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gradclip import GlobalNorm
from gradclip import _reference as ref
from gradclip.policy import Measurement, NumpyOps
from gradclip.reproduce._plot import figure, save
from gradclip.reproduce._result import Reproduction

NAME = "zhang-toy"
CLAIM = ("Zhang, He, Sra & Jadbabaie 2020 (arXiv:1905.11881), Theorems 3-4: on an (L0, L1)-smooth function, "
         "the iterations of the best fixed-step GD grow with the gradient norm met from the start, clipped GD's do "
         "not; shown on f(x) = sum x^4/4 as iterations to ||grad f|| <= eps against the start scale s.")
DIM, L0, L1 = 10, 4.0, 1.0
FULL = {"scales": [2, 5, 10, 30, 100], "grid": 200, "eps": 1e-3, "curve_factor": 2.0}
QUICK = {"scales": [2, 5, 10, 20], "grid": 60, "eps": 1e-2, "curve_factor": 1.0}


def constants(l0: float = L0, l1: float = L1) -> tuple[float, float]:
    """``(η_c, γ)`` of Theorem 3 for the smoothness constants ``(l0, l1)``.

    Example:
        >>> constants(4.0, 1.0)
        (0.025, 4.0)
    """
    eta = 1.0 / (10.0 * l0)
    return eta, min(1.0 / eta, 1.0 / (10.0 * l1 * eta))


def direction(d: int = DIM) -> np.ndarray:
    """The start direction ``u = (1, ..., d) / ‖(1, ..., d)‖``."""
    u = np.arange(1, d + 1, dtype=np.float64)
    return u / np.linalg.norm(u)


def fixed_steps(x0: np.ndarray, steps: np.ndarray, eps: float, curve_factor: float,
                max_iter: int = 5_000_000) -> np.ndarray:
    """Iterations to ``‖∇f‖ ≤ eps`` for every fixed step at once; ``-1``: diverged, ``0``: not reached.

    Iterates until the first step size converges, then on to ``curve_factor`` times that count
    (so that the curve of iterations against the step size shows its neighbours too). The first
    step size to converge is the best one: all of them start together.
    """
    limit = (10.0 * np.linalg.norm(x0)) ** 2
    out = np.zeros(steps.size, dtype=np.int64)
    idx = np.arange(steps.size)  # the step sizes still running; the arrays below hold only them
    x, h = np.tile(x0, (steps.size, 1)), steps[:, None].copy()
    stop, k = max_iter, 0
    with np.errstate(over="ignore", invalid="ignore"):
        while k < stop and idx.size:
            g = x * x * x
            hit = np.einsum("ij,ij->i", g, g) <= eps * eps
            if hit.any():
                out[idx[hit]] = k
                if stop == max_iter:
                    stop = min(max_iter, max(int(curve_factor * k), k + 1))
                idx, x, g, h = idx[~hit], x[~hit], g[~hit], h[~hit]
            x -= h * g
            k += 1
            if k % 16 == 0:  # growth is monotone once it starts: checking now and then is enough
                bad = ~(np.einsum("ij,ij->i", x, x) <= limit)  # NaN compares False
                out[idx[bad]] = -1
                idx, x, h = idx[~bad], x[~bad], h[~bad]
    if idx.size:
        bad = ~(np.einsum("ij,ij->i", x, x) <= limit)
        out[idx[bad]] = -1
    return out


def clipped_gd(x0: np.ndarray, eps: float, eta: float, gamma: float,
               max_iter: int = 1_000_000) -> tuple[int, float, float]:
    """Clipped GD with gradclip's reference clip: ``(iterations, max |step − h_c·g|, max |c − policy c|)``."""
    policy = GlobalNorm(gamma, semantics="tf")
    x = x0.copy()
    rule_gap = policy_gap = 0.0
    for k in range(max_iter):
        g = x * x * x
        (clipped,), norm = ref.clip_global_norm([g], gamma, semantics="tf")
        if norm <= eps:
            return k, rule_gap, policy_gap
        step = eta * clipped
        if k % 16 == 0:  # the paper's step rule written out, and the public policy, agree
            h_c = min(eta, gamma * eta / norm)
            rule_gap = max(rule_gap, float(np.max(np.abs(step - h_c * g))) / (h_c * norm))
            decision, _ = policy.decide(Measurement(norm=np.float64(norm)), {}, NumpyOps)
            policy_gap = max(policy_gap, abs(float(decision.coef) - float(np.linalg.norm(clipped)) / norm))
        x = x - step
    return -1, rule_gap, policy_gap


def slope(s: list[float], iters: list[int]) -> float:
    """Least-squares slope of log(iterations) against log(s) (NaN with fewer than 2 finite points)."""
    pts = [(np.log(a), np.log(b)) for a, b in zip(s, iters) if b > 0]
    if len(pts) < 2:
        return float("nan")
    xs, ys = np.array(pts).T
    return float(np.polyfit(xs, ys, 1)[0])


def decide(slope_fixed: float, slope_clipped: float, clipped_faster_at_largest_s: bool) -> str:
    """The verdict rule of the module docstring.

    Example:
        >>> decide(2.0, 0.1, True), decide(2.0, 1.8, True), decide(1.0, 1.2, False)
        ('reproduced', 'partly', 'not reproduced')
    """
    if slope_fixed - slope_clipped >= 0.5 and clipped_faster_at_largest_s:
        return "reproduced"
    return "partly" if slope_clipped < slope_fixed else "not reproduced"


def run(quick: bool, out: Path, say: Callable[[str], None]) -> Reproduction:
    """Run the comparison for each start scale; see the module docstring for the verdict rule."""
    cfg = QUICK if quick else FULL
    eta, gamma = constants()
    steps = np.logspace(-5, 1, cfg["grid"])
    u = direction()
    rows, curves, per_s = [], {}, []
    for s in cfg["scales"]:
        x0 = s * u
        counts = fixed_steps(x0, steps, cfg["eps"], cfg["curve_factor"])
        ok = counts > 0
        best = int(counts[ok].min()) if ok.any() else -1
        best_h = float(steps[ok][np.argmin(counts[ok])]) if ok.any() else float("nan")
        clip_k, rule_gap, policy_gap = clipped_gd(x0, cfg["eps"], eta, gamma)
        m0 = float(np.max(np.abs(x0)))
        per_s.append({"s": s, "grad_norm0": float(np.linalg.norm(x0 ** 3)), "max_coord0": m0,
                      "fixed_best_iters": best, "fixed_best_step": best_h, "stability_limit_2_over_m0sq": 2 / m0 ** 2,
                      "fixed_diverged": int((counts == -1).sum()), "clipped_iters": clip_k,
                      "clip_step_rule_max_rel_gap": rule_gap, "clip_policy_coef_max_gap": policy_gap})
        curves[s] = counts
        rows.append([s, per_s[-1]["grad_norm0"], best_h, best, clip_k,
                     round(best / clip_k, 3) if best > 0 and clip_k > 0 else None])
        say(f"s={s}: best fixed step h={best_h:.3g} needs {best} iterations "
            f"({per_s[-1]['fixed_diverged']}/{steps.size} steps diverged); clipped GD needs {clip_k}")
    scales = [p["s"] for p in per_s]
    fixed_it = [p["fixed_best_iters"] for p in per_s]
    clip_it = [p["clipped_iters"] for p in per_s]
    slope_fixed, slope_clip = slope(scales, fixed_it), slope(scales, clip_it)
    faster_at_top = clip_it[-1] > 0 and (fixed_it[-1] < 0 or clip_it[-1] < fixed_it[-1])
    verdict = decide(slope_fixed, slope_clip, faster_at_top)
    reason = (f"log-log slope of iterations vs s: best fixed step {slope_fixed:.2f}, clipped GD {slope_clip:.2f}; "
              f"at s={scales[-1]} fixed {fixed_it[-1]} vs clipped {clip_it[-1]} iterations "
              "(rule: reproduced if the slopes differ by >= 0.5 and clipped is faster at the largest s)")
    logs = [_write_csv(out / "iterations.csv", steps, curves)]
    plots = [_plot_scaling(out, scales, fixed_it, clip_it, slope_fixed, slope_clip, cfg["eps"]),
             _plot_steps(out, steps, curves, per_s)]
    return Reproduction(
        name=NAME, claim=CLAIM, verdict=verdict, reason=reason,
        columns=["s", "||grad f(x0)||", "best fixed h", "fixed iters", "clipped iters", "fixed / clipped"],
        rows=rows,
        numbers={"per_scale": per_s, "slope_fixed": slope_fixed, "slope_clipped": slope_clip,
                 "clipped_faster_at_largest_s": faster_at_top},
        config={"function": "sum(x**4)/4", "d": DIM, "x0": "s * (1..d)/||(1..d)||", 
                "L0": L0, "L1": L1, "eta_c": eta, "gamma": gamma, "max_step_length": gamma * eta,
                "step_grid": f"logspace(-5, 1, {cfg['grid']})", "divergence": "||x|| > 10 ||x0|| or non-finite",
                "clip": "gradclip._reference.clip_global_norm(semantics='tf') == GlobalNorm(gamma, semantics='tf')",
                **cfg},
        plots=plots, logs=logs)


def _write_csv(path: Path, steps: np.ndarray, curves: dict[int, np.ndarray]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *[f"iters_s{s}" for s in curves]])
        for i, h in enumerate(steps):
            w.writerow([f"{h:.6g}", *[int(c[i]) for c in curves.values()]])
    return path


def _plot_scaling(out: Path, scales: list[int], fixed: list[int], clip: list[int],
                  sf: float, sc: float, eps: float) -> Path:
    fig, ax = figure(6.0, 4.2)
    for ys, slope_, label, style in ((fixed, sf, "best fixed step (grid search)", "o-"),
                                     (clip, sc, "clipped GD (Theorem 3 step rule)", "s-")):
        pts = [(s, y) for s, y in zip(scales, ys) if y > 0]
        ax.plot(*zip(*pts), style, label=f"{label}: slope {slope_:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("start scale s  (x0 = s·u)")
    ax.set_ylabel(f"iterations to ||grad f|| <= {eps:g}")
    ax.set_title("f(x) = sum of x_i^4 / 4, d = 10")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save(fig, out, "scaling")


def _plot_steps(out: Path, steps: np.ndarray, curves: dict[int, np.ndarray], per_s: list[dict[str, Any]]) -> Path:
    fig, ax = figure(6.4, 4.2)
    colors = [f"C{i}" for i in range(len(curves))]
    for (s, counts), p, c in zip(curves.items(), per_s, colors):
        ok = counts > 0
        ax.plot(steps[ok], counts[ok], ".-", color=c, ms=3, label=f"s = {s}")
        div = steps[counts == -1]
        if div.size:
            ax.axvline(div.min(), color=c, ls=":", lw=1)
        if p["clipped_iters"] > 0:
            ax.axhline(p["clipped_iters"], color=c, ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fixed step size h")
    ax.set_ylabel("iterations to the target")
    ax.set_title("fixed steps (dots); clipped GD (dashed); smallest diverging h (dotted)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, out, "step-sizes")
