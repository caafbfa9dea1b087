"""Arrays and summary numbers from run logs (no plotting, no HTML: each is testable alone).

Runs are grouped by method (the seeds of one method form a :class:`Group`); every run gets one
outcome (:mod:`gradclip._outcome`) and one spike count by one definition (:data:`SPIKE_DEFINITION`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradclip._errors import InputTypeError
from gradclip._outcome import OUTCOMES, classify
from gradclip.monitor import RunLog
from gradclip.monitor._spike import SpikeDetector
from gradclip.report._dp import dp_columns
from gradclip.report._groups import is_global_norm_policy, method_of, policy_of
from gradclip.report._text import value_text

#: Percentiles of the pre-clip global norm reported in the summary table.
PERCENTILES = (50, 90, 99)
#: The one meaning of "spike" in the Monitor and the report (the Monitor's default detector).
SPIKE_DEFINITION = (
    "spike: a finite pre-clip global norm more than {z:g} standard deviations above the mean of the previous "
    "{window} finite norms (the Monitor's SpikeDetector; judged once {min_history} earlier finite norms exist). "
    "Logs without spike flags are scored with the same detector; n/a = too few finite norms to judge."
).format(z=SpikeDetector().z, window=SpikeDetector().window, min_history=SpikeDetector().min_history)

#: The record fields the report reads, and the JSON types each may hold (``None`` is always allowed).
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("step", "norm", "clipped_norm", "threshold", "loss"), (int, float)),
    **dict.fromkeys(("clipped", "spike", "nonfinite", "skipped"), (bool,)),
    "layers": (dict,), "offenders": (list,),
}


def _float(value: Any) -> float:
    """A record value as float; ``None``, bools, strings and lists become NaN, a huge integer +-inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    try:
        return float(value)
    except OverflowError:  # an integer beyond 1.8e308
        return math.inf if value > 0 else -math.inf


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_JSON_TYPES = {"NoneType": "null", "str": "string", "dict": "object", "bool": "boolean", "int": "number",
               "float": "number"}


def _warn_bad_types(log: RunLog) -> None:
    """One warning per field that holds a type the report cannot read (the value is then ignored)."""
    bad: dict[str, list[Any]] = {}
    for i, r in enumerate(log.records):
        for key, types in FIELD_TYPES.items():
            value = r.get(key)
            ok = (value is None and key != "step") or (_is_number(value) if types == (int, float) else
                                                       isinstance(value, types))
            if key == "threshold" and isinstance(value, list):  # per-tensor thresholds (AdaGC, PerTensorNorm):
                ok = all(v is None or _is_number(v) for v in value)  # in the schema; not a global bound
            if key in r and not ok:
                bad.setdefault(key, [i, _JSON_TYPES.get(type(value).__name__, type(value).__name__), 0])[2] += 1
    for key, (first, kind, n) in bad.items():
        how = "the record's position is used instead" if key == "step" else "ignored"
        warnings.warn(f"{log.path}: {n} record(s) of run {value_text(log.label, 60)!r} hold a {kind} '{key}' "
                      f"(first: record {first + 1} of the run); {how}.", stacklevel=3)


#: Largest step magnitude taken as written: the span of two such steps is still a finite float.
MAX_STEP = 1e300


def _steps(records: Sequence[dict[str, Any]]) -> np.ndarray:
    """The step of each record: its ``step`` when a usable number, else its position in the run.

    Usable: finite and within ``MAX_STEP`` (1e300), so that the span between any two steps stays a
    finite float (a step of -1.8e308 overflowed the figure's x-axis).
    """
    out = np.array([_float(r.get("step")) for r in records], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(out) <= MAX_STEP)
    out[bad] = np.flatnonzero(bad)
    return out


