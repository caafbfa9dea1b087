"""Results of ``gradclip compare``: one record per (method, seed) run, and the JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gradclip._outcome import classify


@dataclass
class RunResult:
    """What one training run produced.

    Attributes:
        method: The method spec string (``"norm:1.0"``).
        seed: Seed of the model initialisation and batch order.
        final_loss: Loss on the whole training set after training ("final loss (train set)");
            ``None`` when it diverged.
        initial_loss: Loss on the whole training set before training.
        diverged: True when a loss or gradient became NaN/Inf (training stops there).
        outcome: ``"diverged"``, ``"exploded"``, ``"stalled"`` or ``"ok"``, as defined in
            :mod:`gradclip._outcome` (final against initial loss).
        first_nonfinite_step: The optimizer step (0-based) where that happened, else ``None``.
        steps: Optimizer steps taken (the step that went non-finite is logged, not taken).
        clipped_fraction: Fraction of steps whose gradients were changed by clipping.
        max_grad_norm: Largest finite pre-clip gradient norm seen, ``None`` if none was finite.
        seconds: Wall time of the run.
        test_accuracy: Accuracy on the held-out test set (classification tasks; ``None``
            otherwise). A diverged model is still evaluated: NaN logits give chance level or less.
        extra: Task-specific fields, written at the top level of :meth:`to_json` (the DP task's
            ``epsilon``, ``delta``, ``noise_multiplier``, ``clip``, ``fraction_clipped`` and
            memory fields); ``None`` (default) adds nothing, so other tasks' JSON is unchanged.
    """

    method: str
    seed: int
    final_loss: float | None
    initial_loss: float
    diverged: bool
    first_nonfinite_step: int | None
    steps: int
    clipped_fraction: float
    max_grad_norm: float | None
    seconds: float
    test_accuracy: float | None = None
    outcome: str = "ok"
    extra: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra") or {})
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def finite_or_none(x: float | None) -> float | None:
    """``x``, or ``None`` when it is NaN/Inf (JSON has no NaN)."""
    return x if x is None or math.isfinite(x) else None


def finish(method: str, seed: int, *, initial: float, final: float, accuracy: float | None,
           first_bad: int | None, steps: int, clipped: int, max_norm: float | None, seconds: float) -> RunResult:
    """The :class:`RunResult` of a finished training loop (every framework's runner ends here)."""
    diverged = first_bad is not None or not math.isfinite(final)
    return RunResult(
        method=method, seed=seed, final_loss=None if diverged else final, initial_loss=initial,
        diverged=diverged, first_nonfinite_step=first_bad, steps=steps,
        clipped_fraction=clipped / steps if steps else 0.0, max_grad_norm=max_norm,
        seconds=round(seconds, 3), test_accuracy=accuracy,
        outcome=classify(initial, None if diverged else final, nonfinite=diverged),
    )


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as indented JSON, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
