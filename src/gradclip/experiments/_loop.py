"""The training loop shared by every runner of ``gradclip compare`` (torch, Keras, TensorFlow).

The framework runner supplies one function per optimizer step and one for evaluation; this
loop does the batching (a seeded permutation per epoch), the per-step JSONL log, the stop at the
first non-finite loss or gradient, and the :class:`RunResult`.

The log of a run is one JSONL file: a ``{"event": "start", ...}`` record (run label, task,
framework, method, seed, policy spec, ``optimizer``, ``lr``, ``momentum``, time), one record per
step (batch ``loss``, the ``ClipStats`` values, ``layers``: the pre-clip per-tensor gradient
norms), and a
``{"event": "end", ...}`` record holding the run's :class:`RunResult` (final loss on the whole
training set, outcome, optimizer steps), so that the report shows the numbers the CLI prints.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gradclip._stats import ClipStats
from gradclip.experiments._results import RunResult, finish, finite_or_none
from gradclip.experiments._tasks import Data, Task

#: ``step(x_index) -> (loss, stats)``: one optimizer step on the batch of those rows. The step
#: must not update the weights when the loss or the gradients are non-finite.
StepFn = Callable[[np.ndarray], tuple[float, ClipStats]]
#: ``evaluate(x, y) -> (loss, accuracy or None)`` on whole arrays, no update.
EvalFn = Callable[[np.ndarray, np.ndarray], tuple[float, float | None]]
#: ``permutation(epoch) -> row indices`` of that epoch's batch order.
OrderFn = Callable[[int], np.ndarray]

KEEP = ("norm", "clipped_norm", "coef", "threshold", "clipped", "skipped", "nonfinite")


def train(task: Task, method: str, seed: int, data: Data, step: StepFn, evaluate: EvalFn,
          log_path: Path | None = None, *, framework: str, permutation: OrderFn | None = None) -> RunResult:
    """Run ``task.epochs`` epochs of ``step`` over seeded batches.

    Args:
        task, method, seed, data: The run (see :func:`gradclip.experiments.compare`).
        step: One optimizer step on the rows given (see :data:`StepFn`).
        evaluate: Loss (and accuracy) on whole arrays.
        log_path: When given, the run's JSONL log is written there (replacing an earlier one:
            ``compare`` owns its log folder).
        framework: Written into the log's start record.
        permutation: The batch order of an epoch; default ``numpy.random.default_rng(seed)``.

    Returns:
        The :class:`RunResult`; a run stops at the first non-finite loss or gradient.
    """
    start = time.perf_counter()
    initial, _ = evaluate(data.X, data.y)
    if permutation is None:
        rng = np.random.default_rng(seed)
        permutation = lambda epoch: rng.permutation(len(data.X))  # noqa: E731
    label = f"{method} seed {seed}"
    log = _open_log(log_path, label, task, framework, method, seed)
    n, clipped, max_norm, first_bad = 0, 0, None, None
    try:
        for epoch in range(task.epochs):
            perm = np.asarray(permutation(epoch))
            for i in range(0, len(data.X), task.batch_size):
                loss, stats = step(perm[i : i + task.batch_size])
                rec = stats.to_dict()
                if log:
                    head = {"run": label, "step": n, "epoch": epoch, "loss": finite_or_none(loss)}
                    log.write(json.dumps({**head, **{k: _clean(rec[k]) for k in KEEP}, **_layers(stats)}) + "\n")
                if not math.isfinite(loss) or rec["nonfinite"]:
                    first_bad = n
                    break
                max_norm = rec["norm"] if max_norm is None else max(max_norm, rec["norm"])
                clipped += bool(rec["clipped"])
                n += 1
            if first_bad is not None:
                break
        final, accuracy = evaluate(data.X, data.y)
        accuracy = evaluate(data.X_test, data.y_test)[1] if task.loss == "cross_entropy" and data.X_test is not None else None
        result = finish(method, seed, initial=initial, final=final, accuracy=accuracy, first_bad=first_bad, steps=n,
                        clipped=clipped, max_norm=max_norm, seconds=time.perf_counter() - start)
        if log:
            log.write(json.dumps({"event": "end", "run": label, **result.to_json()}) + "\n")
        return result
    finally:
        if log:
            log.close()


def _open_log(path: Path | None, label: str, task: Task, framework: str, method: str, seed: int) -> Any:
    if path is None:
        return None
    log = open(path, "w", encoding="utf-8")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    log.write(json.dumps({"event": "start", "run": label, "time": now, "task": task.name, "framework": framework,
                          "method": method, "seed": seed, "policy": method, "optimizer": task.optimizer,
                          "lr": task.lr, "momentum": task.momentum}) + "\n")
    return log


def _layers(stats: ClipStats) -> dict[str, Any]:
    """``{"layers": {name: {"grad_norm": x}}}`` from the pre-clip per-tensor norms, if measured."""
    norms = stats.tensor_norms
    if norms is None or not stats.names:
        return {}
    if hasattr(norms, "detach"):  # torch
        norms = norms.detach().cpu()
    values = np.asarray(norms, dtype=np.float64).reshape(-1).tolist()
    if len(values) != len(stats.names):
        return {}
    return {"layers": {name: {"grad_norm": finite_or_none(v)} for name, v in zip(stats.names, values)}}


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
