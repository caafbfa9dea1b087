"""Differential privacy in run logs: the ``dp`` object of each record as arrays, and per-method numbers.

A DP-SGD step record (``Monitor.step(privacy=...)``, ``gradclip compare --task dp-digits``) holds
``"dp": {"fraction_clipped", "norm_p10", "norm_p50", "norm_p90", "clip", "epsilon"}``
(:data:`gradclip.monitor._record.DP_KEYS`). The report draws them when any run carries them;
a log without them is read exactly as before.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gradclip.monitor._record import DP_KEYS

if TYPE_CHECKING:
    from gradclip.report._data import Series

__all__ = ["DP_KEYS", "dp_columns", "dp_runs", "dp_summary"]


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def dp_columns(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray] | None:
    """``{key: float64 array}``, one entry per record (NaN without a value), or ``None`` when no record has ``dp``.

    Example:
        >>> cols = dp_columns([{"step": 0}, {"step": 1, "dp": {"clip": 1.0, "epsilon": 0.5}}])
        >>> cols["clip"].tolist()[1], bool(np.isnan(cols["clip"][0])), bool(np.isnan(cols["norm_p50"][1]))
        (1.0, True, True)
        >>> dp_columns([{"step": 0}]) is None
        True
    """
    dps = [r.get("dp") if isinstance(r.get("dp"), dict) else None for r in records]
    if not any(d is not None for d in dps):
        return None
    return {k: np.array([_float((d or {}).get(k)) for d in dps], dtype=np.float64) for k in DP_KEYS}


def dp_runs(runs: Sequence[Series]) -> list[Series]:
    """The runs whose records carry ``dp`` values."""
    return [s for s in runs if s.dp is not None]


def _median(values: list[float]) -> float | None:
    values = [v for v in values if math.isfinite(v)]
    return float(np.median(values)) if values else None


def _last(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else math.nan


def dp_summary(runs: Sequence[Series]) -> list[dict[str, Any]]:
    """Per method (runs with ``dp`` only, in order of first appearance): the privacy numbers of the report.

    Returns:
        Per method: ``method``, ``runs``, ``final_epsilon`` (median over the runs of the last
        logged epsilon; ``None`` when none was logged), ``epsilon_min``/``epsilon_max`` (over the
        runs), ``fraction_clipped_pct`` (mean over the runs of the run's mean fraction of
        examples clipped, in percent), ``clip_first``/``clip_last`` (median over the runs of the
        first and last bound ``C``) and ``norm_p50`` (median over the runs of the run's median
        per-example norm).

    Example:
        >>> from pathlib import Path
        >>> from gradclip.monitor import RunLog
        >>> from gradclip.report._data import series
        >>> recs = [{"step": i, "dp": {"fraction_clipped": f, "norm_p10": 0.1, "norm_p50": 1.0, "norm_p90": 2.0,
        ...          "clip": 1.0, "epsilon": 0.1 * (i + 1)}} for i, f in enumerate([0.2, 0.4])]
        >>> row = dp_summary([series(RunLog(Path("a.jsonl"), recs))])[0]
        >>> row["final_epsilon"], round(row["fraction_clipped_pct"], 6), row["clip_last"]
        (0.2, 30.0, 1.0)
    """
    from gradclip.report._groups import group_runs

    out = []
    for g in group_runs(dp_runs(runs)):
        eps = [_last(s.dp["epsilon"]) for s in g.runs]
        finite_eps = [e for e in eps if math.isfinite(e)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a run without any value: NaN, left out
            fractions = [float(np.nanmean(s.dp["fraction_clipped"])) for s in g.runs]
            p50 = [float(np.nanmedian(s.dp["norm_p50"])) for s in g.runs]
        fractions = [f for f in fractions if math.isfinite(f)]
        clips = [s.dp["clip"][np.isfinite(s.dp["clip"])] for s in g.runs]
        out.append({
            "method": g.name, "runs": len(g.runs), "final_epsilon": _median(eps),
            "epsilon_min": min(finite_eps) if finite_eps else None,
            "epsilon_max": max(finite_eps) if finite_eps else None,
            "fraction_clipped_pct": 100.0 * float(np.mean(fractions)) if fractions else None,
            "clip_first": _median([float(c[0]) for c in clips if c.size]),
            "clip_last": _median([float(c[-1]) for c in clips if c.size]),
            "norm_p50": _median(p50),
        })
    return out
