"""Framework-neutral parts of a monitor step: a step known by its ClipStats, host reads, layers.

:class:`gradclip.Monitor` keeps the bookkeeping (step numbers, buffering, sinks); this module
holds what turns one step's measured values into Python values and per-layer detail.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Sequence
from typing import Any

from gradclip._errors import ConfigError, InputTypeError
from gradclip._stats import ClipStats
from gradclip.monitor._fetch import fetch

__all__ = ["DeferredStep", "PrivacyOnlyStep", "StatsStep", "fetch", "layers", "patterns", "selected", "step_probe"]


def step_probe(parameters: Any, clip_stats: ClipStats | None) -> Any:
    """What ``Monitor.step(parameters, clip_stats=...)`` reads the step from (checked now).

    Torch parameters or torch ClipStats give a torch step (:class:`DeferredStep` when the
    parameters are a module or absent: no walk over the model unless needed); ClipStats of
    another framework give a :class:`StatsStep`.

    Raises:
        ConfigError: neither ``parameters`` nor ``clip_stats``.
        InputTypeError: ``clip_stats`` that is not a ClipStats, or non-torch ``parameters``.
    """
    if parameters is None and clip_stats is None:
        raise ConfigError("Monitor.step needs the parameters (model), clip_stats, or both. Received neither.")
    if clip_stats is not None and not isinstance(clip_stats, ClipStats):
        raise InputTypeError(f"clip_stats must be a gradclip.ClipStats. Received: {type(clip_stats).__name__}.")
    torch = sys.modules.get("torch")
    if torch is not None and (parameters is not None or isinstance(clip_stats.norm, torch.Tensor)):
        if clip_stats is not None and isinstance(clip_stats.norm, torch.Tensor) and (
                parameters is None or isinstance(parameters, torch.nn.Module)):
            return DeferredStep(parameters, clip_stats)
        from gradclip.torch._monitor import TorchStep

        return TorchStep(parameters, clip_stats)
    if parameters is not None:
        raise InputTypeError("Monitor.step measures torch parameters; for other frameworks pass "
                             f"parameters=None and clip_stats=... Received: {type(parameters).__name__}.")
    return StatsStep(clip_stats)


class StatsStep:
    """A step known only by its ClipStats (any framework): global values, and per-layer gradient
    norms from ``stats.tensor_norms`` when the clipper measured them (no parameter norms)."""

    device = "cpu"

    def __init__(self, stats: ClipStats) -> None:
        self.stats = stats
        self.names: tuple[str, ...] = tuple(stats.names) if stats.tensor_norms is not None else ()

    def scalars(self) -> dict[str, Any]:
        s = self.stats
        return {"norm": s.norm, "clipped_norm": s.clipped_norm, "threshold": s.threshold, "coef": s.coef,
                "clipped": s.clipped, "skipped": s.skipped, "nonfinite": s.nonfinite}

    def offenders(self, exact: bool) -> Any:
        return lambda: self.stats.offenders

    def layers(self, keep: Sequence[int]) -> tuple[list[str], Any, None]:
        if not self.names:
            return [], None, None
        norms = [float(v) for v in _host_list(self.stats.tensor_norms)]
        return [self.names[i] for i in keep], [norms[i] for i in keep], None


class PrivacyOnlyStep:
    """A DP-SGD step known only by its privacy statistics (``Monitor.step(privacy=...)`` alone).

    The per-example clipping has no global pre-clip norm, so the record leaves out ``norm``,
    ``clipped_norm`` and ``coef`` (missing, not null: null would read as non-finite); ``threshold``
    is ``C``, ``clipped`` says whether any example was clipped and ``nonfinite`` whether the
    per-example norms of a non-empty batch held NaN/Inf. The rest is in the record's ``dp``.
    """

    device = "cpu"
    names: tuple[str, ...] = ()
    omitted = ("norm", "clipped_norm", "coef")

    def __init__(self, dp: dict[str, Any], batch_size: int | None) -> None:
        self.dp = dp
        quantiles = [dp[k] for k in ("norm_p10", "norm_p50", "norm_p90")]
        self.nonfinite = batch_size != 0 and any(q is None for q in quantiles)

    def scalars(self) -> dict[str, Any]:
        return {"norm": None, "clipped_norm": None, "threshold": self.dp["clip"], "coef": None,
                "clipped": bool(self.dp["fraction_clipped"]), "skipped": False, "nonfinite": self.nonfinite}

    def offenders(self, exact: bool) -> Any:
        return ()

    def layers(self, keep: Sequence[int]) -> tuple[list[str], None, None]:
        return [], None, None


class DeferredStep:
    """A torch step known by its ClipStats, whose parameters are looked at only when needed.

    The global values, the device and (through the ClipStats) the offenders need no pass over
    the model, so ``per_layer=False`` and a step that is not an anomaly under ``"on_anomaly"``
    cost no ``named_parameters()`` walk. The full :class:`gradclip.torch._monitor.TorchStep` is
    built on the first need (per-layer detail, naming the offenders). ``parameters`` must be
    ``None`` or a ``torch.nn.Module`` (nothing there can fail later), and ``stats.norm`` a tensor.
    """

    def __init__(self, parameters: Any, stats: ClipStats) -> None:
        self.parameters, self.stats = parameters, stats
        self.device = stats.norm.device.type
        self._step: Any = None

    @property
    def names(self) -> Any:
        return self.full().names

    def full(self) -> Any:
        """The :class:`gradclip.torch._monitor.TorchStep` of this step (built once)."""
        if self._step is None:
            from gradclip.torch._monitor import TorchStep

            self._step = TorchStep(self.parameters, self.stats)
        return self._step

    def scalars(self) -> dict[str, Any]:
        s = self.stats
        return {"norm": s.norm, "clipped_norm": s.clipped_norm, "threshold": s.threshold, "coef": s.coef,
                "clipped": s.clipped, "skipped": s.skipped, "nonfinite": s.nonfinite}

    def offenders(self, exact: bool) -> Any:
        return lambda: self.full().offenders(True)

    def layers(self, keep: Sequence[int]) -> Any:
        return self.full().layers(keep)


def _host_list(values: Any) -> list[Any]:
    """A 1-D array of any framework as a Python list."""
    if hasattr(values, "numpy"):
        values = values.numpy()
    return values.tolist() if hasattr(values, "tolist") else list(values)


def layers(names, grad_norms, param_norms, lr, coef, skipped) -> dict[str, dict[str, Any]]:
    """The record's ``layers``: ``{name: {"grad_norm", "param_norm", "update_ratio"}}``.

    Example:
        >>> layers(["w"], [2.0], [4.0], 0.1, 0.5, False)
        {'w': {'grad_norm': 2.0, 'param_norm': 4.0, 'update_ratio': 0.025}}
    """
    out = {}
    scale = 0.0 if skipped else (coef if isinstance(coef, (int, float)) else 1.0)
    for i, name in enumerate(names):
        g = grad_norms[i] if grad_norms is not None else None
        p = param_norms[i] if param_norms is not None else None
        ratio = None
        if lr is not None and g is not None and p:
            ratio = float(lr) * g * scale / p
        out[name] = {"grad_norm": g, "param_norm": p, "update_ratio": ratio}
    return out


def patterns(what: str, value: Any) -> tuple[str, ...]:
    """Glob patterns of ``include``/``exclude`` as a tuple of strings (one string is one pattern)."""
    if isinstance(value, str):
        value = (value,)
    value = tuple(value)
    bad = [v for v in value if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"{what} must be glob strings such as 'lstm.*'. Received: {bad[0]!r}.")
    return value


def selected(name: str, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    """Whether parameter ``name`` gets per-layer detail (``fnmatch`` patterns)."""
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in exclude)
