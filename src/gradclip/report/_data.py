"""Arrays and summary numbers from run logs (no plotting, no HTML: each is testable alone)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradclip._errors import InputTypeError
from gradclip.monitor import RunLog, read_jsonl

#: Percentiles of the pre-clip global norm reported in the summary table.
PERCENTILES = (50, 90, 99)


def _float(value: Any) -> float:
    """A record value as float; ``None``, bools, strings and lists become NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


@dataclass
class Series:
    """The per-step arrays of one run, aligned on the records (one entry per record).

    Attributes:
        label: Legend name (:attr:`RunLog.label`).
        path: The log file.
        step: Step numbers (the record's ``step``, else its position).
        norm, clipped_norm, threshold, loss: float64, NaN where missing, null or non-numeric.
        clipped, spike, nonfinite, skipped: bool.
        first_offender: ``{"name", "shape", "nan", "inf"}`` of the first non-finite tensor, if logged.
        layers: ``(names, steps, grad_norms)``: per-tensor gradient norms (NaN when null) of the
            records that carry ``layers``; empty when none do.
        truncated: The log's last line was cut short and skipped.
    """

    label: str
    path: Path
    step: np.ndarray
    norm: np.ndarray
    clipped_norm: np.ndarray
    threshold: np.ndarray
    loss: np.ndarray
    clipped: np.ndarray
    spike: np.ndarray
    nonfinite: np.ndarray
    skipped: np.ndarray
    first_offender: dict[str, Any] | None = None
    layers: tuple[list[str], np.ndarray, np.ndarray] = field(
        default_factory=lambda: ([], np.zeros(0), np.zeros((0, 0))))
    truncated: bool = False


def load_logs(logs: Iterable[str | Path | RunLog] | str | Path | RunLog) -> list[RunLog]:
    """Read paths into :class:`RunLog` objects (a ``RunLog`` is kept as is).

    Raises:
        LogError: a file is missing, empty or corrupt (from :func:`gradclip.monitor.read_jsonl`).
        InputTypeError: an entry is neither a path nor a ``RunLog``, or no log was given.
    """
    if isinstance(logs, (str, Path, RunLog)):
        logs = [logs]
    out = []
    for item in logs:
        if isinstance(item, RunLog):
            out.append(item)
        elif isinstance(item, (str, Path)):
            out.append(read_jsonl(item))
        else:
            raise InputTypeError(f"A log must be a path or a gradclip.monitor.RunLog. Received: {type(item).__name__}.")
    if not out:
        raise InputTypeError("Pass at least one log (a .jsonl path or a RunLog). Received: an empty list.")
    return out