def _first_offender(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first offending tensor of the first non-finite record that names one (any shape of ``offenders``)."""
    for r in records:
        offenders = r.get("offenders")
        if not (r.get("nonfinite") is True or r.get("norm", 0.0) is None) or not offenders:
            continue
        if isinstance(offenders, list):
            offenders = offenders[0]
        if isinstance(offenders, dict):
            return offenders
        return {"name": offenders}
    return None


@dataclass
class Series:
    """The per-step arrays of one run, aligned on the records (one entry per record), and its result.

    Attributes:
        label: Legend name (:attr:`RunLog.label`).
        path: The log file.
        step: Step numbers: the record's ``step`` when a finite number, else its position in the run.
        norm, clipped_norm, threshold, loss: float64, NaN where missing, null or non-numeric.
        clipped, spike, nonfinite, skipped: bool. ``spike`` holds the log's flags, or the
            detector's (:data:`SPIKE_DEFINITION`) when the log has none.
        first_offender: ``{"name", "shape", "nan", "inf"}`` of the first non-finite tensor, if logged.
        layers: ``(names, steps, grad_norms)``: per-tensor gradient norms (NaN when null) of the
            records that carry ``layers``; empty when none do.
        truncated: The log's last line was cut short and skipped.
        method: The group name: ``meta["method"]``, else the label without a trailing ``" seed N"``.
        policy: The run's policy object (:func:`gradclip.parse_policy` of ``meta["policy"]``,
            ``meta["method"]`` or ``method``), or ``None`` when none parses.
        outcome: One of :data:`gradclip._outcome.OUTCOMES`, or ``None`` without any loss.
        end: The run's ``{"event": "end"}`` record, or ``None``.
        spikes_logged: The spike flags come from the log (else from the detector).
        spikes_judged: At least one finite norm had enough history to be judged.
        dp: ``{key: array}`` of the records' ``dp`` objects (:func:`gradclip.report._dp.dp_columns`:
            fraction clipped, per-example norm p10/p50/p90, bound ``C``, epsilon), or ``None``
            when no record has one.
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
    method: str = ""
    policy: Any = None
    outcome: str | None = None
    end: dict[str, Any] | None = None
    spikes_logged: bool = False
    spikes_judged: bool = True
    dp: dict[str, np.ndarray] | None = None

    @property
    def global_threshold(self) -> bool:
        """Whether ``threshold`` is a bound on the global norm (drawn on the global-norm axis)."""
        if self.policy is None:  # unknown policy: trust the records
            return bool(np.isfinite(self.threshold).any())
        return is_global_norm_policy(self.policy)

    @property
    def steady(self) -> bool:
        """The run did not blow up (``ok`` or unknown): its values may set a plot's range."""
        return self.outcome in ("ok", None)


_SPIKE_CAP = 1e150


def detect_spikes(norm: np.ndarray) -> tuple[np.ndarray, bool]:
    """Spike flags of a norm series by :data:`SPIKE_DEFINITION`, and whether any step could be judged.

    Example:
        >>> flags, judged = detect_spikes(np.array([1.0, 1.1, 0.9] * 5 + [50.0]))
        >>> int(flags.sum()), judged
        (1, True)
        >>> detect_spikes(np.array([1.0, 2.0, 1e15]))[1]
        False
    """
    detector = SpikeDetector()
    # the detector squares deviations: a norm beyond ~1e154 would overflow; 1e150 is as much a spike
    capped = np.clip(norm, -_SPIKE_CAP, _SPIKE_CAP)
    flags = np.array([detector.update(float(x) if np.isfinite(x) else None)[0] for x in capped], dtype=bool)
    return flags, int(np.isfinite(norm).sum()) > detector.min_history


def _outcome(log: RunLog, loss: np.ndarray, nonfinite: np.ndarray) -> str | None:
    """``end["outcome"]``; else classified from ``end``'s losses; else from the first and last finite batch loss."""
    end = log.end or {}
    if end.get("outcome") in OUTCOMES:
        return end["outcome"]
    if "final_loss" in end:
        bad = end.get("first_nonfinite_step") is not None or bool(nonfinite.any())
        return classify(_float(end.get("initial_loss")), _float(end.get("final_loss")), nonfinite=bad)
    finite = loss[np.isfinite(loss)]
    if not finite.size:
        return "diverged" if nonfinite.any() else None
    return classify(float(finite[0]), float(finite[-1]), nonfinite=bool(nonfinite.any()))


def load_logs(logs: Iterable[str | Path | RunLog] | str | Path | RunLog) -> list[RunLog]:
    """Read paths into :class:`RunLog` objects, one per run (a ``RunLog`` is kept as is).

    A path gives one RunLog per run in it (:func:`gradclip.monitor.read_runs`: a resumed run
    appends a run to its log); runs without a step record (killed before their first step) are
    left out.

    Raises:
        LogError: a file is missing, empty or corrupt (from :func:`gradclip.monitor.read_runs`).
        InputTypeError: an entry is neither a path nor a ``RunLog``, or no log was given.
    """
    from gradclip.monitor import read_runs

    if isinstance(logs, (str, Path, RunLog)):
        logs = [logs]
    out = []
    for item in logs:
        if isinstance(item, RunLog):
            out.append(item)
        elif isinstance(item, (str, Path)):
            out.extend(run for run in read_runs(item) if run.records)
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
    steps = _steps(records)[[i for i, _ in rows]]
    return names, steps, grid


