"""Matplotlib figures of run logs, returned as base64 PNG (Agg backend, imported lazily).

One colour and one legend entry per method: the seeds of a method draw as their median with a
min-max band. The y-range comes from the runs that did not blow up, so a diverged run cannot
squash the others; a run that leaves the range or goes non-finite is marked at the top edge.
``import gradclip`` must not import matplotlib, so every function imports it inside.
"""

from __future__ import annotations

import base64
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from gradclip.report._data import Series
from gradclip.report._groups import Group, group_runs, stack
from gradclip.report._text import display_label, plain

#: Ratio max/min of the positive values above which an axis switches to a log scale.
WIDE_RANGE = 100.0
#: Axis limits stay within +-BIG (a log axis from 1 / BIG): matplotlib's tick locators overflow near 1e308.
BIG = 1e100
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
    cmap = _mpl().colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _quiet_reduce(fn: Any, m: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():  # all-NaN columns give NaN, as wanted
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(m, axis=0)


def y_limits(runs: Sequence[Series], keys: Sequence[str]) -> tuple[float, float, bool] | None:
    """``(low, high, log)``: the y-range of a plot, set by the runs that did not blow up.

    Only ``ok`` runs (and runs without an outcome) count, so a norm of 1e15 in a diverged or
    exploded run cannot squash the others; when every run blew up, all runs count. The axis is
    logarithmic when the positive values span more than :data:`WIDE_RANGE`. ``None`` without a
    finite value.
    """
    for chosen in ([s for s in runs if s.steady], list(runs)):
        arrays = [getattr(s, k) for s in chosen for k in keys if k != "threshold" or s.global_threshold]
        values = np.concatenate(arrays) if arrays else np.zeros(0)
        values = values[np.isfinite(values)]
        if values.size:
            break
    else:
        return None
    values = np.clip(values, -BIG, BIG)
    pos = np.clip(values[values > 0], 1 / BIG, BIG)
    if pos.size and pos.max() / pos.min() > WIDE_RANGE:
        return max(float(pos.min()) / 1.6, 1 / BIG), min(float(pos.max()) * 1.6, BIG), True
    low, high = float(values.min()), float(values.max())
    pad = 0.06 * (high - low) if high > low else max(abs(high), 1.0) * 0.1
    return low - pad, high + pad, False


def _apply_limits(ax: Any, limits: tuple[float, float, bool] | None, groups: Sequence[Group], key: str) -> float:
    """Set the range, with head room for one label per method that leaves it; return the data's top.

    The top is ``inf`` when the plot has no finite value.
    """
    if limits is None:
        return float("inf")
    low, high, log = limits
    labels = sum(bool(_escapes(g, key, high)) for g in groups)
    room = min(0.45, (17 * labels + 12) / 250) if labels else 0.0  # ~250 pt of axes height
    if log:  # in decades: high * (high / low) ** (room / (1 - room)) may overflow
        ax.set_yscale("log")
        decades = math.log10(high) + (math.log10(high) - math.log10(low)) * room / (1 - room)
        ax.set_ylim(low, 10 ** min(decades, 150.0))
    else:
        ax.set_ylim(low, high + (high - low) * room / (1 - room))
    return high


def _onscreen(ax: Any, m: np.ndarray) -> np.ndarray:
    """Values pulled in to within 1000 axes heights of the view (3 decades on a log axis).

    A line to a point far off the axes looks the same, and Agg cannot draw a point at 1e308.
    """
    low, high = ax.get_ylim()
    if ax.get_yscale() == "log":
        return np.clip(m, max(low / 1e3, 1e-303), min(high * 1e3, 1e303))
    span = max(high - low, 1e-300)
    return np.clip(m, low - 1e3 * span, high + 1e3 * span)


def _median_band(ax: Any, steps: np.ndarray, m: np.ndarray, color: Any, faint: bool = False, **line: Any) -> Any:
    """The median over runs as a line and, for several runs, their min-max as a band.

    ``faint`` draws a method whose runs all blew up thinner and lighter, so it does not hide the others.
    """
    if faint:
        line = {**line, "lw": 0.8 * line.get("lw", 1.0), "alpha": 0.55}
    m = _onscreen(ax, m)
    (handle,) = ax.plot(steps, _quiet_reduce(np.nanmedian, m), color=color, **line)
    if len(m) > 1 and line.get("ls", "-") == "-":
        patch = ax.fill_between(steps, _quiet_reduce(np.nanmin, m), _quiet_reduce(np.nanmax, m), color=color,
                                alpha=0.07 if faint else 0.18, lw=0)
        return (patch, handle)
    return handle


def _escapes(g: Group, key: str, top: float) -> list[tuple[float, bool]]:
    """Per run that leaves the range: ``(first step above top or non-finite, went non-finite)``."""
    out = []
    for s in g.runs:
        values = getattr(s, key)
        above = np.flatnonzero(np.isfinite(values) & (values > top))
        bad = np.flatnonzero(s.nonfinite)
        firsts = [s.step[i[0]] for i in (above, bad) if i.size]
        if firsts:
            out.append((float(min(firsts)), bool(bad.size)))
    return out


def _mark_escapes(ax: Any, g: Group, key: str, top: float, color: Any, slot: list[float]) -> None:
    """A triangle at the top edge where each run leaves the range; one label per method.

    ``slot`` is ``[methods labelled so far, first step, last step]`` of the plot: labels stack
    instead of hiding each other, on the side of the marker with more room.
    """
    escapes = _escapes(g, key, top)
    if not escapes:
        return
    xs = [x for x, _ in escapes]
    ax.plot(xs, [1.0] * len(xs), ls="none", marker="^", ms=11, color=color, mec="black", mew=0.8,
            transform=ax.get_xaxis_transform(), clip_on=False, zorder=6)
    bad = [s for s in g.runs if s.nonfinite.any()]
    if bad:
        first = int(min(s.step[s.nonfinite][0] for s in bad))
        ax.axvline(first, color=color, lw=1.2, ls="--", alpha=0.8)
    what = f"non-finite @ step {first}" if bad else f"off scale from step {int(min(xs))}"
    runs = f" ({len(escapes)} of {len(g.runs)} runs)" if len(g.runs) > 1 else ""
    k = slot[0]
    slot[0] += 1
    left_half = min(xs) < (slot[1] + slot[2]) / 2
    ax.annotate(f"{plain(g.name)}: {what}{runs}", xy=(min(xs), 1.0), xycoords=("data", "axes fraction"),
                xytext=(10 if left_half else -10, -6 - 17 * k), textcoords="offset points",
                ha="left" if left_half else "right", va="top", color="black", fontsize=8.5,
                bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": color, "lw": 1.5, "alpha": 0.92})


def _slot(runs: Sequence[Series]) -> list[float]:
    steps = [s.step[np.isfinite(s.step)] for s in runs]
    steps = [x for x in steps if x.size]
    return [0, min(float(x.min()) for x in steps), max(float(x.max()) for x in steps)] if steps else [0, 0.0, 0.0]


def _group_label(g: Group) -> str:
    """The legend entry of a method: its name shortened and escaped, and its runs' outcomes."""
    if len(g.runs) == 1:
        return plain(g.name)
    text = g.outcome_text()
    return f"{plain(g.name)} ({len(g.runs)} runs" + (f": {text})" if text != f"{len(g.runs)} ok" and text != "-" else ")")


def _legend(ax: Any, handles: list[Any], labels: list[str], keys: list[tuple[Any, str]]) -> None:
    from matplotlib.legend_handler import HandlerTuple

    ax.legend([*handles, *(h for h, _ in keys)], [*labels, *(t for _, t in keys)], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), handler_map={tuple: HandlerTuple(ndivide=1)}, frameon=False)


def _style_keys(dashed: bool, dotted: bool, spikes: bool, escapes: bool, band: bool) -> list[tuple[Any, str]]:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    gray = "#555555"
    keys = [(Line2D([], [], color=gray, lw=1.4), "pre-clip norm" + (" (median)" if band else ""))]
    if band:
        keys.append((Patch(color=gray, alpha=0.25, lw=0), "min-max over seeds"))
    if dashed:
        keys.append((Line2D([], [], color=gray, lw=1.2, ls="--"), "post-clip norm"))
    if dotted:
        keys.append((Line2D([], [], color=gray, lw=1.4, ls=":"), "global-norm threshold"))
    if spikes:
        keys.append((Line2D([], [], ls="none", marker="v", ms=6, color="white", mec="black"), "spike"))
    if escapes:
        keys.append((Line2D([], [], ls="none", marker="^", ms=9, color=gray, mec="black"),
                     "left the range / non-finite"))
    return keys


def norm_plot(runs: Sequence[Series]) -> str:
    """Pre-clip (solid) and post-clip (dashed) global norm, threshold (dotted), spikes and escape marks."""
    return _png(norm_figure(runs))


def norm_figure(runs: Sequence[Series]) -> Any:
    """The matplotlib ``Figure`` of :func:`norm_plot` (for tests: legend, annotations, scale)."""
    fig, ax = _figure(11, 4.6)
    groups = group_runs(runs)
    top = _apply_limits(ax, y_limits(runs, ("norm", "clipped_norm", "threshold")), groups, "norm")
    slot = _slot(runs)
    handles, labels = [], []
    flags = {"dashed": False, "dotted": False, "spikes": False, "escapes": False, "band": False}
    for g, c in zip(groups, _colors(len(groups))):
        faint = bool(_escapes(g, "norm", top))  # drawn lighter: it leaves the range
        steps, pre = stack(g.runs, "norm")
        handles.append(_median_band(ax, steps, pre, c, faint, lw=1.4))
        labels.append(_group_label(g))
        flags["band"] |= len(g.runs) > 1
        if any(np.any(np.isfinite(s.clipped_norm) & (np.abs(s.clipped_norm - s.norm) > 1e-9 * np.abs(s.norm)))
               for s in g.runs):
            _median_band(ax, steps, stack(g.runs, "clipped_norm")[1], c, faint, lw=1.1, ls="--", alpha=0.9)
            flags["dashed"] = True
        with_threshold = [s for s in g.runs if s.global_threshold and np.isfinite(s.threshold).any()]
        if with_threshold:
            _median_band(ax, *stack(with_threshold, "threshold"), c, faint, lw=1.5, ls=":")
            flags["dotted"] = True
        for s in g.runs:
            hit = s.spike & (s.norm <= top)
            if hit.any():
                ax.plot(s.step[hit], s.norm[hit], ls="none", marker="v", ms=6, color=c, mec="black", mew=0.6, zorder=5)
                flags["spikes"] = True
        flags["escapes"] |= bool(_escapes(g, "norm", top))
        _mark_escapes(ax, g, "norm", top, c, slot)
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient norm")
    ax.set_title("Global gradient norm" + (" (median over seeds, band = min-max)" if flags["band"] else ""))
    ax.grid(alpha=0.3)
    _legend(ax, handles, labels, _style_keys(**flags))
    return fig


def loss_plot(runs: Sequence[Series]) -> str | None:
    """Batch loss over steps (median and min-max per method), or ``None`` when no run logged a loss."""
    if not any(np.isfinite(s.loss).any() for s in runs):
        return None
    fig, ax = _figure(11, 3.8)
    groups = group_runs(runs)
    top = _apply_limits(ax, y_limits(runs, ("loss",)), groups, "loss")
    slot = _slot(runs)
    handles, labels, escapes = [], [], False
    for g, c in zip(groups, _colors(len(groups))):
        handles.append(_median_band(ax, *stack(g.runs, "loss"), c, bool(_escapes(g, "loss", top)), lw=1.4))
        labels.append(_group_label(g))
        escapes |= bool(_escapes(g, "loss", top))
        _mark_escapes(ax, g, "loss", top, c, slot)
    band = any(len(g.runs) > 1 for g in groups)
    ax.set_xlabel("step")
    ax.set_ylabel("batch loss")
    ax.set_title("Batch loss" + (" (median over seeds, band = min-max)" if band else ""))
    ax.grid(alpha=0.3)
    keys = _style_keys(False, False, False, escapes, band)[0 if band else 1:]
    _legend(ax, handles, labels, [(h, t.replace("pre-clip norm", "batch loss")) for h, t in keys])
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


def constant_rate(s: Series) -> float | None:
    """100.0 when the policy clipped every finite step, 0.0 when it clipped none, else ``None``."""
    decided = s.clipped[~s.nonfinite]
    if not decided.size or not decided.any():
        return 0.0
    return 100.0 if decided.all() else None


def clip_rate_sentence(runs: Sequence[Series]) -> str:
    """Which methods clipped every step and which never (the clip-rate plot leaves them out)."""
    every, never = [], []
    for g in group_runs(runs):
        rates = {constant_rate(s) for s in g.runs}
        if rates == {100.0}:
            every.append(g.name)
        elif rates == {0.0}:
            never.append(g.name)
    parts = []
    if every:
        parts.append(f"{', '.join(map(display_label, every))} clipped every step")
    if never:
        parts.append(f"{', '.join(map(display_label, never))} never clipped")
    return "; ".join(parts) + "." if parts else ""


def clip_rate_plot(runs: Sequence[Series]) -> str | None:
    """Rolling % of steps clipped by each method's policy, for methods whose rate varies; else ``None``."""
    groups = [g for g in group_runs(runs) if {constant_rate(s) for s in g.runs} not in ({0.0}, {100.0})]
    if not groups:
        return None
    fig, ax = _figure(11, 3.2)
    handles, labels = [], []
    colors = dict(zip([g.name for g in group_runs(runs)], _colors(len(group_runs(runs)))))
    for g in groups:
        w = window_for(max(len(s.step) for s in g.runs))
        rates = [replace(s, clipped=rolling_rate(s.clipped & ~s.nonfinite, w)) for s in g.runs]
        steps, m = stack(rates, "clipped")
        for s, row in zip(g.runs, m):  # no rate at and after a non-finite step
            row[np.searchsorted(steps, s.step[s.nonfinite])] = np.nan
        handles.append(_median_band(ax, steps, m, colors[g.name], lw=1.4))
        labels.append(f"{_group_label(g)}, window {w}")
    ax.set_ylim(-3, 103)
    ax.set_xlabel("step")
    ax.set_ylabel("% of steps clipped")
    ax.set_title("Clip rate of each method's policy (rolling)")
    ax.grid(alpha=0.3)
    _legend(ax, handles, labels, [])
    return _png(fig)


def _short_names(names: list[str]) -> list[str]:
    """Layer names without the dotted prefix they all share (``model.encoder.`` ...)."""
    parts = [n.split(".") for n in names]
    k = 0
    while len(names) > 1 and all(len(p) > k + 1 and p[k] == parts[0][k] for p in parts):
        k += 1
    return [".".join(p[k:]) for p in parts]


def group_layers(g: Group) -> tuple[list[str], np.ndarray, np.ndarray, str] | None:
    """``(names, steps, grid, how)`` of a method: the median over its seeds when they logged the
    same tensors at the same steps, else its first run with layers; ``None`` when none has any."""
    runs = [s for s in g.runs if s.layers[0]]
    if not runs:
        return None
    names, steps, grid = runs[0].layers
    same = [s for s in runs if s.layers[0] == names and np.array_equal(s.layers[1], steps)]
    if len(same) > 1:
        return names, steps, _quiet_reduce(np.nanmedian, np.stack([s.layers[2] for s in same])), \
            f"median of {len(same)} runs"
    return names, steps, grid, runs[0].label


def _log10(grid: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(grid) & (grid > 0), np.log10(np.where(grid > 0, grid, 1.0)), np.nan)


def layer_heatmaps(runs: Sequence[Series], max_layers: int = 60) -> list[tuple[str, str]]:
    """``(method, png)`` per method whose runs carry ``layers``: log10 per-tensor gradient norm.

    All heatmaps share one colour scale (the 1st-99th percentile of the methods that did not blow
    up, so they compare at a glance); non-finite or missing cells are red.
    """
    found = [(g, data) for g in group_runs(runs) if (data := group_layers(g)) is not None]
    if not found:
        return []
    pools = [[_log10(d[2]) for g, d in found if all(s.steady for s in g.runs)], [_log10(d[2]) for _, d in found]]
    values = next((v for v in (np.concatenate([x.ravel() for x in p]) if p else np.zeros(0) for p in pools)
                   if np.isfinite(v).any()), np.zeros(0))
    values = values[np.isfinite(values)]
    vmin, vmax = (np.percentile(values, [1, 99]) if values.size else (0.0, 1.0))
    vmax = max(vmax, vmin + 1e-6)
    cmap = _mpl().colormaps["viridis"].with_extremes(bad=NAN_COLOR)
    out = []
    for g, (names, steps, grid, how) in found:
        names, grid = _short_names(names[:max_layers]), grid[:max_layers]
        fig, ax = _figure(7.0, min(9.0, 1.4 + 0.2 * len(names)))
        image = ax.imshow(np.ma.masked_invalid(_log10(grid)), aspect="auto", cmap=cmap, interpolation="nearest",
                          vmin=vmin, vmax=vmax)
        ax.set_yticks(range(len(names)), [plain(n) for n in names], fontsize=8)
        from matplotlib.ticker import MaxNLocator

        nice = [x for x in MaxNLocator(nbins=8, integer=True).tick_values(steps[0], steps[-1]) if steps[0] <= x <= steps[-1]]
        ticks = np.flatnonzero(np.isin(steps, nice))  # round steps that were recorded, else spread evenly
        if ticks.size < 2:
            ticks = np.unique(np.linspace(0, len(steps) - 1, num=min(len(steps), 8)).astype(int))
        ax.set_xticks(ticks, [str(int(steps[t])) for t in ticks], fontsize=8)
        ax.set_xlabel("step")
        ax.set_title(f"{plain(g.name)} ({plain(how)})" if len(g.runs) > 1 else plain(g.name), fontsize=10)
        fig.colorbar(image, ax=ax, label="log10 grad norm", extend="both", pad=0.02)
        out.append((g.name, _png(fig)))
    return out


def layer_heatmap(s: Series, max_layers: int = 60) -> str | None:
    """The heatmap of one run (see :func:`layer_heatmaps`), or ``None`` without ``layers``."""
    maps = layer_heatmaps([s], max_layers)
    return maps[0][1] if maps else None
