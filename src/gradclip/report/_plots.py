"""Matplotlib figures of run logs, returned as base64 PNG (Agg backend, imported lazily).

``import gradclip`` must not import matplotlib, so every function imports it inside.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradclip.report._data import Series

#: Ratio max/min of the positive values above which an axis switches to a log scale.
WIDE_RANGE = 100.0
NAN_COLOR = "#d62728"


def _mpl() -> Any:
    """Import matplotlib lazily; a clear error when it is missing."""
    try:
        import matplotlib
    except ImportError:  # pragma: no cover - depends on the environment
        from gradclip._errors import ConfigError

        raise ConfigError("The HTML report needs matplotlib. Install it with: pip install 'gradclip[report]'.") from None
    return matplotlib


def _figure(width: float, height: float) -> tuple[Any, Any]:
    """A figure drawn by the Agg canvas directly: no pyplot, no global backend switch."""
    _mpl()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(n: int) -> list[Any]:
    cmap = _mpl().colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _maybe_log(ax: Any, *arrays: np.ndarray) -> None:
    values = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays]) if arrays else np.zeros(0)
    if values.size and values.max() / values.min() > WIDE_RANGE:
        ax.set_yscale("log")


def _slot(runs: Sequence[Series]) -> list[float]:
    steps = [s.step for s in runs if len(s.step)]
    return [0, min(float(x.min()) for x in steps), max(float(x.max()) for x in steps)] if steps else [0, 0.0, 0.0]


def _mark_nonfinite(ax: Any, s: Series, slot: list[float]) -> None:
    """A red band at every non-finite step, and a labelled marker where the run first exploded.

    ``slot`` is ``[runs annotated so far, first step, last step]`` of the plot: labels of runs
    exploding at the same step stack instead of hiding each other, and a label sits on the side
    of the marker with more room.
    """
    bad = s.step[s.nonfinite]
    if not bad.size:
        return
    k = slot[0]
    slot[0] += 1
    left_half = bad[0] < (slot[1] + slot[2]) / 2
    for x in bad:
        ax.axvline(x, color=NAN_COLOR, alpha=0.25, lw=2)
    ax.axvline(bad[0], color=NAN_COLOR, lw=1.5, ls="--")
    ax.annotate(f"non-finite @ step {int(bad[0])}\n({s.label})", xy=(bad[0], 1.0), xycoords=("data", "axes fraction"),
                xytext=(8 if left_half else -8, -4 - 30 * k), textcoords="offset points",
                ha="left" if left_half else "right", va="top", color=NAN_COLOR, fontsize=9,
                bbox={"boxstyle": "round", "fc": "white", "ec": NAN_COLOR, "alpha": 0.9})
    ax.plot([bad[0]], [1.0], marker="X", ms=12, color=NAN_COLOR, transform=ax.get_xaxis_transform(), clip_on=False,
            label=f"non-finite ({s.label})")


def norm_plot(runs: Sequence[Series]) -> str:
    """Pre-clip (solid) and post-clip (dashed) global norm, threshold (dotted), spikes and NaN marks."""
    return _png(norm_figure(runs))


def norm_figure(runs: Sequence[Series]) -> Any:
    """The matplotlib ``Figure`` of :func:`norm_plot` (for tests: legend, annotations, scale)."""
    fig, ax = _figure(11, 4.2)
    arrays = []
    slot = _slot(runs)
    for s, c in zip(runs, _colors(len(runs))):
        ax.plot(s.step, s.norm, color=c, lw=1.2, label=f"{s.label}: pre-clip norm")
        arrays.append(s.norm)
        if np.any(np.isfinite(s.clipped_norm) & (np.abs(s.clipped_norm - s.norm) > 1e-9 * np.abs(s.norm))):
            ax.plot(s.step, s.clipped_norm, color=c, lw=1.0, ls="--", alpha=0.85, label=f"{s.label}: post-clip norm")
            arrays.append(s.clipped_norm)
        if np.isfinite(s.threshold).any():
            ax.plot(s.step, s.threshold, color=c, lw=1.2, ls=":", label=f"{s.label}: threshold")
            arrays.append(s.threshold)
        if s.spike.any():
            ax.scatter(s.step[s.spike], s.norm[s.spike], marker="^", s=40, color=c, edgecolor="black", zorder=5,
                       label=f"{s.label}: spike ({int(s.spike.sum())})")
        _mark_nonfinite(ax, s, slot)
    _maybe_log(ax, *arrays)
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient norm")
    ax.set_title("Global gradient norm: pre-clip (solid), post-clip (dashed), threshold (dotted)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def loss_plot(runs: Sequence[Series]) -> str | None:
    """Loss over steps, or ``None`` when no run logged a loss."""
    if not any(np.isfinite(s.loss).any() for s in runs):
        return None
    fig, ax = _figure(11, 3.6)
    slot = _slot(runs)
    for s, c in zip(runs, _colors(len(runs))):
        ax.plot(s.step, s.loss, color=c, lw=1.2, label=s.label)
        _mark_nonfinite(ax, s, slot)
    _maybe_log(ax, *(s.loss for s in runs))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def rolling_rate(flags: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean of a bool array over ``window`` steps (shorter at the start), in percent."""
    x = np.asarray(flags, dtype=np.float64)
    csum = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return 100.0 * (csum[idx] - csum[lo]) / (idx - lo)


def window_for(n: int) -> int:
    """Rolling window of the clip-rate plot: about 1/20 of the run, between 1 and 50 steps."""
    return int(min(50, max(1, n // 20)))


def clip_rate_plot(runs: Sequence[Series]) -> str:
    """Rolling percentage of steps where clipping acted."""
    fig, ax = _figure(11, 3.2)
    slot = _slot(runs)
    for s, c in zip(runs, _colors(len(runs))):
        w = window_for(len(s.step))
        ax.plot(s.step, rolling_rate(s.clipped, w), color=c, lw=1.2, label=f"{s.label} (window {w})")
        _mark_nonfinite(ax, s, slot)
    ax.set_ylim(-3, 103)
    ax.set_xlabel("step")
    ax.set_ylabel("% of steps clipped")
    ax.set_title("Clip rate (rolling)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig)


def layer_heatmap(s: Series, max_layers: int = 60) -> str | None:
    """log10 per-tensor gradient norm (rows: tensors, columns: recorded steps); non-finite in red."""
    names, steps, grid = s.layers
    if not names:
        return None
    names, grid = names[:max_layers], grid[:max_layers]
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.where(np.isfinite(grid) & (grid > 0), np.log10(np.where(grid > 0, grid, 1.0)), np.nan)
    cmap = _mpl().colormaps["viridis"].with_extremes(bad=NAN_COLOR)
    height = min(12.0, 1.5 + 0.22 * len(names))
    fig, ax = _figure(13.5, height)
    image = ax.imshow(np.ma.masked_invalid(logged), aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ticks = np.unique(np.linspace(0, len(steps) - 1, num=min(len(steps), 12)).astype(int))
    ax.set_xticks(ticks, [str(int(steps[t])) for t in ticks], fontsize=8)
    ax.set_xlabel("step (recorded steps only)")
    ax.set_title(f"Per-tensor gradient norm, log10 ({s.label}); red = non-finite or missing")
    fig.colorbar(image, ax=ax, label="log10 grad norm")
    return _png(fig)
