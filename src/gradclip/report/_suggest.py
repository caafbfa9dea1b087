"""The threshold advisor behind ``gradclip suggest``: read a run, propose thresholds, test them.

The advisor first says what kind of log it read, because that decides what its norms are
evidence of:

- ``unclipped``: the pre-clip norms are those of plain training, the best evidence;
- ``clipped``: clipping shaped the trajectory, so its pre-clip norms are not the norms an
  unclipped run would have had (they may grow *because* every update was small);
- ``diverged`` / ``exploded``: the norms before the blow-up say little about a healthy run;
- ``too short``: fewer than :data:`MIN_STEPS` finite norms are no evidence at all.

Then it lists candidates and picks one by rules, and says plainly that this pick is unverified.
With verification (:mod:`gradclip.report._verify`) every candidate is trained with, and the pick is
the one that reached the lowest loss with an ``ok`` outcome.

References:
    Pascanu, Mikolov, Bengio. On the difficulty of training recurrent neural networks. ICML 2013
    (arXiv:1211.5063): clip the global norm; 5-10x the average norm.
    Seetharaman, Wichern, Pardo, Le Roux. AutoClip: adaptive gradient clipping for source
    separation networks. MLSP 2020 (arXiv:2007.14469): the p-th percentile of the norm history.
    Kumar et al. ZClip: adaptive spike mitigation for LLM pre-training. 2025 (arXiv:2504.02507):
    EMA (alpha = 0.97) of the norm's mean and variance; z-score > 2.5 is clipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gradclip._errors import LogError
from gradclip._outcome import classify, worst
from gradclip.monitor import RunLog
from gradclip.report._data import detect_spikes, load_logs, series

#: Fewer finite norms than this and the log is "too short": a loud warning, and no rule-based pick
#: is better than a guess.
MIN_STEPS = 20
#: The percentiles offered as candidates (AutoClip's rule is p = 10).
SUGGEST_PERCENTILES = (10, 25, 50, 90, 99)
#: Multiples of the mean norm offered as candidates (Pascanu et al. 2013).
MEAN_MULTIPLES = (5, 10)
#: Decades below the smallest logged norm offered when a run blew up or was clipped.
LADDER = (1, 2, 3, 4)
ZCLIP_ALPHA = 0.97
ZCLIP_Z = 2.5
ZCLIP_WARMUP = 25
#: How the recommended threshold is written for each framework the log can come from.
SNIPPETS = {
    "torch": "gradclip.torch.Clipper(gradclip.GlobalNorm({t!r}))",
    "keras": "gradclip.keras.clipped(optimizer, gradclip.GlobalNorm({t!r}))",
    "tensorflow": "gradclip.tensorflow.Clipper(gradclip.GlobalNorm({t!r}))",
    "jax": "gradclip.jax.clipped(optimizer, gradclip.GlobalNorm({t!r}))",
}


def _round(x: float, up: bool = False) -> float:
    """Three significant digits, as a float (rounded up with ``up``, so a cap stays above a norm)."""
    if not (math.isfinite(x) and x > 0):
        return x
    r = float(f"{x:.3g}")
    if up and r < x:
        scale = 10 ** (math.floor(math.log10(x)) - 2)
        r = float(f"{math.ceil(x / scale) * scale:.3g}")
    return r


def zclip_end_threshold(norms: np.ndarray, alpha: float = ZCLIP_ALPHA, z: float = ZCLIP_Z) -> float:
    """ZClip's spike threshold ``mu + z * sigma`` with the EMA statistics at the end of the run.

    The statistics come from :func:`gradclip._reference.zclip_trajectory` (warm-up of
    ``min(25, n)`` steps, then an EMA with ``alpha``). Kumar et al. 2025.

    Example:
        >>> round(zclip_end_threshold(np.array([1.0, 1.0, 1.0, 3.0])), 3)
        3.665
    """
    from gradclip._reference import zclip_trajectory

    try:
        traj = zclip_trajectory(norms, alpha=alpha, z_thresh=z, warmup_steps=max(1, min(ZCLIP_WARMUP, len(norms))),
                                max_norm=None)
    except (OverflowError, FloatingPointError):  # norms near 1e308: their squares overflow
        return math.nan
    mu, var = float(traj["mu"][-1]), float(traj["var"][-1])
    return mu + z * math.sqrt(max(var, 0.0))


def _nonspike_max(norms: np.ndarray) -> tuple[float, int]:
    """Largest norm that is not a spike by the report's one definition, and how many are."""
    flags, _ = detect_spikes(norms)
    return float(norms[~flags].max()), int(flags.sum())


