"""Differential privacy plots of run logs (base64 PNG, matplotlib imported lazily).

Three figures, drawn only when runs carry ``dp`` records (:mod:`gradclip.report._dp`), in the
style of :mod:`gradclip.report._plots`: one colour per method (the colours of the other plots),
the seeds of a method as their median with a min-max band.

* :func:`fraction_clipped_plot`: % of each step's examples whose gradient was clipped;
* :func:`norm_quantiles_plot`: one panel per method, the per-example norm quantiles p10/p50/p90
  with the clip bound ``C`` over them (log y; ``C`` moves with adaptive clipping);
* :func:`epsilon_plot`: the privacy spent so far, epsilon against the step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradclip.report._data import Series
from gradclip.report._dp import dp_runs
from gradclip.report._groups import Group, group_runs, stack
from gradclip.report._plots import (
    _colors,
    _figure,
    _group_label,
    _legend,
    _median_band,
    _mpl,
    _png,
    _quiet_reduce,
)

__all__ = ["epsilon_plot", "fraction_clipped_plot", "norm_quantiles_figure", "norm_quantiles_plot"]

C_COLOR = "#222222"


@dataclass
class _Column:
    """One dp column of a run, shaped for :func:`gradclip.report._groups.stack`."""

    step: np.ndarray
    value: np.ndarray


def _stack(runs: Sequence[Series], key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    return stack([_Column(s.step, scale * s.dp[key]) for s in runs], "value")  # type: ignore[list-item]


def _groups(runs: Sequence[Series]) -> list[tuple[Group, Any]]:
    """The methods with dp records and their colours (the colour each method has in the other plots)."""
    every = group_runs(runs)
    colors = dict(zip([g.name for g in every], _colors(len(every))))
    return [(g, colors[g.name]) for g in group_runs(dp_runs(runs))]


def _has(runs: Sequence[Series], key: str) -> bool:
    return any(np.isfinite(s.dp[key]).any() for s in dp_runs(runs))


def _band_note(groups: Sequence[tuple[Group, Any]]) -> str:
    return " (median over seeds, band = min-max)" if any(len(g.runs) > 1 for g, _ in groups) else ""


def _line_plot(runs: Sequence[Series], key: str, scale: float, ylabel: str, title: str) -> Any:
    groups = _groups(runs)
    fig, ax = _figure(11, 3.3)
    handles, labels = [], []
    for g, c in groups:
        handles.append(_median_band(ax, *_stack(g.runs, key, scale), c, lw=1.4))
        labels.append(_group_label(g))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title + _band_note(groups))
    ax.grid(alpha=0.3)
    _legend(ax, handles, labels, [])
    return fig, ax


def fraction_clipped_plot(runs: Sequence[Series]) -> str | None:
    """% of each step's examples whose gradient norm exceeded ``C``; ``None`` when no run logged it."""
    if not _has(runs, "fraction_clipped"):
        return None
    fig, ax = _line_plot(runs, "fraction_clipped", 100.0, "% of examples clipped",
                         "Examples clipped per step")
    ax.set_ylim(-3, 103)
    return _png(fig)


def epsilon_plot(runs: Sequence[Series]) -> str | None:
    """Privacy spent so far (epsilon at the run's delta) against the step; ``None`` when no run logged it."""
    if not _has(runs, "epsilon"):
        return None
    fig, ax = _line_plot(runs, "epsilon", 1.0, "\u03b5 spent so far", "Privacy spent (\u03b5 at the run's \u03b4)")
    ax.set_ylim(bottom=0)
    return _png(fig)


def _log_limits(runs: Sequence[Series]) -> tuple[float, float]:
    keys = ("norm_p10", "norm_p50", "norm_p90", "clip")
    values = np.concatenate([s.dp[k] for s in dp_runs(runs) for k in keys])
    values = values[np.isfinite(values) & (values > 0)]
    if not values.size:
        return 0.1, 10.0
    low, high = float(np.clip(values.min(), 1e-100, 1e100)), float(np.clip(values.max(), 1e-100, 1e100))
    if high / low < 10:  # at least one decade, centred on the data
        mid = math.sqrt(low * high)
        low, high = min(low, mid / math.sqrt(10)), max(high, mid * math.sqrt(10))
    return low / 1.5, high * 1.5


def norm_quantiles_plot(runs: Sequence[Series]) -> str | None:
    """Per-example norm quantiles and the clip bound, one panel per method; ``None`` without quantiles."""
    fig = norm_quantiles_figure(runs)
    return None if fig is None else _png(fig)


def norm_quantiles_figure(runs: Sequence[Series]) -> Any:
    """The matplotlib ``Figure`` of :func:`norm_quantiles_plot` (for tests), or ``None``."""
    if not any(_has(runs, k) for k in ("norm_p10", "norm_p50", "norm_p90")):
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _mpl()
    groups = _groups(runs)
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(11, 0.6 + 3.0 * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    low, high = _log_limits(runs)
    seeds = any(len(g.runs) > 1 for g, _ in groups)
    for ax, (g, c) in zip(axes, groups):
        _panel(ax, g, c, low, high)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel("per-example gradient norm")
    fig.suptitle("Per-example gradient norms (before clipping) and the clip bound C"
                 + (": median over seeds" if seeds else ""), fontsize=11)
    fig.legend(*zip(*_keys(seeds)), loc="lower center", ncol=4, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02 - 0.02 / nrows))
    fig.tight_layout(rect=(0, 0.06 / nrows + 0.02, 1, 1))
    return fig


def _panel(ax: Any, g: Group, c: Any, low: float, high: float) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.set_ylim(low, high)
    subs = (1.0, 2.0, 5.0) if high / low < 1e3 else (1.0,)  # ticks 1-2-5 per decade, written 0.2, 1, 5
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())

    def med(key: str) -> tuple[np.ndarray, np.ndarray]:
        steps, m = _stack(g.runs, key)
        return steps, np.clip(_quiet_reduce(np.nanmedian, m), low / 1e3, high * 1e3)

    steps, p10 = med("norm_p10")
    _, p50 = med("norm_p50")
    _, p90 = med("norm_p90")
    ax.fill_between(steps, p10, p90, color=c, alpha=0.2, lw=0)
    ax.plot(steps, p10, color=c, lw=0.9, ls="--")
    ax.plot(steps, p90, color=c, lw=0.9, ls="--")
    ax.plot(steps, p50, color=c, lw=1.6)
    c_steps, clip = _stack(g.runs, "clip")
    if np.isfinite(clip).any():
        clip = np.clip(clip, low / 1e3, high * 1e3)
        if len(g.runs) > 1:
            ax.fill_between(c_steps, _quiet_reduce(np.nanmin, clip), _quiet_reduce(np.nanmax, clip), color=C_COLOR,
                            alpha=0.12, lw=0)
        ax.plot(c_steps, _quiet_reduce(np.nanmedian, clip), color=C_COLOR, lw=1.6, ls=":")
    ax.set_title(_group_label(g), fontsize=9, color=c)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="both", lw=0.5)


def _keys(seeds: bool) -> list[tuple[Any, str]]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    gray = "#555555"
    keys = [(Line2D([], [], color=gray, lw=1.6), "p50 of the examples"),
            (Patch(color=gray, alpha=0.3, lw=0), "p10 to p90 of the examples (dashed edges)"),
            (Line2D([], [], color=C_COLOR, lw=1.6, ls=":"), "clip bound C")]
    if seeds:
        keys.append((Patch(color=C_COLOR, alpha=0.15, lw=0), "C: min-max over seeds"))
    return keys
