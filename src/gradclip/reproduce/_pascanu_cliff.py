"""``pascanu-cliff``: the cliff in a one-unit RNN's loss, and gradient descent with and without norm clipping.

Pascanu, Mikolov & Bengio (2013), Section 3.3 and Figure 6: a single recurrent unit
``x_t = w·σ(x_{t-1}) + b`` (σ the logistic sigmoid, x_0 = 0.5, no input) trained so that
``σ(x_50) = 0.7``, loss ``E = (σ(x_50) − 0.7)²``. For w > 4 the map has two stable fixed points,
and the basin boundary (the unstable fixed point crossing x_0) is a wall in the (w, b) plane:
across it ``x_50`` jumps between the two attractors and the gradient there grows like
``(w σ'(x*))^50``. Gradient descent that meets the wall takes a huge step and is thrown onto a
plateau; with the gradient rescaled to norm ``c`` when it is larger (their Algorithm 1) the step
is at most ``lr·c`` long and the descent goes on along the valley beside the wall. (The setting is
the paper's as we recall it; the paper's figure is a sketch, so the start, ``lr`` and ``c`` are ours.)

Our setting. The gradient is exact, by hand-written backpropagation through time in float64
NumPy over a whole array of (w, b) at once. Both runs start at (w, b) = (4.0, −4.0) and take 300
steps with ``lr = 0.5``; the clipped run rescales the gradient to norm ``c = 1`` when larger, with
the coefficient of the public policy ``gradclip.GlobalNorm(c)`` (torch's rule
``min(1, c / (‖g‖ + 1e-6))``, the numbers of ``gradclip.torch.clip_grad_norm_``), checked
against gradclip's float64 reference :func:`gradclip._reference.clip_global_norm` on every step.
Each run writes a JSONL log through :class:`gradclip.Monitor` (readable by ``gradclip report``).
The same two runs go from a grid of other starts at once (``quick``: 6 × 6; full: 20 × 20 over
w ∈ [2, 9], b ∈ [−5, 3]), to count how often the unclipped run is thrown and what clipping does
there; those counts are reported, the verdict comes from the main pair.

Verdict rule (main pair). *Thrown*: the unclipped run's longest step is ≥ 10·lr·c **and** it ends
at a loss ≥ 10 × the clipped run's final loss (it stalls where it landed). *Bounded*: every
clipped step is ≤ lr·c (+1e-9) **and** the clipped run ends at a loss ≤ 0.1 × its start loss.
*reproduced* when both hold, *partly* when one does, *not reproduced* otherwise.

References:
    Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks", ICML 2013
    (arXiv:1211.5063), Section 3.3 and Figure 6 (the error surface of a single hidden unit RNN and
    its walls), Section 3.2 / Algorithm 1 (gradient norm clipping).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gradclip import ClipStats, GlobalNorm, Monitor
from gradclip import _reference as ref
from gradclip.policy import Measurement, NumpyOps
from gradclip.reproduce._plot import figure, save
from gradclip.reproduce._result import Reproduction

NAME = "pascanu-cliff"
CLAIM = ("Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063), Figure 6: the loss of a one-unit RNN "
         "x_t = w sigmoid(x_{t-1}) + b has a wall; gradient descent that meets it takes a huge step and is thrown "
         "off, while gradient-norm clipping keeps the step bounded and the descent goes on.")
T, X0, TARGET = 50, 0.5, 0.7
START, LR, CLIP, STEPS = (4.0, -4.0), 0.5, 1.0, 300
FULL = {"surface": 301, "sweep": 20}
QUICK = {"surface": 121, "sweep": 6}
W_RANGE, B_RANGE = (1.0, 9.0), (-6.0, 4.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # = 1 / (1 + exp(-x)), without overflow warnings


def loss_and_grad(w: Any, b: Any, steps: int = T) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(E, dE/dw, dE/db)`` of ``E = (σ(x_T) − 0.7)²`` for arrays of ``w`` and ``b``, by BPTT.

    Example:
        >>> e, gw, gb = loss_and_grad(1.0, 0.0)
        >>> round(float(e), 6), bool(gw < 0), bool(gb < 0)
        (0.001677, True, True)
    """
    w, b = np.broadcast_arrays(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64))
    x, sig = np.full(w.shape, X0), []  # sig[t] = σ(x_t), t = 0 .. steps - 1
    for _ in range(steps):
        sig.append(_sigmoid(x))
        x = w * sig[-1] + b
    y = _sigmoid(x)
    err = y - TARGET
    delta = 2.0 * err * y * (1.0 - y)  # dE/dx_T
    gw, gb = np.zeros(w.shape), np.zeros(w.shape)
    for s in reversed(sig):  # x_t = w σ(x_{t-1}) + b: dx_t/dw = σ(x_{t-1}), dx_t/dx_{t-1} = w σ'(x_{t-1})
        gw += delta * s
        gb += delta
        delta = delta * w * s * (1.0 - s)
    return err * err, gw, gb