def _used_threshold(logs: list[RunLog], parts: list[Any]) -> float | None:
    """The global-norm cap a clipped run used (from its policy spec, else its logged thresholds)."""
    import gradclip

    for log in logs:
        spec = log.meta.get("policy") or log.meta.get("method")
        if isinstance(spec, str):
            try:
                policy = gradclip.parse_policy(spec)
            except gradclip.GradclipError:
                continue
            if isinstance(policy, gradclip.GlobalNorm):
                return float(policy.max_norm)
    values = np.concatenate([s.threshold for s in parts])  # the series analyse() already read
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.median(values)) if values.size else None


def analyse(logs: Iterable[str | Path | RunLog] | str | Path | RunLog) -> dict[str, Any]:
    """What a log is evidence of: its kind, norms, outcome, framework and task.

    Raises:
        LogError: a log is missing, empty or corrupt, or holds no finite norm, or only zero norms.
    """
    runs = load_logs(logs)
    parts = [series(log) for log in runs]
    norms = np.concatenate([s.norm for s in parts])
    finite = norms[np.isfinite(norms)]
    if not finite.size:
        raise LogError(f"{', '.join(str(s.path) for s in parts)}: no finite 'norm' in any record; "
                       "suggest needs the pre-clip global norms of a run.")
    if not (finite > 0).any():
        raise LogError(f"{', '.join(str(s.path) for s in parts)}: every finite 'norm' is 0 (no gradient reached the "
                       "parameters), so the log says nothing about a threshold; check that the model trains.")
    nonfinite = int(sum(int(s.nonfinite.sum()) for s in parts))
    clipped = float(np.mean(np.concatenate([s.clipped for s in parts]))) if len(norms) else 0.0
    ends = [log.end for log in runs if log.end and log.end.get("outcome")]
    if ends:
        outcome = worst(e["outcome"] for e in ends)
    else:
        losses = np.concatenate([s.loss for s in parts])
        losses = losses[np.isfinite(losses)]
        first, last = (float(losses[0]), float(losses[-1])) if losses.size else (None, None)
        outcome = classify(first, last, nonfinite=nonfinite > 0) if losses.size or nonfinite else "unknown"
    kind = ["diverged" if outcome == "diverged" or nonfinite else "exploded" if outcome == "exploded" else "",
            "clipped" if clipped > 0 else "unclipped", "too short" if finite.size < MIN_STEPS else ""]
    meta = next((m for log in runs for m in (log.meta, log.end or {}) if m.get("framework")), {})
    task = next((log.meta["task"] for log in runs if log.meta.get("task")), None)
    return {"logs": [str(s.path) for s in parts], "kind": [k for k in kind if k], "outcome": outcome,
            "steps": int(finite.size), "nonfinite_steps": nonfinite, "clipped_fraction": clipped,
            "framework": meta.get("framework"), "task": task, "norms": finite,
            "used_threshold": _used_threshold(runs, parts) if clipped > 0 else None}


