"""The self-contained HTML report: inline CSS, plots as ``data:`` PNG, no script, no network."""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradclip._outcome import count_text, describe
from gradclip.monitor import RunLog
from gradclip.report import _plots
from gradclip.report._data import (
    PERCENTILES,
    SPIKE_DEFINITION,
    load_logs,
    series,
    summarize,
    summarize_methods,
)
from gradclip.report._dp import dp_runs, dp_summary
from gradclip.report._groups import Group, group_runs, method_of
from gradclip.report._text import display_label

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;
color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{font-size:1.2em;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#666;font-size:.9em}
table{border-collapse:collapse;font-size:.85em;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right} td{white-space:nowrap} th{background:#f3f3f3;font-weight:600}
td.l,th.l{text-align:left}
tr.o-diverged td{background:#fde2e2} tr.o-exploded td{background:#fdebd9} tr.o-stalled td{background:#fff7d9}
td.outcome{font-weight:600} tr.o-ok td.outcome{color:#1a7f37}
.warn{background:#fff4d6;border:1px solid #e8c25a;padding:8px 12px;border-radius:4px}
figure{margin:8px 0} figure img{width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.85em}
.maps{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:8px}
"""

# per-run columns: (key, header, kind); a column that is empty in every row is left out
_RUN_COLUMNS = (
    ("label", "run", "text"), ("outcome", "outcome", "outcome"), ("steps", "optimizer steps", "int"),
    ("logged_steps", "logged steps", "int"), ("clipped_pct", "% clipped by policy", "pct"),
    *((f"norm_p{p}", f"norm p{p}", "num") for p in PERCENTILES), ("norm_max", "norm max", "num"),
    ("spikes", "spikes", "spikes"), ("nonfinite_steps", "non-finite steps", "int"),
    ("first_nonfinite_step", "first non-finite step", "int"), ("first_offender", "first offending tensor", "text"),
    ("final_loss", "final loss (train set)", "num"), ("last_batch_loss", "last finite batch loss", "num"),
)
_ALWAYS = {"label", "outcome", "steps", "logged_steps", "clipped_pct", "spikes", "nonfinite_steps"}


def _cell(row: dict[str, Any], key: str, kind: str) -> str:
    value = row.get(key)
    if kind == "spikes" and value is None:
        return row.get("spikes_note") or "-"
    if value is None:
        return "-"
    if kind == "pct":
        return f"{value:.1f}"
    if kind == "num":
        return format(value, ".4g")
    return str(value)


def _td(text: str, kind: str) -> str:
    """A cell; a name too long to show is shortened, and kept whole in its ``title`` (a tooltip)."""
    cls = {"text": "l", "outcome": "l outcome"}.get(kind, "")
    shown = display_label(text)
    tip = f' title="{html.escape(text)}"' if shown != text else ""
    return f'<td class="{cls}"{tip}>{html.escape(shown)}</td>'


def summary_table_html(rows: Sequence[dict[str, Any]]) -> str:
    """Render :func:`summarize` rows as an HTML table, one row per run, coloured by outcome."""
    columns = [c for c in _RUN_COLUMNS if c[0] in _ALWAYS or any(r.get(c[0]) is not None for r in rows)]
    head = "".join(f'<th class="{"l" if kind in ("text", "outcome") else ""}">{html.escape(h)}</th>'
                   for _, h, kind in columns)
    body = []
    for row in rows:
        cells = "".join(_td(_cell(row, k, kind), kind) for k, _, kind in columns)
        cls = f' class="o-{row["outcome"]}"' if row.get("outcome") else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def methods_table_html(methods: Sequence[dict[str, Any]]) -> str:
    """Render :func:`summarize_methods` rows: one row per method, coloured by its worst outcome."""
    kinds = {m["loss_kind"] for m in methods if m["ok"]}
    kind = kinds.pop() if len(kinds) == 1 else None
    loss_head = f"mean final loss ({kind}), ok runs" if kind == "train set" else (
        "mean last batch loss, ok runs" if kind else "mean final loss, ok runs")
    head = "".join(f'<th class="{c}">{html.escape(h)}</th>' for h, c in (
        ("method", "l"), ("runs", ""), ("outcomes", "l"), (loss_head, ""), ("% clipped by policy", ""),
        ("spikes", ""), ("first non-finite step", "")))
    body = []
    for m in methods:
        loss = "-" if m["mean_final_loss"] is None else format(m["mean_final_loss"], ".4g")
        loss += f" ({m['ok']} of {m['runs']} ok" + (f", {m['loss_kind']})" if kind is None and m["ok"] else ")")
        outcomes = count_text(o for o, n in m["outcomes"].items() for _ in range(n)) or "-"
        steps = sorted(set(m["first_nonfinite_steps"]))
        cells = [(m["method"], "text"), (str(m["runs"]), "int"), (outcomes, "outcome"), (loss, "num"),
                 (f"{m['clipped_pct']:.1f}", "pct"), ("n/a" if m["spikes"] is None else str(m["spikes"]), "int"),
                 (", ".join(map(str, steps)) or "-", "int")]
        worst = next(iter(m["outcomes"]), None)
        cls = f' class="o-{worst}"' if worst else ""
        body.append(f"<tr{cls}>" + "".join(_td(t, k) for t, k in cells) + "</tr>")
    return f'<table id="methods-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _figure(plot_id: str, png: str, caption: str) -> str:
    return (f'<figure class="plot" id="plot-{plot_id}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{png}"><figcaption>{html.escape(caption)}</figcaption></figure>')


def _warnings(runs: Sequence[Any], groups: Sequence[Group], rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per truncated log and one per method whose runs went non-finite."""
    out = [f"{s.path}: the last line was truncated (the writer was killed); it was skipped." for s in runs if s.truncated]
    by_label = {r["label"]: r for r in rows}
    for g in groups:
        bad = [by_label[s.label] for s in g.runs if by_label[s.label]["first_nonfinite_step"] is not None]
        if not bad:
            continue
        steps = ", ".join(str(r["first_nonfinite_step"]) for r in bad)
        who = (display_label(g.runs[0].label) if len(g.runs) == 1 else
               f"{display_label(g.name)}: {len(bad)} of {len(g.runs)} runs")
        offender = next((r["first_offender"] for r in bad if r["first_offender"]), None)
        out.append(f"{who}: gradients became non-finite at step {steps}"
                   + (f" (first offending tensor: {offender})" if offender else "") + ".")
    return out


def _heading(runs: Sequence[Any], groups: Sequence[Group]) -> str:
    folders = [f for f in dict.fromkeys(str(s.path.parent) for s in runs) if f != "."]
    where = ", ".join(folders[:3]) + (f" and {len(folders) - 3} more folders" if len(folders) > 3 else "")
    shape = (f"{len(runs)} runs of {len(groups)} methods" if len(groups) < len(runs) else
             f"{len(runs)} run{'s' if len(runs) != 1 else ''}")
    return (f'<p class="meta">{html.escape(shape)}{" from " + html.escape(where) if where else ""}. '
            f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by gradclip.</p>")


_NOTES = ("Optimizer steps: steps whose update was applied; logged steps: records in the log, the non-finite "
          "one included. % clipped by policy: share of the finite steps where the run's own clipping policy "
          "changed the gradients (a policy's decisions, not spikes). Norm percentiles are over the finite "
          "pre-clip global norms. Final loss (train set): the loss on the whole training set after training "
          "(gradclip compare); last finite batch loss: the last finite loss the log recorded.")


def _num(value: float | None) -> str:
    return "-" if value is None else format(value, ".3g")


def dp_table_html(methods: Sequence[dict[str, Any]]) -> str:
    """Render :func:`gradclip.report._dp.dp_summary` rows: final epsilon, % of examples clipped, ``C``."""
    head = "".join(f'<th class="{c}">{html.escape(h)}</th>' for h, c in (
        ("method", "l"), ("runs", ""), ("final \u03b5 (median)", ""), ("\u03b5 min-max", ""),
        ("mean % of examples clipped", ""), ("C first \u2192 last", ""), ("median per-example norm", "")))
    body = []
    for m in methods:
        spread = "-" if m["epsilon_min"] is None or m["epsilon_min"] == m["epsilon_max"] else \
            f"{_num(m['epsilon_min'])} \u2013 {_num(m['epsilon_max'])}"
        pct = "-" if m["fraction_clipped_pct"] is None else f"{m['fraction_clipped_pct']:.1f}"
        clip = _num(m["clip_first"]) if m["clip_first"] == m["clip_last"] else \
            f"{_num(m['clip_first'])} \u2192 {_num(m['clip_last'])}"
        cells = [(m["method"], "text"), (str(m["runs"]), "int"), (_num(m["final_epsilon"]), "num"), (spread, "num"),
                 (pct, "pct"), (clip, "num"), (_num(m["norm_p50"]), "num")]
        body.append("<tr>" + "".join(_td(t, k) for t, k in cells) + "</tr>")
    return f'<table id="dp-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


_DP_NOTE = ("DP-SGD clips each example's gradient to norm C before the noisy sum. % of examples clipped: share of "
            "a step's examples whose gradient norm exceeded C (mean over steps, then over seeds). Per-example norms "
            "are before clipping; C moves when it is learned (adaptive clipping). \u03b5: privacy spent so far, at "
            "the \u03b4 the run chose (empty when the run gave no \u03b4).")


def _dp_section(runs: Sequence[Any]) -> str | None:
    """The "Differential privacy" section, or ``None`` when no run carries ``dp`` records."""
    if not dp_runs(runs):
        return None
    from gradclip.report import _dp_plots

    parts = ['<section id="dp"><h2>Differential privacy</h2>', dp_table_html(dp_summary(runs)),
             f'<p class="meta">{html.escape(_DP_NOTE)}</p>']
    for key, png, caption in (
            ("dp-clipped", _dp_plots.fraction_clipped_plot(runs), "% of each step's examples clipped, per method"),
            ("dp-norms", _dp_plots.norm_quantiles_plot(runs), ("Per-example gradient norm quantiles p10/p50/p90 "
             "(before clipping) and the clip bound C, one panel per method (log scale)")),
            ("dp-epsilon", _dp_plots.epsilon_plot(runs), "Privacy spent so far (\u03b5) against the step")):
        if png is not None:
            parts.append(_figure(key, png, caption))
    return "".join(parts) + "</section>"


def render_html(logs: Sequence[RunLog], title: str) -> str:
    """The report page for already-read logs (see :func:`build_report`)."""
    runs = [series(log) for log in logs]
    groups = group_runs(runs)
    rows = summarize(logs)
    grouped = len(groups) < len(runs)
    parts = [f"<h1>{html.escape(title)}</h1>", _heading(runs, groups)]
    warnings = _warnings(runs, groups, rows)
    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        parts.append(f'<section id="warnings"><h2>Warnings</h2><div class="warn"><ul>{items}</ul></div></section>')
    notes = (f'<p class="meta">{html.escape(describe())} Means are over ok runs only. '
             f"{html.escape(SPIKE_DEFINITION)}</p>")
    runs_table = summary_table_html(rows) + notes + f'<p class="meta">{html.escape(_NOTES)}</p>'
    if grouped:
        parts.append('<section id="methods"><h2>Summary by method</h2>'
                     + methods_table_html(summarize_methods(rows)) + notes + "</section>")
    else:
        parts.append(f'<section id="summary-section"><h2>Summary</h2>{runs_table}</section>')
    dp = _dp_section(runs)
    if dp is None or any(np.isfinite(s.norm).any() for s in runs):  # DP-only logs have no global norm
        parts.append('<section id="norm"><h2>Global gradient norm</h2>'
                     + _figure("norm", _plots.norm_plot(runs), "Pre-clip global norm (solid), post-clip (dashed) and "
                               "global-norm threshold (dotted), one colour per method; spikes (down triangles); a "
                               "triangle on the top edge marks a run that left the range or became non-finite")
                     + "</section>")
    loss = _plots.loss_plot(runs)
    if loss is not None:
        parts.append('<section id="loss"><h2>Loss</h2>' + _figure("loss", loss, "Batch loss over steps") + "</section>")
    if dp is not None:
        parts.append(dp)
    rate, sentence = _plots.clip_rate_plot(runs), _plots.clip_rate_sentence(runs)
    if rate is not None:
        parts.append('<section id="clip-rate"><h2>Clip rate</h2>'
                     + _figure("clip-rate", rate, "Rolling % of steps clipped by each method's policy")
                     + (f'<p class="meta">Not drawn: {html.escape(sentence)}</p>' if sentence else "") + "</section>")
    elif sentence:
        parts.append(f'<p class="meta" id="clip-rate-note">Clip rate: {html.escape(sentence)}</p>')
    maps = _plots.layer_heatmaps(runs)
    if maps:
        figs = "".join(_figure(f"layers-{i}", png, f"Per-tensor gradient norms: {display_label(name)}")
                       for i, (name, png) in enumerate(maps))
        parts.append('<section id="layers"><h2>Per-layer gradient norms</h2><p class="meta">log10 of each '
                     "tensor's pre-clip gradient norm, one colour scale for all; red = non-finite or missing.</p>"
                     f'<div class="{"maps" if len(maps) > 1 else ""}">{figs}</div></section>')
    if grouped:
        parts.append(f'<section id="summary-section"><h2>Runs</h2>{runs_table}</section>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def _default_title(logs: Sequence[RunLog]) -> str:
    names = list(dict.fromkeys(method_of(log) for log in logs))
    shown = ", ".join(map(display_label, names[:6])) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return f"gradclip report: {shown}"


def build_report(logs: Iterable[str | Path | RunLog] | str | Path, out: str | Path, title: str | None = None) -> Path:
    """Write one self-contained HTML report of one or several run logs.

    The runs of one method (``meta["method"]``, else the label without ``" seed N"``) are drawn
    as one colour and one legend entry: their median with a min-max band. The page holds a summary
    by method (outcomes, mean final loss over ok runs) when a method has several runs, a table of
    runs (outcome, optimizer and logged steps, % clipped by policy, norm percentiles, spikes by
    one definition, first non-finite step and tensor, final loss), and PNG plots embedded as
    ``data:`` URIs: the global norm before and after clipping with the global-norm threshold
    (the y-range set by the runs that did not blow up, log scale when wide, a run that leaves it
    marked at the top edge), the batch loss, the rolling clip rate when it varies, and one
    per-tensor heatmap per method when records carry ``layers``. It needs no network and no
    JavaScript.

    Args:
        logs: JSONL paths (as written by ``gradclip compare --log-dir`` or ``Monitor``) or
            :class:`gradclip.monitor.RunLog` objects; one path alone is accepted too.
        out: The HTML file to write (parent folders are created).
        title: Page title. Default: ``"gradclip report: <methods>"``.

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
        title = _default_title(read)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(read, title), encoding="utf-8")
    return out