def descend(w0: np.ndarray, b0: np.ndarray, clip: float | None) -> dict[str, np.ndarray]:
    """``STEPS`` steps of GD from every start ``(w0[i], b0[i])`` at once, the gradient rescaled to norm
    ``clip`` when larger (coefficient from the public policy ``gradclip.GlobalNorm(clip)``).

    Returns arrays over steps × starts: ``path`` (STEPS + 1, n, 2), ``loss`` (STEPS + 1, n), and
    ``norm``, ``coef``, ``step`` (STEPS, n): the gradient norm, the clip coefficient and the length
    of the step taken.
    """
    policy = None if clip is None else GlobalNorm(clip)
    w, b = np.array(w0, dtype=np.float64), np.array(b0, dtype=np.float64)
    path, losses, norms, coefs = [np.stack([w, b], -1)], [], [], []
    for _ in range(STEPS):
        e, gw, gb = loss_and_grad(w, b)
        norm = np.hypot(gw, gb)
        coef = np.ones_like(norm) if policy is None else policy.decide(Measurement(norm=norm), {}, NumpyOps)[0].coef
        w, b = w - LR * coef * gw, b - LR * coef * gb
        path.append(np.stack([w, b], -1))
        losses.append(e)
        norms.append(norm)
        coefs.append(coef)
    losses.append(loss_and_grad(w, b)[0])
    norm, coef = np.array(norms), np.array(coefs)
    return {"path": np.array(path), "loss": np.array(losses), "norm": norm, "coef": coef, "step": LR * norm * coef}


def reference_gap(norms: np.ndarray, coefs: np.ndarray, clip: float) -> float:
    """Largest gap between the policy's coefficients and gradclip's float64 reference clip on the same norms."""
    gaps = []
    for n, c in zip(norms, coefs):
        (clipped,), _ = ref.clip_global_norm([np.array([n, 0.0])], clip)
        gaps.append(abs(float(clipped[0]) / n - c) if n > 0 else 0.0)
    return max(gaps)


def write_log(path: Path, r: dict[str, np.ndarray], clip: float | None) -> Path:
    """The run's JSONL log through :class:`gradclip.Monitor` (one record per GD step)."""
    with Monitor(sinks=[f"jsonl:{path}"], per_layer=False, overwrite=True, run=path.stem) as monitor:
        for n, c, e in zip(r["norm"].tolist(), r["coef"].tolist(), r["loss"].tolist()):
            monitor.step(clip_stats=ClipStats(norm=n, clipped_norm=n * c, coef=c, clipped=c < 1.0,
                                              nonfinite=not np.isfinite(n), skipped=False, threshold=clip),
                         loss=e, lr=LR)
    return path


def sweep_summary(runs: dict[str, dict[str, np.ndarray]], n: int) -> dict[str, Any]:
    """How often the unclipped run is thrown from the grid of starts, and what clipping does there."""
    u, c = runs["unclipped"], runs["clipped"]
    longest_u, final_u, final_c = u["step"].max(0)[1:], u["loss"][-1, 1:], c["loss"][-1, 1:]
    thrown = longest_u >= 10 * LR * CLIP
    return {"starts": n * n, "thrown": int(thrown.sum()),
            "clipped_lower_where_thrown": int((thrown & (final_c < final_u)).sum()),
            "clipped_max_step": float(c["step"][:, 1:].max()), "unclipped_max_step": float(longest_u.max()),
            "final_below_1e-2_unclipped": int((final_u < 1e-2).sum()),
            "final_below_1e-2_clipped": int((final_c < 1e-2).sum())}


