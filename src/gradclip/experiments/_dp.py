"""The DP-SGD runner of ``gradclip compare`` (``--task dp-digits``): one run of one privacy method.

Every method trains the same model on the same Poisson batches (a seeded Bernoulli mask per step,
``round(1 / q)`` steps an epoch, ``q = batch_size / n``: the sampling Opacus's ``DPDataLoader``
does and the accountant assumes); they differ only in how the batch gradient is made:

- ``nonprivate``: plain SGD on the batch's mean loss, no clipping, no noise (``epsilon`` None);
- ``flat``: :class:`~gradclip.privacy.PrivateStep`, one norm per example, per-example gradients
  materialised (``ghost=False``);
- ``flat-ghost``: the same with ghost norms (``ghost=True``): the same numbers up to rounding;
- ``per-layer``: one threshold per parameter, ``C / sqrt(P)`` each, so their L2 norm, and the
  noise, equal flat's;
- ``adaptive``: :class:`~gradclip.privacy.AdaptiveClip` (median, lr 0.2, starting at ``C``),
  with the unclipped count noised (``expected_batch_size / 20``, Andrew et al.), so the reported
  epsilon covers the count too.

The log is the one of :mod:`._loop` (start, step and end records); a private run's step record
carries ``"dp": {"fraction_clipped", "norm_p10", "norm_p50", "norm_p90", "clip", "epsilon"}``, a
nonprivate one ``"norm"`` (the batch gradient's norm). Memory is the resident set: on Linux the
kernel's high-water mark is reset at the start of each run (``/proc/self/clear_refs``), so
``peak_rss_mb`` is this run's peak (``VmHWM``) and ``peak_rss_growth_mb`` that peak minus the
resident set when the run started; elsewhere ``ru_maxrss``, the process's peak so far (then the
growth is 0 when a run stays under an earlier run's peak). torch's CPU allocations are invisible
to ``tracemalloc``, so it is not used.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradclip._errors import ConfigError
from gradclip.experiments._loop import _open_log
from gradclip.experiments._results import RunResult, finish, finite_or_none
from gradclip.experiments._tasks import Data, Task

__all__ = ["METHODS", "check_method", "run"]

#: The methods of a DP task (``--method``), in the order of the default list.
METHODS = ("nonprivate", "flat", "per-layer", "adaptive", "flat-ghost")
_NOISE_SEED = 1_000_003  # the noise generator's seed is seed + this (the sampling one is seed)


def check_method(task: Task, method: str) -> None:
    """Refuse a method the DP runner does not know.

    Raises:
        ConfigError: one line naming the valid methods.

    Example:
        >>> from gradclip.experiments import get_task
        >>> check_method(get_task("dp-digits"), "flat")
    """
    if method not in METHODS:
        raise ConfigError(f"Unknown method for task {task.name}; valid: {', '.join(METHODS)}. "
                          f"Received: {method!r}.")


def build_model(task: Task) -> torch.nn.Module:
    """An MLP of ``task.sizes`` with tanh between layers and torch's default initialisation."""
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(task.sizes[:-1], task.sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(task.sizes) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def _private_step(task: Task, method: str, model: torch.nn.Module, optimizer: Any, q: float, seed: int) -> Any:
    """The :class:`~gradclip.privacy.PrivateStep` of ``method`` (its noise seeded from ``seed``)."""
    from gradclip.privacy import AdaptiveClip, PrivateStep

    dp = task.privacy or {}
    c, sigma = float(dp["max_grad_norm"]), float(dp["noise_multiplier"])
    options: dict[str, Any] = {"max_grad_norm": c, "ghost": method == "flat-ghost"}
    if method == "per-layer":
        count = sum(p.requires_grad for p in model.parameters())
        options = {"max_grad_norm": [c / math.sqrt(count)] * count, "mode": "per_layer", "ghost": False}
    elif method == "adaptive":
        options = {"adaptive": AdaptiveClip(target_quantile=0.5, learning_rate=0.2, initial=c,
                                            count_noise_multiplier=task.batch_size / 20), "ghost": False}
    return PrivateStep(model, optimizer, noise_multiplier=sigma, expected_batch_size=task.batch_size,
                       sample_rate=q, accountant="rdp",
                       generator=torch.Generator().manual_seed(seed + _NOISE_SEED), **options)


class _Epsilon:
    """Epsilon after ``t`` steps of one ``(sigma, q)``, as Opacus's RDP accountant computes it.

    The accountant recomputes the RDP curve on every call (half a second on a slow CPU); the
    curve of ``t`` identical steps is ``t`` times that of one, so it is computed once here and
    the numbers are the accountant's (``PrivateStep.epsilon`` gives the run's final one).
    """

    def __init__(self, q: float, sigma: float, delta: float) -> None:
        from opacus.accountants import RDPAccountant
        from opacus.accountants.analysis.rdp import compute_rdp

        self._orders = RDPAccountant.DEFAULT_ALPHAS
        self._one = np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=self._orders))
        self._delta = delta

    def __call__(self, steps: int) -> float:
        from opacus.accountants.analysis.rdp import get_privacy_spent

        return float(get_privacy_spent(orders=self._orders, rdp=self._one * steps, delta=self._delta)[0])