def candidates(info: dict[str, Any]) -> list[dict[str, Any]]:
    """Candidate thresholds with the rule behind each and the share of logged steps above it."""
    norms = info["norms"]
    raw: list[tuple[str, float, str]] = []
    for p in SUGGEST_PERCENTILES:
        rule = "; AutoClip's p=10 rule (Seetharaman et al. 2020)" if p == 10 else ""
        raw.append((f"p{p}", float(np.percentile(norms, p)), f"the {p}th percentile of the norms{rule}"))
    for k in MEAN_MULTIPLES:
        raw.append((f"mean_x{k}", k * float(norms.mean()), f"the mean norm times {k} (Pascanu et al. 2013)"))
    raw.append(("zclip_z2.5", zclip_end_threshold(norms),
                f"ZClip's mu + {ZCLIP_Z} sigma, EMA alpha {ZCLIP_ALPHA}, at the end of the run (Kumar et al. 2025)"))
    if norms.size >= MIN_STEPS:
        top, n = _nonspike_max(norms)
        raw.append(("max_nonspike", _round(top, up=True), f"the largest norm that is not a spike ({n} spike(s): "
                    "z > 4 against the previous 50 norms, the Monitor's definition)"))
    if info["used_threshold"] is not None:
        raw.append(("run_threshold", info["used_threshold"], "the threshold this run was clipped at"))
    if {"diverged", "exploded", "clipped"} & set(info["kind"]):
        low = float(norms[norms > 0].min())
        for k in LADDER:
            raw.append((f"min/1e{k}", low / 10**k, f"the smallest positive logged norm / 10^{k}"))
    # a threshold of 0 zeroes every gradient, an infinite one (norms near 1e308 overflow) clips nothing
    return [{"name": name, "threshold": t, "fraction_clipped": float(np.mean(norms > t)), "rule": rule}
            for name, t, rule in raw if math.isfinite(t) and t > 0]


def _rule_pick(info: dict[str, Any]) -> tuple[str, str]:
    """The candidate picked without training, and why (always said to be unverified)."""
    kind = set(info["kind"])
    if kind & {"diverged", "exploded"}:
        return "min/1e1", ("The run blew up, so its norms are those of the blow-up, not of healthy training; this "
                           "guess is 10x below the smallest norm it logged.")
    if "clipped" in kind and info["used_threshold"] is not None:
        if info["outcome"] == "ok":
            return "run_threshold", ("The run was clipped and trained fine with this threshold. Its pre-clip norms "
                                     "were shaped by the clipping, so no percentile of them is evidence for another.")
        return "run_threshold", (f"The run was clipped and ended {info['outcome']}; its pre-clip norms were shaped "
                                 "by the clipping. Verify candidates around its threshold.")
    if "too short" in kind:
        return "p50", "Too few steps to judge; the median norm is a placeholder until a longer log exists."
    return "max_nonspike", ("The norms are those of plain training: this cap leaves every ordinary step unchanged and "
                            "clips only the spikes.")