def series(log: RunLog) -> Series:
    """The per-step arrays of one run log, with its method, policy, outcome and spike flags.

    Example:
        >>> from pathlib import Path
        >>> from gradclip.monitor import RunLog
        >>> s = series(RunLog(Path("a.jsonl"), [{"step": 0, "norm": 2.0}, {"step": 1, "norm": None}]))
        >>> s.norm.tolist()[0], bool(s.nonfinite[1])
        (2.0, True)
    """
    recs = log.records
    _warn_bad_types(log)

    def col(key: str) -> np.ndarray:
        return np.array([_float(r.get(key)) for r in recs], dtype=np.float64)

    def flag(key: str) -> np.ndarray:
        return np.array([r.get(key) is True for r in recs], dtype=bool)

    norm, loss = col("norm"), col("loss")
    # a record with a null norm and no explicit flag is non-finite too (writers store NaN/Inf as null)
    nonfinite = flag("nonfinite") | np.array(["norm" in r and r["norm"] is None for r in recs], dtype=bool)
    step = _steps(recs)
    first = _first_offender(recs)
    spike, judged = detect_spikes(norm)
    logged = any("spike" in r for r in recs)
    if logged:
        spike = flag("spike")
        judged = judged or bool(spike.any())
    return Series(
        label=log.label, path=log.path, step=step, norm=norm, clipped_norm=col("clipped_norm"),
        threshold=col("threshold"), loss=loss, clipped=flag("clipped"), spike=spike,
        nonfinite=nonfinite, skipped=flag("skipped"), first_offender=first, layers=_layers(recs),
        truncated=log.truncated, method=method_of(log), policy=policy_of(log),
        outcome=_outcome(log, loss, nonfinite), end=log.end, spikes_logged=logged, spikes_judged=judged,
        dp=dp_columns(recs),
    )


def _offender_text(offender: dict[str, Any] | None) -> str | None:
    """``"name shape=(4, 3) nan=1 inf=0"``; a malformed field is shown as written, shortened."""
    if not offender:
        return None
    text = value_text(offender.get("name", "?"))
    if offender.get("shape") is not None:
        text += f" shape={value_text(offender['shape'])}"
    counts = [f"{k}={value_text(offender[k], 20)}" for k in ("nan", "inf") if offender.get(k) is not None]
    return " ".join([text, *counts])


def _end_number(end: dict[str, Any] | None, key: str) -> float | None:
    value = _float((end or {}).get(key))
    return value if math.isfinite(value) else None


def _row(s: Series) -> dict[str, Any]:
    finite = s.norm[np.isfinite(s.norm)]
    pct = np.percentile(finite, PERCENTILES) if finite.size else [None] * len(PERCENTILES)
    bad = np.flatnonzero(s.nonfinite)
    losses = s.loss[np.isfinite(s.loss)]
    healthy = ~s.nonfinite  # a non-finite step is not a clipping decision
    end = s.end or {}
    if isinstance(end.get("steps"), int) and not isinstance(end["steps"], bool):
        steps = end["steps"]
    else:
        steps = int(np.sum(healthy & ~s.skipped))
    clipped = _end_number(end, "clipped_fraction")
    clipped_pct = 100.0 * clipped if clipped is not None else (
        100.0 * float(s.clipped[healthy].mean()) if healthy.any() else 0.0)
    row: dict[str, Any] = {"label": s.label, "method": s.method, "path": str(s.path), "outcome": s.outcome,
                           "steps": steps, "logged_steps": len(s.step), "clipped_pct": clipped_pct}
    for p, value in zip(PERCENTILES, pct):
        row[f"norm_p{p}"] = None if value is None else float(value)
    row.update({
        "norm_max": float(finite.max()) if finite.size else None,
        "spikes": int(s.spike.sum()) if s.spikes_judged else None,
        "spikes_note": None if s.spikes_judged else f"n/a: {finite.size} finite norms",
        "spikes_source": "log" if s.spikes_logged else "detector",
        "nonfinite_steps": int(s.nonfinite.sum()),
        "first_nonfinite_step": int(s.step[bad[0]]) if bad.size else None,
        "first_offender": _offender_text(s.first_offender),
        "final_loss": _end_number(end, "final_loss"),
        "last_batch_loss": float(losses[-1]) if losses.size else None,
        "truncated": s.truncated,
    })
    return row


