"""Runs grouped by method (the seeds of one method), and what a run's policy says about its threshold.

Kept apart from :mod:`gradclip.report._data` (per-run arrays and numbers) and used by the plots
and the HTML page.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gradclip._errors import GradclipError
from gradclip._outcome import OUTCOMES, count_text
from gradclip.monitor import RunLog

if TYPE_CHECKING:
    from gradclip.report._data import Series

_SEED_SUFFIX = re.compile(r"\s+seed\s+\d+$")


@dataclass
class Group:
    """The runs of one method (its seeds), in the order given."""

    name: str
    runs: list[Series]

    def outcomes(self) -> dict[str, int]:
        """``{outcome: count}`` over the runs, worst first, outcomes that occur only."""
        counts = {o: sum(s.outcome == o for s in self.runs) for o in OUTCOMES}
        return {o: n for o, n in counts.items() if n}

    def outcome_text(self) -> str:
        """``"ok 3"``, ``"stalled 2, exploded 1"`` (as in the CLI's table), or ``"-"`` without outcomes."""
        return count_text(s.outcome for s in self.runs if s.outcome is not None) or "-"


def method_of(log: RunLog) -> str:
    """The method a run belongs to: ``meta["method"]``, else its label without ``" seed N"``.

    Example:
        >>> from pathlib import Path
        >>> method_of(RunLog(Path("x.jsonl"), [{"run": "norm:1.0 seed 2"}]))
        'norm:1.0'
    """
    method = log.meta.get("method")
    if isinstance(method, str) and method:
        return method
    return _SEED_SUFFIX.sub("", log.label) or log.label


def policy_of(log: RunLog) -> Any:
    """The policy object of a run, from ``meta["policy"]``, ``meta["method"]`` or its method name; else ``None``."""
    from gradclip import parse_policy

    for spec in (log.meta.get("policy"), log.meta.get("method"), method_of(log)):
        if isinstance(spec, str) and spec:
            try:
                return parse_policy(spec)
            except (GradclipError, ValueError, TypeError):
                continue
    return None


def is_global_norm_policy(policy: Any) -> bool:
    """Whether a policy's threshold bounds the global gradient norm.

    Global: ``GlobalNorm``, ``AutoClip`` (global scope), ``ZClip``, ``MaxNormHistory``,
    ``SpikeGuard``, and a ``Chain`` whose last member is one of those (its logged threshold is the
    last member's). Not global: ``Value`` (an element bound), ``PerTensorNorm``, ``AdaGC``,
    ``AutoClip(scope="tensor")`` (per-tensor bounds), ``AGC`` (a per-unit ratio), ``NoClip``.

    Example:
        >>> import gradclip
        >>> is_global_norm_policy(gradclip.parse_policy("norm:1.0")), is_global_norm_policy(gradclip.parse_policy("value:1.0"))
        (True, False)
    """
    policy = policy.members()[-1]
    if getattr(policy, "spec_name", "") in ("value", "none"):
        return False
    return not (policy.needs_tensor_norms or policy.needs_unit_norms)


def group_runs(runs: Sequence[Series]) -> list[Group]:
    """The runs grouped by :attr:`Series.method`, groups in order of first appearance."""
    groups: dict[str, Group] = {}
    for s in runs:
        groups.setdefault(s.method, Group(s.method, [])).runs.append(s)
    return list(groups.values())


def stack(runs: Sequence[Series], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)``: the union of the runs' steps and one row per run (NaN where a run has no record)."""
    steps = np.unique(np.concatenate([s.step[np.isfinite(s.step)] for s in runs])) if runs else np.zeros(0)
    out = np.full((len(runs), len(steps)), np.nan)
    for i, s in enumerate(runs):
        ok = np.isfinite(s.step)
        out[i, np.searchsorted(steps, s.step[ok])] = getattr(s, key)[ok]
    return steps, out