def _maxrss_mb() -> float:
    """The process's peak resident set so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _status_mb(key: str) -> float | None:
    """``VmRSS``/``VmHWM`` of this process from ``/proc/self/status`` in MiB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(key + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 2**10


def _reset_peak() -> tuple[float, bool]:
    """Reset the kernel's resident-set high-water mark; return (resident MiB now, whether it was reset)."""
    now = _status_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return _maxrss_mb(), False
    return (now if now is not None else _maxrss_mb()), True


def _peak_since(reset: bool) -> float:
    """The resident-set peak since :func:`_reset_peak` (or the process's peak if it could not reset)."""
    peak = _status_mb("VmHWM") if reset else None
    return peak if peak is not None else _maxrss_mb()


def run(task: Task, method: str, seed: int, data: Data, log_path: Path | None = None) -> RunResult:
    """Train ``task``'s model with privacy ``method`` and report accuracy, epsilon, time and memory.

    Args:
        task: A task with ``privacy`` settings (``dp-digits``).
        method: One of :data:`METHODS`.
        seed: Seeds the initial weights, the Poisson sampling and the noise.
        data: The task's arrays from ``task.load()``.
        log_path: When given, the run's JSONL log is written there.

    Returns:
        The :class:`RunResult`; its ``extra`` holds ``epsilon``, ``delta``, ``noise_multiplier``,
        ``clip`` (the last threshold used), ``fraction_clipped`` (mean over steps of the share of
        examples clipped; all None for ``nonprivate``), ``peak_rss_mb`` and ``peak_rss_growth_mb``.
        ``clipped_fraction`` is ``fraction_clipped`` (0 for ``nonprivate``); ``max_grad_norm`` is
        the largest batch-gradient norm of ``nonprivate`` and None for private runs.

    Raises:
        ConfigError: an unknown method.
    """
    check_method(task, method)
    (rss0, reset), start = _reset_peak(), time.perf_counter()
    torch.manual_seed(seed)
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    model = build_model(task)
    optimizer = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum)
    q = task.batch_size / len(X)
    initial = _evaluate(model, X, y)[0]
    private = None if method == "nonprivate" else _private_step(task, method, model, optimizer, q, seed)
    dp = task.privacy or {}
    epsilon = None if private is None else _Epsilon(q, float(dp["noise_multiplier"]), float(dp["delta"]))
    label = f"{method} seed {seed}"
    log = _open_log(log_path, label, task, "torch", method, seed)

    def one_step(rows: torch.Tensor) -> tuple[float, dict[str, Any], float | None]:
        if private is None:
            return (*_plain_step(model, optimizer, X[rows], y[rows]), None)
        loss, record, stats = _private_batch(private, model, X[rows], y[rows], epsilon)
        return loss, record, None if stats is None else stats.fraction_clipped

    try:
        steps, first_bad, max_norm, fractions = _steps(task, len(X), seed, one_step, log, label)
        final = _evaluate(model, X, y)[0]
        accuracy = _evaluate(model, torch.from_numpy(data.X_test), torch.from_numpy(data.y_test))[1]
        result = finish(method, seed, initial=initial, final=final, accuracy=accuracy, first_bad=first_bad,
                        steps=steps, clipped=0, max_norm=max_norm, seconds=time.perf_counter() - start)
        result.clipped_fraction = float(np.mean(fractions)) if fractions else 0.0
        rss1 = _peak_since(reset)
        result.extra = {**_privacy_fields(task, private, fractions),
                        "peak_rss_mb": round(rss1, 1), "peak_rss_growth_mb": round(rss1 - rss0, 1)}
        if log:
            log.write(json.dumps({"event": "end", "run": label, **result.to_json()}) + "\n")
        return result
    finally:
        if private is not None:
            private.close()
        if log:
            log.close()