def summarize(logs: Iterable[str | Path | RunLog] | str | Path | RunLog) -> list[dict[str, Any]]:
    """The numbers of the report's per-run table: one dict per run, in the order given.

    Percentiles use NumPy's default (linear) method over the finite pre-clip norms only; a
    non-finite (null) norm counts in ``nonfinite_steps`` instead.

    Args:
        logs: Paths of JSONL logs or :class:`gradclip.monitor.RunLog` objects.

    Returns:
        Per run: ``label``, ``method``, ``path``, ``outcome`` (``end["outcome"]``, else classified
        from the first and last finite batch loss; ``None`` without a loss), ``steps`` (optimizer
        steps: ``end["steps"]``, else the records neither skipped nor non-finite),
        ``logged_steps`` (records, the non-finite one included), ``clipped_pct`` (% of the finite
        steps where the run's policy changed the gradients), ``norm_p50``/``norm_p90``/
        ``norm_p99``/``norm_max`` (``None`` without a finite norm), ``spikes`` (by
        :data:`SPIKE_DEFINITION`; ``None`` when the run is too short to judge, ``spikes_note``
        then says why), ``spikes_source`` (``"log"`` or ``"detector"``), ``nonfinite_steps``,
        ``first_nonfinite_step`` and ``first_offender`` (``None`` when there is none),
        ``final_loss`` (on the whole training set, from the end record; ``None`` without one or
        when the run diverged), ``last_batch_loss`` (the last finite batch loss) and ``truncated``.

    Raises:
        LogError: a file is missing, empty or corrupt.

    Example:
        >>> from pathlib import Path
        >>> from gradclip.monitor import RunLog
        >>> recs = [{"step": i, "norm": float(i + 1), "clipped": i >= 2} for i in range(4)]
        >>> row = summarize([RunLog(Path("run.jsonl"), recs)])[0]
        >>> row["steps"], row["clipped_pct"], row["norm_max"], row["spikes_note"]
        (4, 50.0, 4.0, 'n/a: 4 finite norms')
    """
    return [_row(series(log)) for log in load_logs(logs)]


def summarize_methods(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method (in order of first appearance): runs, outcomes, and means over the ``ok`` runs.

    Args:
        rows: :func:`summarize` rows.

    Returns:
        Per method: ``method``, ``runs``, ``outcomes`` (``{outcome: count}``), ``ok`` (count),
        ``mean_final_loss`` over the ok runs (the training-set loss when every ok run has one,
        else the last batch loss; ``loss_kind`` says which; ``None`` without an ok run),
        ``clipped_pct`` (mean over runs), ``spikes`` (total over the runs that could be judged,
        ``None`` when none could) and ``first_nonfinite_steps``.

    Example:
        >>> rows = [{"method": "m", "outcome": o, "final_loss": l, "last_batch_loss": l, "clipped_pct": 50.0,
        ...          "spikes": None, "first_nonfinite_step": None} for o, l in [("ok", 1.0), ("ok", 3.0), ("exploded", 9e9)]]
        >>> m = summarize_methods(rows)[0]
        >>> m["runs"], m["ok"], m["mean_final_loss"], m["loss_kind"]
        (3, 2, 2.0, 'train set')
    """
    by: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by.setdefault(row["method"], []).append(row)
    out = []
    for method, runs in by.items():
        ok = [r for r in runs if r["outcome"] == "ok"]
        kind = "train set" if ok and all(r["final_loss"] is not None for r in ok) else "last batch"
        losses = [r["final_loss"] if kind == "train set" else r["last_batch_loss"] for r in ok]
        losses = [x for x in losses if x is not None]
        judged = [r["spikes"] for r in runs if r["spikes"] is not None]
        out.append({
            "method": method, "runs": len(runs),
            "outcomes": {o: n for o in OUTCOMES if (n := sum(r["outcome"] == o for r in runs))},
            "ok": len(ok), "mean_final_loss": float(np.mean(losses)) if losses else None, "loss_kind": kind,
            "clipped_pct": float(np.mean([r["clipped_pct"] for r in runs])),
            "spikes": sum(judged) if judged else None,
            "first_nonfinite_steps": [r["first_nonfinite_step"] for r in runs if r["first_nonfinite_step"] is not None],
        })
    return out
