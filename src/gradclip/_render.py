"""Text rendering of results (kept apart from computing them, so each is testable alone)."""

from __future__ import annotations

import math
from typing import Any


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


def compare_table(result: dict[str, Any]) -> str:
    """The table ``gradclip compare`` prints: one row per run, then one summary row per method."""
    acc = any(r.get("test_accuracy") is not None for r in result["runs"])
    rows = []
    for r in result["runs"]:
        diverged = f"yes @ step {r['first_nonfinite_step']}" if r["diverged"] else "no"
        rows.append([
            r["method"], str(r["seed"]), _fmt(r["initial_loss"]), _fmt(r["final_loss"]), diverged,
            *([_fmt(r["test_accuracy"], ".3f")] if acc else []),
            _fmt(r["max_grad_norm"]), f"{100 * r['clipped_fraction']:.1f}", f"{r['seconds']:.2f}",
        ])
    headers = ["method", "seed", "initial loss", "final loss", "diverged", *(["test acc"] if acc else []),
               "max grad norm", "% clipped", "seconds"]
    runs = table(headers, rows)
    summary_rows = []
    for method in dict.fromkeys(r["method"] for r in result["runs"]):
        mine = [r for r in result["runs"] if r["method"] == method]
        ok = [r["final_loss"] for r in mine if not r["diverged"]]
        mean = sum(ok) / len(ok) if ok else None
        row = [method, f"{len(mine) - len(ok)}/{len(mine)}", _fmt(mean)]
        if acc:
            row.append(_fmt(sum(r["test_accuracy"] or 0.0 for r in mine) / len(mine), ".3f"))
        summary_rows.append(row)
    summary = table(["method", "diverged runs", "mean final loss (converged runs)",
                     *(["mean test acc"] if acc else [])], summary_rows)
    head = f"task: {result['task']}   framework: {result['framework']}"
    return f"{head}\n\n{runs}\n\n{summary}"