def judge(u: dict[str, np.ndarray], c: dict[str, np.ndarray], lr: float = LR,
          clip: float = CLIP) -> tuple[bool, bool, str]:
    """``(thrown, bounded, verdict)`` of the unclipped run ``u`` and the clipped run ``c`` (module docstring's rule).

    Each run is a dict with ``"step"`` (step lengths) and ``"loss"`` (losses, start first).

    Example:
        >>> import numpy as np
        >>> u = {"step": np.array([0.1, 7.0, 0.0]), "loss": np.array([0.4, 0.3, 0.09, 0.09])}
        >>> c = {"step": np.array([0.1, 0.5, 0.2]), "loss": np.array([0.4, 0.3, 0.01, 0.001])}
        >>> judge(u, c, lr=0.5, clip=1.0)
        (True, True, 'reproduced')
    """
    bound = lr * clip
    thrown = bool(u["step"].max() >= 10 * bound and u["loss"][-1] >= 10 * c["loss"][-1])
    bounded = bool(c["step"].max() <= bound + 1e-9 and c["loss"][-1] <= 0.1 * c["loss"][0])
    return thrown, bounded, "reproduced" if thrown and bounded else "partly" if thrown or bounded else "not reproduced"


def run(quick: bool, out: Path, say: Callable[[str], None]) -> Reproduction:
    """The two runs from ``START`` (with the sweep's starts), logs and plots; the verdict rule is the module's."""
    cfg = QUICK if quick else FULL
    gw, gb = np.meshgrid(np.linspace(2.0, 9.0, cfg["sweep"]), np.linspace(-5.0, 3.0, cfg["sweep"]))
    w0, b0 = np.concatenate([[START[0]], gw.ravel()]), np.concatenate([[START[1]], gb.ravel()])
    every = {name: descend(w0, b0, clip) for name, clip in (("unclipped", None), ("clipped", CLIP))}
    runs = {name: {key: v[:, 0] for key, v in r.items()} for name, r in every.items()}  # the start START
    for name, clip in (("unclipped", None), ("clipped", CLIP)):
        r = runs[name]
        write_log(out / f"{name}.jsonl", r, clip)
        say(f"{name}: longest step {r['step'].max():.3g} at step {int(r['step'].argmax())}, "
            f"loss {r['loss'][0]:.3g} -> {r['loss'][-1]:.3g}")
    u, c = runs["unclipped"], runs["clipped"]
    k, bound = int(u["step"].argmax()), LR * CLIP
    thrown, bounded, verdict = judge(u, c)
    reason = (f"unclipped: longest step {u['step'][k]:.3g} (= {u['step'][k] / bound:.3g} x lr*c) at step {k}, "
              f"final loss {u['loss'][-1]:.3g}; clipped: longest step {c['step'].max():.3g} <= lr*c = {bound:g}, "
              f"loss {c['loss'][0]:.3g} -> {c['loss'][-1]:.3g}")
    sw = sweep_summary(every, cfg["sweep"])
    say(f"sweep: thrown from {sw['thrown']}/{sw['starts']} starts; clipped ends lower at "
        f"{sw['clipped_lower_where_thrown']} of those")
    rows = [[name, float(r["loss"][0]), float(r["loss"][-1]), float(r["step"].max()), int(r["step"].argmax()),
             float(r["norm"].max()), float(r["path"][-1, 0]), float(r["path"][-1, 1])] for name, r in runs.items()]
    numbers = {
        "thrown": thrown, "bounded": bounded, "step_bound": bound,
        **{f"{name}_{key}": _num(r, key) for name, r in runs.items() for key in ("loss", "step", "norm")},
        "unclipped_longest_step": {"at": k, "from": u["path"][k].tolist(), "to": u["path"][k + 1].tolist(),
                                   "loss_before": float(u["loss"][k]), "loss_after": float(u["loss"][k + 1]),
                                   "grad_norm": float(u["norm"][k])},
        "clip_coef_vs_reference_max_gap": reference_gap(c["norm"], c["coef"], CLIP),
        "final_point": {name: r["path"][-1].tolist() for name, r in runs.items()},
        "sweep": sw,
    }
    plots = [_plot_surface(out, cfg["surface"], runs), _plot_steps(out, runs)]
    return Reproduction(
        name=NAME, claim=CLAIM, verdict=verdict, reason=reason,
        columns=["run", "start loss", "final loss", "longest step", "at step", "max ||grad||", "final w", "final b"],
        rows=rows, numbers=numbers,
        config={"model": "x_t = w*sigmoid(x_{t-1}) + b", "x0": X0, "T": T, "target": TARGET,
                "loss": "(sigmoid(x_T) - target)^2", "start": list(START), "lr": LR, "clip": CLIP, "steps": STEPS,
                "clip_rule": "GlobalNorm(clip).decide (torch semantics), checked against gradclip._reference",
                "sweep_grid": f"w in [2, 9] x b in [-5, 3], {cfg['sweep']} x {cfg['sweep']}",
                "surface_grid": cfg["surface"]},
        plots=plots, logs=[out / "unclipped.jsonl", out / "clipped.jsonl"])