def suggest(logs: Iterable[str | Path | RunLog] | str | Path | RunLog, *,
            verify: str | Callable[[str], Any] | None = None, framework: str | None = None,
            seeds: Iterable[int] = (0,)) -> dict[str, Any]:
    """Suggest a global-norm clipping threshold from a run's pre-clip norms, and check it.

    The finite pre-clip norms (``norm`` key) of all the logs given are pooled in order. The
    advice says what kind of log was read (see the module docstring), lists candidates (the
    10/25/50/90/99th percentiles, 5x and 10x the mean, ZClip's end threshold, the largest
    non-spike norm, the run's own threshold, and decades below the smallest norm for runs that
    were clipped or blew up), each with the share of logged steps it would have clipped, and a
    pick. Without ``verify`` the pick follows a rule and is marked unverified; with it, every
    candidate (plus refinements around the best, and ``zclip`` / ``autoclip:p=10`` with their
    defaults) is trained with and the best ``ok`` one is picked.

    Args:
        logs: One or several JSONL paths or :class:`gradclip.monitor.RunLog` objects.
        verify: ``None`` (no training), ``"auto"`` (replay the task named in the log's start
            record: ``gradclip compare`` logs), a task name (``"regression"``), or a function
            ``fn(spec) -> final loss`` (or ``{"final_loss", "outcome"}``) that trains your own
            model with the policy spec given and returns the loss reached.
        framework: Framework of the snippet and of a replay; default: the log's, else torch.
        seeds: Seeds of a replay (each candidate runs with every seed).

    Returns:
        A JSON-ready dict: ``logs``, ``kind``, ``outcome`` (of the logged run), ``steps``,
        ``nonfinite_steps``, ``clipped_fraction``, ``framework``, ``warnings``, ``norm``,
        ``candidates``, ``verification`` (``None`` or ``{"by", "trials"}``, best first) and
        ``recommended`` (``name``, ``threshold``, ``fraction_clipped``, ``reason``, ``verified``,
        ``spec``, ``python``, ``adaptive_spec``).

    Raises:
        LogError: a log is missing, empty or corrupt, or holds no finite norm, or only zero norms.
        ConfigError: ``verify="auto"`` on a log that names no task, or an unknown task.

    Example:
        >>> from gradclip.monitor import RunLog
        >>> log = RunLog(Path("warmup.jsonl"), [{"step": i, "norm": 1.0 + i % 10} for i in range(100)])
        >>> advice = suggest(log)
        >>> advice["kind"], advice["recommended"]["spec"], advice["recommended"]["verified"]
        (['unclipped'], 'norm:10.0', False)
        >>> advice["recommended"]["python"]
        'gradclip.torch.Clipper(gradclip.GlobalNorm(10.0))'
    """
    with np.errstate(over="ignore", invalid="ignore"):  # norms near 1e308: sums overflow to inf, said as such
        info = analyse(logs)
        cands = candidates(info)
    if not cands:
        raise LogError(f"{', '.join(info['logs'])}: no usable threshold in these norms (all 0 or overflowing).")
    framework = framework or info["framework"] or "torch"
    norms = info.pop("norms")
    warnings = []
    if "too short" in info["kind"]:
        warnings.append(f"too short: only {info['steps']} finite norm(s) (fewer than {MIN_STEPS}): this log is no evidence "
                        "for a threshold; verify the candidates or log a longer run.")
    if "clipped" in info["kind"]:
        warnings.append("the run was clipped: its pre-clip norms are not the norms an unclipped run would have had.")
    if info["framework"] is None:
        warnings.append("the log does not say which framework wrote it; the snippet is for " + framework + ".")
    verification = None
    if verify is not None:
        verification = _verify(verify, info, framework, seeds, {c["name"]: c["threshold"] for c in cands})
    rec = _recommend(info, cands, norms, verification, framework)
    with np.errstate(over="ignore", invalid="ignore"):
        summary = {"mean": float(norms.mean()), "min": float(norms.min()), "max": float(norms.max()),
                   "p50": float(np.percentile(norms, 50))}
    return {**info, "framework": framework, "warnings": warnings, "norm": summary,
            "candidates": cands, "verification": verification, "recommended": rec}


def _verify(verify: Any, info: dict[str, Any], framework: str, seeds: Iterable[int],
            thresholds: dict[str, float]) -> dict[str, Any]:
    from gradclip._errors import ConfigError
    from gradclip.report import _verify as v

    if callable(verify):
        evaluate, by = v.from_function(verify), getattr(verify, "__name__", "your function")
    else:
        task = info["task"] if verify == "auto" else verify
        if not task:
            raise ConfigError("--verify needs a task to train: this log names none (only `gradclip compare` logs "
                              "do). Pass one, e.g. --verify regression, or verify in Python with "
                              "suggest(log, verify=fn) where fn(spec) trains your model and returns the loss.")
        seeds = list(seeds)
        evaluate, by = v.replay(task, framework, seeds), f"gradclip compare --task {task} --framework {framework} " \
                                                         f"--seeds {','.join(map(str, seeds))}"
    return {"by": by, "trials": v.search(thresholds, evaluate)}


