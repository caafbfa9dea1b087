"""One definition of how a training run ended, used by the CLI table, the JSON, the report and the Monitor.

A run is exactly one of (checked in this order):

- ``"diverged"``: a loss or a gradient became NaN/Inf (training stops there);
- ``"exploded"``: the final loss is finite but above :data:`EXPLODE_FACTOR` times the initial
  loss (a loss of 1.76e12 from 2.3e4 is a failure even without a NaN);
- ``"stalled"``: the final loss did not fall below :data:`STALL_FRACTION` of the initial loss
  (training barely moved: a threshold so small that nothing is learnt, or a run that climbed
  back);
- ``"ok"``: none of the above.

Both losses are measured the same way (the loss on the whole training set in ``gradclip compare``;
the batch losses the Monitor saw otherwise). Means over runs (the CLI's summary, the report) are
taken over ``ok`` runs only, and say how many runs that is.

Example:
    >>> classify(initial_loss=2.3e4, final_loss=0.65)
    'ok'
    >>> classify(initial_loss=2.3e4, final_loss=1.76e12)
    'exploded'
    >>> classify(initial_loss=2.3e4, final_loss=2.2e4)
    'stalled'
    >>> classify(initial_loss=2.3e4, final_loss=None, nonfinite=True)
    'diverged'
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["EXPLODE_FACTOR", "OUTCOMES", "STALL_FRACTION", "classify", "count_text", "describe", "rank", "run_outcome",
           "worst"]

#: The four outcomes, worst first.
OUTCOMES = ("diverged", "exploded", "stalled", "ok")
#: A finite final loss above ``EXPLODE_FACTOR * initial_loss`` is ``"exploded"``.
EXPLODE_FACTOR = 10.0
#: A final loss that is not below ``STALL_FRACTION * initial_loss`` is ``"stalled"``.
STALL_FRACTION = 0.5


def classify(initial_loss: float | None, final_loss: float | None, *, nonfinite: bool = False,
             explode_factor: float = EXPLODE_FACTOR, stall_fraction: float = STALL_FRACTION) -> str:
    """The outcome of a run from its initial and final loss.

    Args:
        initial_loss: Loss before training (or the first logged loss). ``None`` or non-finite:
            only ``"diverged"`` and ``"ok"`` can be told apart.
        final_loss: Loss after training. ``None`` or non-finite counts as non-finite.
        nonfinite: A loss or gradient became NaN/Inf during training.
        explode_factor: See :data:`EXPLODE_FACTOR`.
        stall_fraction: See :data:`STALL_FRACTION`.

    Returns:
        One of :data:`OUTCOMES`.
    """
    if nonfinite or final_loss is None or not math.isfinite(final_loss):
        return "diverged"
    if initial_loss is None or not math.isfinite(initial_loss):
        return "ok"
    if final_loss > explode_factor * abs(initial_loss):
        return "exploded"
    if final_loss >= stall_fraction * initial_loss:
        return "stalled"
    return "ok"


def describe() -> str:
    """One sentence defining the outcomes, for table footers, report notes and ``--help``.

    Example:
        >>> "exploded" in describe()
        True
    """
    return (f"outcome: diverged = a NaN/Inf loss or gradient; exploded = final loss > {EXPLODE_FACTOR:g}x the "
            f"initial loss; stalled = final loss not below {STALL_FRACTION:g}x the initial loss; ok = otherwise.")


def count_text(outcomes: Iterable[str]) -> str:
    """How many runs ended each way, best first: ``"ok 2, exploded 1"`` (the CLI table and the report).

    Example:
        >>> count_text(["stalled", "ok", "ok", "diverged"])
        'ok 2, stalled 1, diverged 1'
    """
    names = list(outcomes)
    return ", ".join(f"{o} {names.count(o)}" for o in reversed(OUTCOMES) if o in names)


def rank(outcome: str) -> int:
    """0 for ``"ok"`` up to 3 for ``"diverged"``: sort runs best first with it.

    Example:
        >>> sorted(["diverged", "ok", "stalled"], key=rank)
        ['ok', 'stalled', 'diverged']
    """
    return len(OUTCOMES) - 1 - OUTCOMES.index(outcome)


def worst(outcomes: Iterable[str]) -> str:
    """The worst of several outcomes (the outcome of a method over its seeds).

    Example:
        >>> worst(["ok", "stalled", "ok"])
        'stalled'
    """
    return max(outcomes, key=rank)


def run_outcome(run: dict) -> str:
    """The outcome of a run's JSON; results written before the field existed fall back on ``diverged``.

    Example:
        >>> run_outcome({"diverged": True}), run_outcome({"outcome": "stalled", "diverged": False})
        ('diverged', 'stalled')
    """
    return run.get("outcome") or ("diverged" if run.get("diverged") else "ok")