def _num(r: dict[str, np.ndarray], key: str) -> dict[str, float]:
    v = r[key]
    return {"first": float(v[0]), "last": float(v[-1]), "max": float(v.max())}


def _plot_surface(out: Path, n: int, runs: dict[str, dict[str, np.ndarray]]) -> Path:
    w, b = np.meshgrid(np.linspace(*W_RANGE, n), np.linspace(*B_RANGE, n))
    e = loss_and_grad(w, b)[0]
    fig, ax = figure(7.0, 5.2)
    mesh = ax.pcolormesh(w, b, np.log10(np.maximum(e, 1e-8)), shading="auto", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="log10 loss  (sigmoid(x_50) - 0.7)^2")
    for (name, r), color, style, z in zip(runs.items(), ("#d62728", "#ff00ff"), (".-", "--"), (3, 2)):
        p = r["path"]
        inside = (p[:, 0] >= W_RANGE[0]) & (p[:, 0] <= W_RANGE[1]) & (p[:, 1] >= B_RANGE[0]) & (p[:, 1] <= B_RANGE[1])
        last = int(np.argmin(inside)) if not inside.all() else len(p)
        k = int(r["step"].argmax())
        ax.plot(p[:min(last, k + 1), 0], p[:min(last, k + 1), 1], style, color=color, ms=3, lw=1.2 + z / 2,
                zorder=z, label=f"GD, {name} (longest step {r['step'][k]:.3g})")
        thrown = r["step"][k] >= 10 * LR * CLIP
        rest = k + 1 if thrown else k
        if rest < last:
            ax.plot(p[rest:last, 0], p[rest:last, 1], style, color=color, ms=3, lw=1.2 + z / 2, zorder=z)
        if thrown:  # the throw: an arrow, to the edge when it leaves the picture
            end = p[k + 1] if k + 1 < last else np.array(_edge(p[k], p[k + 1]))
            ax.annotate("", xy=end, xytext=p[k], arrowprops={"arrowstyle": "-|>", "color": color, "lw": 1.5})
            ax.annotate(f"thrown: step {r['step'][k]:.3g} to ({p[k + 1, 0]:.3g}, {p[k + 1, 1]:.3g})",
                        xy=(p[k] + end) / 2, xytext=(6, 0), textcoords="offset points", color=color, fontsize=8,
                        bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
        ax.plot(*p[min(last, len(p)) - 1], "X", color=color, ms=9, mec="black")
    ax.plot(*START, "o", color="orange", ms=7, label="start")
    ax.set_xlim(*W_RANGE)
    ax.set_ylim(*B_RANGE)
    ax.set_xlabel("w (recurrent weight)")
    ax.set_ylabel("b (bias)")
    ax.set_title(f"one-unit RNN, T = {T}: GD with lr = {LR}, clipped at ||g|| <= {CLIP}\n"
                 "(the two paths coincide until the wall)", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    return save(fig, out, "surface")


def _edge(a: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    """The point where the segment from ``a`` (inside) to ``z`` leaves the plotted box."""
    t = 1.0
    for i, (lo, hi) in enumerate((W_RANGE, B_RANGE)):
        d = z[i] - a[i]
        if d > 0 and z[i] > hi:
            t = min(t, (hi - a[i]) / d)
        elif d < 0 and z[i] < lo:
            t = min(t, (lo - a[i]) / d)
    return float(a[0] + t * (z[0] - a[0])), float(a[1] + t * (z[1] - a[1]))


def _plot_steps(out: Path, runs: dict[str, dict[str, np.ndarray]]) -> Path:
    fig, (left, right) = figure(10.0, 3.8, 1, 2)
    for (name, r), color, lw, z in zip(runs.items(), ("#d62728", "#1f77b4"), (1.0, 2.2), (3, 2)):
        left.plot(np.arange(len(r["step"])), r["step"], color=color, lw=lw, zorder=z, label=name)
        right.plot(np.arange(len(r["loss"])), np.maximum(r["loss"], 1e-30), color=color, lw=lw, zorder=z, label=name)
    left.axhline(LR * CLIP, color="gray", ls="--", lw=1, label=f"lr * c = {LR * CLIP:g}")
    for ax, ylabel in ((left, "step length ||lr * g||"), (right, "loss")):
        ax.set_yscale("log")
        ax.set_xlabel("GD step")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    left.set_title("step length per iteration (the runs coincide until the wall)", fontsize=10)
    right.set_title("loss per iteration", fontsize=10)
    return save(fig, out, "steps")
