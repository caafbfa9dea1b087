"""Checking the advisor's candidates by training with them (``gradclip suggest --verify``).

A threshold read off a log is a guess: the pre-clip norms of a clipped run are not those an
unclipped run would have had, and a run that blew up after four steps says little about the
norms of a healthy one. So the candidates are tried: each trains the run's task (a replay of a
built-in ``gradclip compare`` task, or the user's own function), and they are ranked by the
outcome and the loss actually reached. Around the best one the search then refines by factors of
``10**0.5`` and ``10**0.25``, because the loss reached is often sharply best in a narrow band.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from gradclip._errors import ConfigError
from gradclip._outcome import OUTCOMES, rank, worst

#: ``evaluate(specs) -> one trial dict per spec``: ``{"spec", "outcome", "final_loss"}``.
Evaluator = Callable[[Sequence[str]], list[dict[str, Any]]]
#: Refinement factors tried on both sides of the best candidate, in order.
REFINE = (10 ** 0.5, 10 ** 0.25)
#: The adaptive policies tried beside the fixed thresholds (with their defaults).
ADAPTIVE = ("zclip", "autoclip:p=10")


def rank_key(trial: dict[str, Any]) -> tuple[int, float]:
    """Sort key: ``ok`` before ``stalled`` before ``exploded`` before ``diverged``, then lower loss."""
    loss = trial.get("final_loss")
    return rank(trial["outcome"]), (loss if loss is not None and math.isfinite(loss) else math.inf)


def replay(task: str, framework: str = "torch", seeds: Sequence[int] = (0,)) -> Evaluator:
    """An evaluator that trains a built-in ``gradclip compare`` task with each spec.

    A spec's outcome is the worst over ``seeds`` and its loss the mean final loss (whole training
    set) over them, ``None`` unless every seed is ``ok``.

    Raises:
        ConfigError: unknown task or framework (checked now, before any training).
    """
    from gradclip.experiments import FRAMEWORKS, get_task

    get_task(task)
    if framework not in FRAMEWORKS:
        raise ConfigError(f"Unknown framework {framework!r} to verify with. Valid frameworks: {', '.join(FRAMEWORKS)}.")

    def evaluate(specs: Sequence[str]) -> list[dict[str, Any]]:
        from gradclip.experiments import compare

        runs = compare(task, list(specs), list(seeds), framework=framework)["runs"]
        out = []
        for spec in specs:
            mine = [r for r in runs if r["method"] == spec]
            outcome = worst(r["outcome"] for r in mine)
            loss = sum(r["final_loss"] for r in mine) / len(mine) if outcome == "ok" else None
            out.append({"spec": spec, "outcome": outcome, "final_loss": loss})
        return out

    return evaluate


def from_function(fn: Callable[[str], Any]) -> Evaluator:
    """Wrap ``fn(spec) -> final loss`` (or a dict with ``final_loss`` and ``outcome``) as an evaluator.

    A non-finite or missing loss counts as ``"diverged"``, a finite one as ``"ok"`` unless the
    dict says otherwise.
    """

    def evaluate(specs: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for spec in specs:
            got = fn(spec)
            loss = got.get("final_loss") if isinstance(got, dict) else got
            loss = float(loss) if isinstance(loss, (int, float)) and not isinstance(loss, bool) else None
            finite = loss is not None and math.isfinite(loss)
            outcome = got.get("outcome") if isinstance(got, dict) and got.get("outcome") in OUTCOMES else None
            out.append({"spec": spec, "outcome": outcome or ("ok" if finite else "diverged"),
                        "final_loss": loss if finite else None})
        return out

    return evaluate


def search(thresholds: dict[str, float], evaluate: Evaluator) -> list[dict[str, Any]]:
    """Try every named threshold as ``norm:T``, refine around the best, try the adaptive defaults.

    Args:
        thresholds: ``{candidate name: threshold}`` (duplicates within 1% are tried once).
        evaluate: See :data:`Evaluator`.

    Returns:
        Every trial, best first: ``{"name", "spec", "threshold", "outcome", "final_loss"}``
        (``threshold`` is ``None`` for the adaptive policies).

    Example:
        >>> def fake_loss(spec):  # a task whose loss is lowest at threshold 1; adaptive policies reach 2
        ...     return abs(math.log10(float(spec[5:]))) + 0.1 if spec.startswith("norm:") else 2.0
        >>> fake = from_function(fake_loss)
        >>> trials = search({"p50": 3.0, "p90": 30.0}, fake)  # 2 tried, 2 + 2 refined, 2 adaptive
        >>> len(trials), trials[0]["name"], trials[0]["spec"], round(trials[0]["final_loss"], 2)
        (8, 'p50/3.16', 'norm:0.949', 0.12)
    """
    tried: list[dict[str, Any]] = []

    def run(named: dict[str, float]) -> None:
        fresh = {}
        for name, t in named.items():
            if t > 0 and math.isfinite(t) and all(abs(t - u) > 0.01 * t for u in [*fresh.values(), *_done(tried)]):
                fresh[name] = float(f"{t:.3g}")
        specs = [f"norm:{t!r}" for t in fresh.values()]
        for (name, t), trial in zip(fresh.items(), evaluate(specs) if specs else []):
            tried.append({"name": name, "threshold": t, **trial})

    run(thresholds)
    for factor in REFINE:
        best = min((t for t in tried if t["threshold"] is not None), key=rank_key, default=None)
        if best is None or best["outcome"] != "ok":
            break
        run({f"{best['name']}/{factor:.3g}": best["threshold"] / factor,
             f"{best['name']}*{factor:.3g}": best["threshold"] * factor})
    for spec, trial in zip(ADAPTIVE, evaluate(ADAPTIVE)):
        tried.append({"name": spec, "threshold": None, **trial})
    return sorted(tried, key=rank_key)


def _done(tried: list[dict[str, Any]]) -> list[float]:
    return [t["threshold"] for t in tried if t["threshold"] is not None]
