"""Framework-neutral parts of a monitor step: a step known by its ClipStats, host reads, layers.

:class:`gradclip.Monitor` keeps the bookkeeping (step numbers, buffering, sinks); this module
holds what turns one step's measured values into Python values and per-layer detail.
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Sequence
from typing import Any

from gradclip._errors import ConfigError
from gradclip._stats import ClipStats, _scalar

__all__ = ["PrivacyOnlyStep", "StatsStep", "fetch", "layers", "patterns", "selected"]


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


def _host_list(values: Any) -> list[Any]:
    """A 1-D array of any framework as a Python list."""
    if hasattr(values, "numpy"):
        values = values.numpy()
    return values.tolist() if hasattr(values, "tolist") else list(values)


def fetch(rows: list[list[Any]]) -> list[list[Any]]:
    """Python values for every row, with one host read per device for all torch tensors.

    Example:
        >>> fetch([[1.5, None, True]])
        [[1.5, None, True]]
    """
    flat = [v for row in rows for v in row]
    torch = sys.modules.get("torch")
    if torch is not None and any(isinstance(v, torch.Tensor) for v in flat):
        from gradclip.torch._monitor import fetch as torch_fetch

        flat = torch_fetch(flat)
    flat = [v if v is None or isinstance(v, (bool, int, float, list)) else _scalar(v) for v in flat]
    width = len(rows[0]) if rows else 0
    return [flat[i * width : (i + 1) * width] for i in range(len(rows))]


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
