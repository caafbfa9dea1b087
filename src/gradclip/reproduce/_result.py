"""What one reproduction returns, and how it is written: JSON, PNG plots, an HTML page, a table."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The three honest answers a reproduction can give.
VERDICTS = ("reproduced", "partly", "not reproduced")


@dataclass
class Reproduction:
    """The outcome of one reproduction run.

    Attributes:
        name: The reproduction's name (``"zhang-toy"``).
        claim: The published claim tested, one sentence, with its paper and figure or table.
        verdict: One of :data:`VERDICTS`, decided by the code from the numbers, never by hand.
        reason: One sentence: which numbers gave the verdict.
        columns: Header of the verdict table.
        rows: The verdict table, one list per row (the same length as ``columns``).
        numbers: Everything measured, JSON-ready (written to ``results.json``).
        config: The settings that produced the numbers (``quick`` included), JSON-ready.
        plots: PNG files written into the output folder.
        logs: Per-step logs written (JSONL readable by ``gradclip report``, or CSV).
        seconds: Wall time of the run.
    """

    name: str
    claim: str
    verdict: str
    reason: str
    columns: list[str]
    rows: list[list[Any]]
    numbers: dict[str, Any]
    config: dict[str, Any]
    plots: list[Path] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"row {row!r} has {len(row)} cells for {len(self.columns)} columns")

    def to_json(self) -> dict[str, Any]:
        """The results file's content (paths relative to the output folder where they lie in it)."""
        return {
            "name": self.name, "claim": self.claim, "verdict": self.verdict, "reason": self.reason,
            "table": {"columns": self.columns, "rows": self.rows}, "numbers": self.numbers,
            "config": self.config, "plots": [str(p) for p in self.plots], "logs": [str(p) for p in self.logs],
            "seconds": round(self.seconds, 2),
        }


def cell(value: Any) -> str:
    """A table cell: floats to 4 significant digits, ``None`` as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def table(result: Reproduction) -> str:
    """The verdict table as aligned text, with the verdict line under it."""
    grid = [result.columns] + [[cell(v) for v in row] for row in result.rows]
    widths = [max(len(r[i]) for r in grid) for i in range(len(result.columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in grid]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([*lines, "", f"verdict: {result.verdict} ({result.reason})"])


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # NumPy scalars
        return _json_safe(value.item())
    return value


def write(result: Reproduction, out: Path) -> dict[str, Path]:
    """Write ``results.json`` and ``report.html`` (the table, the claim and every plot) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data = _json_safe(result.to_json())
    data["plots"] = [_relative(p, out) for p in result.plots]
    data["logs"] = [_relative(p, out) for p in result.logs]
    results = out / "results.json"
    results.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    page = out / "report.html"
    page.write_text(_html(result, out))
    return {"results": results, "report": page}


def _relative(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def _html(result: Reproduction, out: Path) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in result.columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(cell(v))}</td>" for v in row) + "</tr>" for row in result.rows)
    figures = []
    for plot in result.plots:
        data = base64.b64encode(Path(plot).read_bytes()).decode("ascii")
        figures.append(f'<figure><img alt="{esc(Path(plot).stem)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{esc(Path(plot).name)}</figcaption></figure>")
    config = esc(json.dumps(_json_safe(result.config), indent=1))
    logs = "".join(f"<li>{esc(_relative(p, out))}</li>" for p in result.logs)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gradclip reproduce {esc(result.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
th{{background:#f3f3f3}}img{{max-width:100%}}.verdict{{font-size:1.2em;font-weight:bold}}
pre{{background:#f7f7f7;padding:8px;overflow:auto}}</style></head><body>
<h1>gradclip reproduce {esc(result.name)}</h1>
<p><b>Claim.</b> {esc(result.claim)}</p>
<p class="verdict">Verdict: {esc(result.verdict)}</p><p>{esc(result.reason)}</p>
<table><tr>{head}</tr>{body}</table>
{''.join(figures)}
<h2>Setting</h2><pre>{config}</pre>
<p>Run time: {result.seconds:.1f} s.</p>
{f'<h2>Per-step logs</h2><ul>{logs}</ul>' if logs else ''}
</body></html>
"""
