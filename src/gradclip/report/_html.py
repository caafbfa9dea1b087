"""The self-contained HTML report: inline CSS, plots as ``data:`` PNG, no script, no network."""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gradclip.monitor import RunLog
from gradclip.report import _plots
from gradclip.report._data import PERCENTILES, load_logs, series, summarize

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;
color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.9em;margin:8px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right} th{background:#f3f3f3}
td.l,th.l{text-align:left} tr.bad td{background:#fde8e8}
.warn{background:#fff4d6;border:1px solid #e8c25a;padding:8px 12px;border-radius:4px}
figure{margin:8px 0} figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}
"""

# summary columns: (key, header, kind)
_COLUMNS = (
    ("label", "run", "text"), ("steps", "steps", "int"), ("clipped_pct", "% clipped", "pct"),
    *((f"norm_p{p}", f"norm p{p}", "num") for p in PERCENTILES), ("norm_max", "norm max", "num"),
    ("spikes", "spikes", "int"), ("nonfinite_steps", "non-finite steps", "int"),
    ("first_nonfinite_step", "first non-finite step", "int"), ("first_offender", "first offending tensor", "text"),
    ("last_finite_loss", "last finite loss", "num"),
)


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value:.1f}"
    if kind == "num":
        return format(value, ".4g")
    return str(value)


def summary_table_html(rows: Sequence[dict[str, Any]]) -> str:
    """Render :func:`summarize` rows as an HTML table (non-finite runs highlighted)."""
    head = "".join(f'<th class="{"l" if kind == "text" else ""}">{html.escape(h)}</th>' for _, h, kind in _COLUMNS)
    body = []
    for row in rows:
        cells = "".join(f'<td class="{"l" if kind == "text" else ""}">{html.escape(_cell(row.get(k), kind))}</td>'
                        for k, _, kind in _COLUMNS)
        cls = ' class="bad"' if row.get("first_nonfinite_step") is not None else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _figure(plot_id: str, png: str, caption: str) -> str:
    return (f'<figure class="plot" id="plot-{plot_id}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{png}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def render_html(logs: Sequence[RunLog], title: str) -> str:
    """The report page for already-read logs (see :func:`build_report`)."""
    runs = [series(log) for log in logs]
    rows = summarize(logs)
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">{len(runs)} run(s): {html.escape(", ".join(str(s.path) for s in runs))}. '
             f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by gradclip.</p>"]
    warnings = [f"{s.path}: the last line was truncated (the writer was killed); it was skipped." for s in runs if s.truncated]
    warnings += [f"{r['label']}: gradients became non-finite at step {r['first_nonfinite_step']}"
                 + (f" (first offending tensor: {r['first_offender']})" if r["first_offender"] else "") + "."
                 for r in rows if r["first_nonfinite_step"] is not None]
    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        parts.append(f'<section id="warnings"><h2>Warnings</h2><div class="warn"><ul>{items}</ul></div></section>')
    parts.append('<section id="summary-section"><h2>Summary</h2>' + summary_table_html(rows)
                 + '<p class="meta">Percentiles are over the finite pre-clip global norms; '
                 "% clipped counts the steps where clipping changed the gradients.</p></section>")
    parts.append('<section id="norm"><h2>Global gradient norm</h2>'
                 + _figure("norm", _plots.norm_plot(runs), "Pre-clip (solid) and post-clip (dashed) global norm, "
                           "threshold (dotted), spikes (triangles), non-finite steps (red)") + "</section>")
    loss = _plots.loss_plot(runs)
    if loss is not None:
        parts.append('<section id="loss"><h2>Loss</h2>' + _figure("loss", loss, "Loss over steps") + "</section>")
    parts.append('<section id="clip-rate"><h2>Clip rate</h2>'
                 + _figure("clip-rate", _plots.clip_rate_plot(runs), "Rolling % of steps where clipping acted")
                 + "</section>")
    maps = [(s, _plots.layer_heatmap(s)) for s in runs]
    maps = [(s, png) for s, png in maps if png is not None]
    if maps:
        figs = "".join(_figure(f"layers-{i}", png, f"Per-tensor gradient norms: {s.label}") for i, (s, png) in enumerate(maps))
        parts.append(f'<section id="layers"><h2>Per-layer gradient norms</h2>{figs}</section>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def build_report(logs: Iterable[str | Path | RunLog] | str | Path, out: str | Path, title: str | None = None) -> Path:
    """Write one self-contained HTML report of one or several run logs.

    The page holds a summary table (steps, % clipped, norm percentiles, spikes, first non-finite
    step and tensor) and PNG plots embedded as ``data:`` URIs: the global norm before and after
    clipping with the threshold (log scale when the range is wide), the loss, the rolling clip
    rate, spike and non-finite markers, and a per-tensor heatmap when records carry ``layers``.
    Several logs are overlaid, one colour each, labelled by :attr:`RunLog.label`. It needs no
    network and no JavaScript.

    Args:
        logs: JSONL paths (as written by ``gradclip compare --log-dir`` or ``Monitor``) or
            :class:`gradclip.monitor.RunLog` objects; one path alone is accepted too.
        out: The HTML file to write (parent folders are created).
        title: Page title. Default: ``"gradclip report: <labels>"``.

    Returns:
        The path written.

    Raises:
        LogError: a log is missing, empty or corrupt (the message names the file and line).
        InputTypeError: ``logs`` is empty or holds something that is not a path or ``RunLog``.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "run.jsonl").write_text('{"step": 0, "norm": 2.0}\\n{"step": 1, "norm": 1.0}\\n')
        >>> build_report([d / "run.jsonl"], d / "report.html").name
        'report.html'
    """
    read = load_logs(logs)
    if title is None:
        title = "gradclip report: " + ", ".join(log.label for log in read)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(read, title), encoding="utf-8")
    return out