def _layers(records: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = [(i, r["layers"]) for i, r in enumerate(records) if isinstance(r.get("layers"), dict) and r["layers"]]
    if not rows:
        return [], np.zeros(0), np.zeros((0, 0))
    names = list(dict.fromkeys(name for _, layers in rows for name in layers))
    grid = np.full((len(names), len(rows)), np.nan)
    for col, (_, layers) in enumerate(rows):
        for r, name in enumerate(names):
            entry = layers.get(name)
            grid[r, col] = _float(entry.get("grad_norm")) if isinstance(entry, dict) else _float(entry)
    steps = np.array([_float(records[i].get("step", i)) for i, _ in rows])
    return names, steps, grid


def series(log: RunLog) -> Series:
    """The per-step arrays of one run log.

    Example:
        >>> from pathlib import Path
        >>> from gradclip.monitor import RunLog
        >>> s = series(RunLog(Path("a.jsonl"), [{"step": 0, "norm": 2.0}, {"step": 1, "norm": None}]))
        >>> s.norm.tolist()[0], bool(s.nonfinite[1])
        (2.0, True)
    """
    recs = log.records

    def col(key: str) -> np.ndarray:
        return np.array([_float(r.get(key)) for r in recs], dtype=np.float64)

    def flag(key: str) -> np.ndarray:
        return np.array([r.get(key) is True for r in recs], dtype=bool)

    norm = col("norm")
    # a record with a null norm and no explicit flag is non-finite too (writers store NaN/Inf as null)
    nonfinite = flag("nonfinite") | np.array(["norm" in r and r["norm"] is None for r in recs], dtype=bool)
    step = np.array([_float(r.get("step", i)) for i, r in enumerate(recs)])
    first = None
    for r in recs:
        offenders = r.get("offenders")
        if (r.get("nonfinite") is True or r.get("norm", 0.0) is None) and offenders:
            first = offenders[0] if isinstance(offenders[0], dict) else {"name": str(offenders[0])}
            break
    return Series(
        label=log.label, path=log.path, step=step, norm=norm, clipped_norm=col("clipped_norm"),
        threshold=col("threshold"), loss=col("loss"), clipped=flag("clipped"), spike=flag("spike"),
        nonfinite=nonfinite, skipped=flag("skipped"), first_offender=first, layers=_layers(recs),
        truncated=log.truncated,
    )


def _offender_text(offender: dict[str, Any] | None) -> str | None:
    if not offender:
        return None
    text = str(offender.get("name", "?"))
    if offender.get("shape") is not None:
        text += f" shape={tuple(offender['shape'])}"
    counts = [f"{k}={offender[k]}" for k in ("nan", "inf") if offender.get(k) is not None]
    return " ".join([text, *counts])


def summarize(logs: Iterable[str | Path | RunLog] | str | Path | RunLog) -> list[dict[str, Any]]:
    """The numbers of the report's summary table: one dict per run, in the order given.

    Percentiles use NumPy's default (linear) method over the finite pre-clip norms only; a
    non-finite (null) norm counts in ``nonfinite_steps`` instead.

    Args:
        logs: Paths of JSONL logs or :class:`gradclip.monitor.RunLog` objects.

    Returns:
        Per run: ``label``, ``path``, ``steps`` (records), ``clipped_pct`` (% of steps where
        clipping changed the gradients), ``norm_p50``/``norm_p90``/``norm_p99``/``norm_max``
        (``None`` without a finite norm), ``spikes``, ``nonfinite_steps``,
        ``first_nonfinite_step`` and ``first_offender`` (``None`` when there is none),
        ``final_loss`` and ``truncated``.

    Raises:
        LogError: a file is missing, empty or corrupt.

    Example:
        >>> from pathlib import Path
        >>> from gradclip.monitor import RunLog
        >>> recs = [{"step": i, "norm": float(i + 1), "clipped": i >= 2} for i in range(4)]
        >>> row = summarize([RunLog(Path("run.jsonl"), recs)])[0]
        >>> row["steps"], row["clipped_pct"], row["norm_max"]
        (4, 50.0, 4.0)
    """
    rows = []
    for log in load_logs(logs):
        s = series(log)
        finite = s.norm[np.isfinite(s.norm)]
        pct = np.percentile(finite, PERCENTILES) if finite.size else [None] * len(PERCENTILES)
        bad = np.flatnonzero(s.nonfinite)
        losses = s.loss[np.isfinite(s.loss)]
        row: dict[str, Any] = {"label": s.label, "path": str(s.path), "steps": len(s.step),
                               "clipped_pct": 100.0 * float(s.clipped.mean()) if len(s.step) else 0.0}
        for p, value in zip(PERCENTILES, pct):
            row[f"norm_p{p}"] = None if value is None else float(value)
        row.update({
            "norm_max": float(finite.max()) if finite.size else None,
            "spikes": int(s.spike.sum()),
            "nonfinite_steps": int(s.nonfinite.sum()),
            "first_nonfinite_step": int(s.step[bad[0]]) if bad.size else None,
            "first_offender": _offender_text(s.first_offender),
            "final_loss": float(s.loss[-1]) if len(s.loss) and np.isfinite(s.loss[-1]) else None,
            "last_finite_loss": float(losses[-1]) if losses.size else None,
            "truncated": s.truncated,
        })
        rows.append(row)
    return rows
