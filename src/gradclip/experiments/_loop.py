"""The training loop shared by the Keras and TensorFlow runners of ``gradclip compare``.

The framework runner supplies one function per optimizer step and one for evaluation; this
loop does the batching (same seeded permutation per epoch for every framework), the per-step
JSONL log, the stop at the first non-finite loss or gradient, and the :class:`RunResult`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gradclip.experiments._results import RunResult, finish, finite_or_none
from gradclip.experiments._tasks import Data, Task

#: ``step(x, y) -> (loss, stats)``: one optimizer step on a batch; ``stats`` is ClipStats.to_dict().
StepFn = Callable[[np.ndarray, np.ndarray], tuple[float, dict[str, Any]]]
#: ``evaluate(x, y) -> (loss, accuracy or None)`` on whole arrays, no update.
EvalFn = Callable[[np.ndarray, np.ndarray], tuple[float, float | None]]

KEEP = ("norm", "clipped_norm", "coef", "threshold", "clipped", "skipped", "nonfinite")


def train(task: Task, method: str, seed: int, data: Data, step: StepFn, evaluate: EvalFn,
          log_path: Path | None = None) -> RunResult:
    """Run ``task.epochs`` epochs of ``step`` over seeded batches; see the torch runner for the fields."""
    start = time.perf_counter()
    initial, _ = evaluate(data.X, data.y)
    order = np.random.default_rng(seed)
    log = open(log_path, "w") if log_path else None
    n, clipped, max_norm, first_bad = 0, 0, None, None
    try:
        for epoch in range(task.epochs):
            perm = order.permutation(len(data.X))
            for i in range(0, len(data.X), task.batch_size):
                idx = perm[i : i + task.batch_size]
                loss, rec = step(data.X[idx], data.y[idx])
                if log:
                    head = {"run": f"{method} seed {seed}", "step": n, "epoch": epoch, "loss": finite_or_none(loss)}
                    log.write(json.dumps({**head, **{k: _clean(rec[k]) for k in KEEP}}) + "\n")
                if not math.isfinite(loss) or rec["nonfinite"]:
                    first_bad = n
                    break
                max_norm = rec["norm"] if max_norm is None else max(max_norm, rec["norm"])
                clipped += bool(rec["clipped"])
                n += 1
            if first_bad is not None:
                break
    finally:
        if log:
            log.close()
    final, accuracy = evaluate(data.X, data.y)
    if task.loss == "cross_entropy" and data.X_test is not None:
        accuracy = evaluate(data.X_test, data.y_test)[1]
    else:
        accuracy = None
    return finish(method, seed, initial=initial, final=final, accuracy=accuracy, first_bad=first_bad, steps=n,
                  clipped=clipped, max_norm=max_norm, seconds=time.perf_counter() - start)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