def _recommend(info: dict[str, Any], cands: list[dict[str, Any]], norms: np.ndarray,
               verification: dict[str, Any] | None, framework: str) -> dict[str, Any]:
    snippet = SNIPPETS.get(framework, SNIPPETS["torch"])
    adaptive, adaptive_verified = ("autoclip:p=10" if {"diverged", "exploded"} & set(info["kind"]) else "zclip"), False
    fixed = [t for t in (verification or {}).get("trials", []) if t["threshold"] is not None]
    if fixed and fixed[0]["outcome"] == "ok":
        best = fixed[0]
        name, threshold, verified = best["name"], best["threshold"], True
        why = (f"Verified: of {len(fixed)} thresholds trained with, this one reached the lowest final loss "
               f"({best['final_loss']:.4g}) with an ok outcome.")
    else:
        name, why = _rule_pick(info)
        chosen = next((c for c in cands if c["name"] == name), cands[0])
        name, threshold, verified = chosen["name"], _round(chosen["threshold"]), False
        how = ("run `gradclip suggest LOG --verify` to train the task with each candidate" if info["task"] else
               "test them with gradclip.report.suggest(log, verify=fn), where fn(spec) trains your model with that "
               "policy spec and returns the loss reached")
        why += " No threshold trained with ended ok." if fixed else f" UNVERIFIED: no candidate was trained with; {how}."
    if verification:
        ok_adaptive = [t for t in verification["trials"] if t["threshold"] is None and t["outcome"] == "ok"]
        if ok_adaptive:
            adaptive, adaptive_verified = ok_adaptive[0]["name"], True
    return {"name": name, "threshold": threshold, "fraction_clipped": float(np.mean(norms > threshold)),
            "reason": why, "verified": verified, "spec": f"norm:{threshold!r}", "python": snippet.format(t=threshold),
            "adaptive_spec": adaptive, "adaptive_verified": adaptive_verified}


def render_suggestion(advice: dict[str, Any], as_json: bool = False) -> str:
    """Text (or JSON) for the output of :func:`suggest`.

    Example:
        >>> from gradclip.monitor import RunLog
        >>> text = render_suggestion(suggest(RunLog(Path("a.jsonl"), [{"norm": 1.0}, {"norm": 2.0}])))
        >>> "UNVERIFIED" in text and "too short" in text
        True
    """
    import json

    if as_json:
        return json.dumps(advice, indent=2)
    from gradclip._render import table

    n, rec = advice["norm"], advice["recommended"]
    lines = [f"log: {', '.join(advice['kind'])} run ({advice['framework']}), outcome {advice['outcome']}; "
             f"{advice['steps']} finite steps ({advice['nonfinite_steps']} non-finite), "
             f"{100 * advice['clipped_fraction']:.0f}% of steps clipped",
             f"norms: mean {n['mean']:.4g}, median {n['p50']:.4g}, min {n['min']:.4g}, max {n['max']:.4g}"]
    lines += [f"WARNING: {w}" for w in advice["warnings"]]
    rows = [[c["name"], format(c["threshold"], ".4g"), f"{100 * c['fraction_clipped']:.1f}", c["rule"]]
            for c in advice["candidates"]]
    lines += ["", table(["candidate", "threshold", "% of logged steps above", "rule"], rows)]
    if advice["verification"]:
        trials = advice["verification"]["trials"]
        rows = [[t["spec"], t["name"], t["outcome"], "-" if t["final_loss"] is None else format(t["final_loss"], ".4g")]
                for t in trials]
        lines += ["", f"verified by training ({advice['verification']['by']}), best first:",
                  table(["spec", "from", "outcome", "final loss (train set)"], rows)]
    lines += ["", f"recommended: {rec['spec']} ({'verified' if rec['verified'] else 'UNVERIFIED'}; {rec['name']}; "
                  f"above {100 * rec['fraction_clipped']:.1f}% of the logged norms)",
              f"why: {rec['reason']}", f"python ({advice['framework']}): {rec['python']}",
              f"adaptive alternative: {rec['adaptive_spec']} "
              f"({'verified ok' if rec['adaptive_verified'] else 'unverified'})"]
    return "\n".join(lines)
