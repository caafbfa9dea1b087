"""The per-step record: one JSON object per optimizer step, shared by every writer and reader.

``gradclip compare --log-dir``, :class:`gradclip.Monitor` and every sink write these keys; the
report and the advisor read them. Keys other than ``step`` may be missing or ``null``.

Keys:
    step (int): optimizer step, 0-based.
    norm (float | null): global gradient norm before clipping (null when NaN/Inf).
    clipped_norm (float | null): global norm after clipping.
    threshold (float | list | null): the threshold used (a list for per-tensor thresholds).
    coef (float | null): global scale applied, when there is one.
    clipped (bool): the gradients were changed by clipping.
    skipped (bool): the step was skipped (non-finite gradients or a spike guard).
    nonfinite (bool): some gradient held NaN/Inf.
    loss (float | null), lr (float | null): when the user passes them.
    epoch (int): when known.
    spike (bool): the monitor's spike detector fired on this step.
    offenders (list[dict]): non-finite tensors, in parameter order:
        ``{"name", "shape", "nan", "inf"}``; the first one is the first offender.
    layers (dict[str, dict]): per-tensor detail when recorded:
        ``{name: {"grad_norm", "param_norm", "update_ratio"}}`` (any may be null).
    run (str): a run label, when several runs share a file.
"""

from __future__ import annotations

import math
from typing import Any

#: Scalar keys in the order writers emit them (CSV columns).
SCALAR_KEYS = (
    "step", "epoch", "loss", "lr", "norm", "clipped_norm", "threshold", "coef", "clipped", "skipped",
    "nonfinite", "spike",
)


def clean(value: Any) -> Any:
    """JSON-safe value: NaN/Inf floats become ``None``; tuples become lists; recurse into containers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value
