"""Text rendering of results (kept apart from computing them, so each is testable alone)."""

from __future__ import annotations

import math
from typing import Any

from gradclip._outcome import run_outcome


def _fmt(x: Any, spec: str = ".4g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table, columns padded, numbers right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        out = []
        for i, c in enumerate(cells):
            numeric = c[:1].isdigit() or c[:1] in "-." and c[1:2].isdigit()
            out.append(c.rjust(widths[i]) if numeric else c.ljust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def _outcome_cell(run: dict[str, Any]) -> str:
    outcome = run_outcome(run)
    if outcome == "diverged" and run.get("first_nonfinite_step") is not None:
        return f"diverged @ step {run['first_nonfinite_step']}"
    return outcome


def compare_table(result: dict[str, Any]) -> str:
    """The table ``gradclip compare`` prints: one row per run, then one summary row per method.

    ``final loss`` is the loss on the whole training set after training (the JSON's
    ``final_loss``, the report's "final loss (train set)"); means are over ``ok`` runs only.
    """
    from gradclip._outcome import count_text, describe

    acc = any(r.get("test_accuracy") is not None for r in result["runs"])
    eps = any("epsilon" in r for r in result["runs"])  # a DP task: epsilon at the run's delta
    rows = []
    for r in result["runs"]:
        rows.append([
            r["method"], str(r["seed"]), _fmt(r["initial_loss"]), _fmt(r["final_loss"]), _outcome_cell(r),
            *([_fmt(r["test_accuracy"], ".3f")] if acc else []), *([_fmt(r.get("epsilon"), ".3g")] if eps else []),
            str(r.get("steps", "-")),
            _fmt(r["max_grad_norm"]), f"{100 * r['clipped_fraction']:.1f}", f"{r['seconds']:.2f}",
        ])
    headers = ["method", "seed", "initial loss", "final loss (train set)", "outcome", *(["test acc"] if acc else []),
               *(["epsilon"] if eps else []),
               "optimizer steps", "max grad norm", "% clipped", "seconds"]
    runs = table(headers, rows)
    summary_rows = []
    for method in dict.fromkeys(r["method"] for r in result["runs"]):
        mine = [r for r in result["runs"] if r["method"] == method]
        ok = [r["final_loss"] for r in mine if run_outcome(r) == "ok"]
        mean = sum(ok) / len(ok) if ok else None
        row = [method, count_text(map(run_outcome, mine)),
               f"{_fmt(mean)} ({len(ok)}/{len(mine)} ok)"]
        if acc:
            row.append(_fmt(sum(r["test_accuracy"] or 0.0 for r in mine) / len(mine), ".3f"))
        if eps:
            row.append(_fmt(mine[0].get("epsilon"), ".3g") + (f" (delta {mine[0]['delta']:g})" if mine[0].get("delta") else ""))
        summary_rows.append(row)
    summary = table(["method", "outcomes", "mean final loss (ok runs)", *(["mean test acc (all runs)"] if acc else []),
                                 *(["epsilon"] if eps else [])],
                    summary_rows)
    head = f"task: {result['task']}   framework: {result['framework']}"
    tail = describe()
    if result.get("incomplete"):
        tail += "\nINCOMPLETE: interrupted; only the runs above finished."
    return f"{head}\n\n{runs}\n\n{summary}\n\n{tail}"
