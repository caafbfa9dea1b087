"""The threshold advisor behind ``gradclip suggest``: candidate thresholds from a run's norms.

References:
    Pascanu, Mikolov, Bengio. On the difficulty of training recurrent neural networks. ICML 2013
    (arXiv:1211.5063): clip the global norm; a threshold of 5-10x the average norm works well.
    Seetharaman, Wichern, Pardo, Le Roux. AutoClip: adaptive gradient clipping for source
    separation networks. MLSP 2020 (arXiv:2007.14469): clip at the p-th percentile of the norm
    history, p = 10.
    Kumar et al. ZClip: adaptive spike mitigation for LLM pre-training. 2025 (arXiv:2504.02507):
    EMA (alpha = 0.97) of the norm's mean and variance; a norm with z-score > 2.5 is a spike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gradclip._errors import LogError
from gradclip.monitor import RunLog
from gradclip.report._data import load_logs, series

#: The percentiles offered as candidates (AutoClip's rule is p = 10).
SUGGEST_PERCENTILES = (10, 25, 50, 90)
#: Multiples of the mean norm offered as candidates (Pascanu et al. 2013).
MEAN_MULTIPLES = (5, 10)
ZCLIP_ALPHA = 0.97
ZCLIP_Z = 2.5
ZCLIP_WARMUP = 25
#: A run whose largest finite norm is this many times its median is treated as exploding.
EXPLOSION_RATIO = 100.0


def _round(x: float) -> float:
    """Three significant digits, as a float (so the spec and the Python line read well)."""
    return float(f"{x:.3g}") if math.isfinite(x) and x > 0 else x


def zclip_end_threshold(norms: np.ndarray, alpha: float = ZCLIP_ALPHA, z: float = ZCLIP_Z) -> float:
    """ZClip's spike threshold ``mu + z * sigma`` with the EMA statistics at the end of the run.

    The statistics come from :func:`gradclip._reference.zclip_trajectory` (warm-up of
    ``min(25, n)`` steps, then an EMA with ``alpha``). Kumar et al. 2025.

    Example:
        >>> round(zclip_end_threshold(np.array([1.0, 1.0, 1.0, 3.0])), 3)
        3.665
    """
    from gradclip._reference import zclip_trajectory

    traj = zclip_trajectory(norms, alpha=alpha, z_thresh=z, warmup_steps=max(1, min(ZCLIP_WARMUP, len(norms))))
    mu, var = float(traj["mu"][-1]), float(traj["var"][-1])
    return mu + z * math.sqrt(max(var, 0.0))


def _norms(logs: Iterable[str | Path | RunLog] | str | Path | RunLog) -> tuple[np.ndarray, int, list[str]]:
    runs = [series(log) for log in load_logs(logs)]
    norms = np.concatenate([s.norm for s in runs])
    finite = norms[np.isfinite(norms)]
    if not finite.size:
        raise LogError(f"{', '.join(str(s.path) for s in runs)}: no finite 'norm' in any record; "
                       "suggest needs the pre-clip global norms of a run.")
    return finite, int(norms.size - finite.size), [str(s.path) for s in runs]


def suggest(logs: Iterable[str | Path | RunLog] | str | Path | RunLog) -> dict[str, Any]:
    """Suggest a global-norm clipping threshold from the pre-clip norms of a run.

    The finite pre-clip norms (``norm`` key) of all the logs given are pooled in order; the
    best input is an unclipped warm-up (``gradclip compare --method none`` or a ``Monitor`` with
    clipping off). Candidates: the 10/25/50/90th percentiles (AutoClip's p = 10 rule,
    Seetharaman et al. 2020), 5x and 10x the mean norm (Pascanu et al. 2013) and ZClip's
    z = 2.5 threshold with the EMA (alpha 0.97) statistics at the end of the run (Kumar et al.
    2025). Each comes with the fraction of the finite steps it would have clipped (norm >
    threshold). The recommendation is the 90th percentile for a stable run (it clips only the
    rare spikes) and the 10th percentile when the run exploded (its mean and upper percentiles
    are inflated by the explosion).

    Args:
        logs: One or several JSONL paths or :class:`gradclip.monitor.RunLog` objects.

    Returns:
        A JSON-ready dict: ``logs``, ``steps`` (finite norms used), ``nonfinite_steps``,
        ``norm`` (``mean``, ``min``, ``max``, ``p50``), ``exploded``, ``candidates`` (list of
        ``{"name", "threshold", "fraction_clipped", "rule"}``) and ``recommended``
        (``{"name", "threshold", "fraction_clipped", "reason", "spec", "python"}``).

    Raises:
        LogError: a log is missing, empty or corrupt, or holds no finite norm.

    Example:
        >>> from pathlib import Path
        >>> from gradclip.monitor import RunLog
        >>> log = RunLog(Path("warmup.jsonl"), [{"step": i, "norm": 1.0 + i % 10} for i in range(100)])
        >>> advice = suggest(log)
        >>> advice["recommended"]["spec"], advice["recommended"]["fraction_clipped"]
        ('norm:9.1', 0.1)
        >>> advice["recommended"]["python"]
        'gradclip.torch.Clipper(gradclip.GlobalNorm(9.1))'
    """
    norms, nonfinite, paths = _norms(logs)
    mean, p50 = float(norms.mean()), float(np.percentile(norms, 50))
    exploded = nonfinite > 0 or (p50 > 0 and float(norms.max()) / p50 > EXPLOSION_RATIO)
    raw: list[tuple[str, float, str]] = []
    for p in SUGGEST_PERCENTILES:
        rule = "; AutoClip's p=10 rule (Seetharaman et al. 2020)" if p == 10 else ""
        raw.append((f"p{p}", float(np.percentile(norms, p)), f"the {p}th percentile of the norms{rule}"))
    for k in MEAN_MULTIPLES:
        raw.append((f"mean_x{k}", k * mean, f"the mean norm times {k} (Pascanu et al. 2013)"))
    raw.append(("zclip_z2.5", zclip_end_threshold(norms),
                f"the ZClip mu + {ZCLIP_Z} sigma, EMA alpha {ZCLIP_ALPHA}, at the end of the run (Kumar et al. 2025)"))
    candidates = [{"name": name, "threshold": t, "fraction_clipped": float(np.mean(norms > t)), "rule": rule}
                  for name, t, rule in raw]
    pick = "p10" if exploded else "p90"
    chosen = next(c for c in candidates if c["name"] == pick)
    threshold = _round(chosen["threshold"])
    if exploded:
        why = (f"The run exploded ({'non-finite gradients' if nonfinite else 'max norm > 100x the median'}), so the "
               "mean and the upper percentiles are inflated by the explosion; the 10th percentile (AutoClip's p=10 "
               "rule) stays near the healthy norms.")
    else:
        why = (f"The norms are stable (max {float(norms.max()) / p50:.3g}x the median), so the 90th percentile clips "
               "only the rare spikes (about 10% of steps) and leaves typical updates unchanged.")
    recommended = {
        "name": pick, "threshold": threshold, "fraction_clipped": float(np.mean(norms > threshold)), "reason": why,
        "spec": f"norm:{threshold!r}", "python": f"gradclip.torch.Clipper(gradclip.GlobalNorm({threshold!r}))",
        "adaptive_spec": "autoclip:10" if exploded else "zclip",
    }
    return {
        "logs": paths, "steps": int(norms.size), "nonfinite_steps": nonfinite, "exploded": bool(exploded),
        "norm": {"mean": mean, "min": float(norms.min()), "max": float(norms.max()), "p50": p50},
        "candidates": candidates, "recommended": recommended,
    }


def render_suggestion(advice: dict[str, Any], as_json: bool = False) -> str:
    """Text (or JSON) for the output of :func:`suggest`.

    Example:
        >>> from pathlib import Path
        >>> from gradclip.monitor import RunLog
        >>> text = render_suggestion(suggest(RunLog(Path("a.jsonl"), [{"norm": 1.0}, {"norm": 2.0}])))
        >>> "recommended" in text
        True
    """
    if as_json:
        return json.dumps(advice, indent=2)
    from gradclip._render import table

    rows = [[c["name"], format(c["threshold"], ".4g"), f"{100 * c['fraction_clipped']:.1f}", c["rule"]]
            for c in advice["candidates"]]
    n = advice["norm"]
    rec = advice["recommended"]
    head = (f"norms of {advice['steps']} finite steps ({advice['nonfinite_steps']} non-finite): "
            f"mean {n['mean']:.4g}, median {n['p50']:.4g}, min {n['min']:.4g}, max {n['max']:.4g}")
    body = table(["candidate", "threshold", "% clipped", "rule"], rows)
    tail = (f"recommended: {rec['name']} = {rec['threshold']!r} "
            f"(would have clipped {100 * rec['fraction_clipped']:.1f}% of steps)\n"
            f"why: {rec['reason']}\n"
            f"policy spec: {rec['spec']}\n"
            f"python: {rec['python']}\n"
            f"adaptive alternative: {rec['adaptive_spec']}")
    return f"{head}\n\n{body}\n\n{tail}"
