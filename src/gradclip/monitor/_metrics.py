"""Scalar metric names for dashboards, following PyTorch Lightning's ``grad_norm`` convention."""

from __future__ import annotations

import math
from typing import Any

#: Record key -> metric name, for the global scalars.
METRIC_NAMES = {
    "norm": "grad/norm_total",
    "clipped_norm": "grad/norm_total_clipped",
    "threshold": "grad/threshold",
    "coef": "grad/coef",
    "clipped": "grad/clipped",
    "skipped": "grad/skipped",
    "nonfinite": "grad/nonfinite",
    "spike": "grad/spike",
    "loss": "loss",
    "lr": "lr",
}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """Dashboard scalars of a record: ``grad/norm_total``, ``grad/norm/<name>``, ``loss``, ...

    Booleans become 0/1; missing, null and list values (per-tensor thresholds) are left out, so
    a dashboard never receives NaN. Per-layer gradient norms appear as ``grad/norm/<name>`` when
    the record holds layers; differential privacy values (the record's ``dp``) as ``dp/<key>``
    (``dp/fraction_clipped``, ``dp/norm_p50``, ``dp/clip``, ``dp/epsilon``, ...).

    Example:
        >>> scalars({"step": 3, "norm": 2.0, "clipped": True, "layers": {"fc.weight": {"grad_norm": 1.5}}})
        {'grad/norm_total': 2.0, 'grad/clipped': 1.0, 'grad/norm/fc.weight': 1.5}
    """
    out: dict[str, float] = {}
    for key, name in METRIC_NAMES.items():
        value = record.get(key)
        if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
            out[name] = float(value)
    dp = record.get("dp")
    for key, value in (dp.items() if isinstance(dp, dict) else ()):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"dp/{key}"] = float(value)
    for layer, detail in (record.get("layers") or {}).items():
        value = (detail or {}).get("grad_norm")
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[f"grad/norm/{layer}"] = float(value)
    return out