def _steps(task: Task, n: int, seed: int, one_step: Any, log: Any, label: str) -> tuple[int, int | None, float | None, list[float]]:
    """``task.epochs`` epochs of ``round(1 / q)`` Poisson batches (a seeded Bernoulli mask each).

    ``one_step(rows) -> (loss, record, fraction clipped or None)``; each step is logged, and the
    loop stops at the first non-finite loss. Returns the steps taken, that step (or None), the
    largest batch-gradient norm (nonprivate) and the fractions clipped (private).
    """
    q = task.batch_size / n
    sampler = torch.Generator().manual_seed(seed)
    steps, max_norm, fractions = 0, None, []
    for epoch in range(task.epochs):
        for _ in range(round(1 / q)):
            rows = torch.nonzero(torch.rand(n, generator=sampler) < q).squeeze(1)
            loss, record, fraction = one_step(rows)
            if log:
                head = {"run": label, "step": steps, "epoch": epoch, "loss": finite_or_none(loss), "batch_size": len(rows)}
                log.write(json.dumps({**head, **record}) + "\n")
            if not math.isfinite(loss):
                return steps, steps, max_norm, fractions
            if record.get("norm") is not None:
                max_norm = record["norm"] if max_norm is None else max(max_norm, record["norm"])
            if fraction is not None:
                fractions.append(fraction)
            steps += 1
    return steps, None, max_norm, fractions


def _plain_step(model: torch.nn.Module, optimizer: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict]:
    """One SGD step on the batch's mean loss; the weights stay when it is empty or non-finite."""
    if len(x) == 0:
        return 0.0, {"norm": 0.0}
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    value = loss.item()
    if math.isfinite(value) and math.isfinite(norm):
        optimizer.step()
    return value, {"norm": finite_or_none(norm)}


def _private_batch(private: Any, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   epsilon: _Epsilon) -> tuple[float, dict, Any]:
    """One DP-SGD step; returns the mean loss, the ``"dp"`` record and the :class:`PrivacyStats`."""
    losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    value = float(private.backward(losses)) if len(x) else 0.0
    if not math.isfinite(value):
        private.zero_grad()
        return value, {}, None
    private.step()
    s = private.last_stats()
    dp = {"fraction_clipped": s.fraction_clipped, "norm_p10": s.norm_p10, "norm_p50": s.norm_p50,
          "norm_p90": s.norm_p90, "clip": s.max_grad_norm, "epsilon": epsilon(s.steps)}
    return value, {"dp": {k: finite_or_none(v) for k, v in dp.items()}}, s


def _privacy_fields(task: Task, private: Any, fractions: list[float]) -> dict[str, Any]:
    """The privacy fields of the results JSON (all None for a nonprivate run)."""
    if private is None:
        return dict.fromkeys(("epsilon", "delta", "noise_multiplier", "clip", "fraction_clipped"))
    dp = task.privacy or {}
    steps = private.last_stats() is not None
    return {
        "epsilon": private.epsilon(float(dp["delta"])) if steps else 0.0, "delta": float(dp["delta"]),
        "noise_multiplier": float(dp["noise_multiplier"]), "clip": private.max_grad_norm,
        "fraction_clipped": float(np.mean(fractions)) if fractions else None,
    }


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on whole arrays (no update, no per-example hooks)."""
    out = model(x)
    return float(torch.nn.functional.cross_entropy(out, y)), float((out.argmax(dim=1) == y).double().mean())
