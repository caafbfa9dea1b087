"""The report's "Differential privacy" section: drawn from ``dp`` records, absent without them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from gradclip.monitor import read_runs
from gradclip.report import build_report
from gradclip.report._data import series
from gradclip.report._dp import dp_summary
from gradclip.report._dp_plots import norm_quantiles_figure

METHODS = {"dp-sgd C=1.0": False, "dp-sgd adaptive": True}


def dp_records(adaptive: bool, seed: int, n: int = 80, with_norm: bool = False) -> list[dict]:
    """DP-SGD step records as Monitor(privacy=...) writes them: no global norm, a ``dp`` object."""
    rng = np.random.default_rng(seed)
    clip, recs = (3.0 if adaptive else 1.0), []
    for i in range(n):
        scale = 2.0 * np.exp(-i / 60)  # per-example norms shrink as training goes
        norms = scale * rng.lognormal(0.0, 0.7, 64)
        p10, p50, p90 = np.percentile(norms, [10, 50, 90])
        fraction = float(np.mean(norms > clip))
        rec = {"step": i, "loss": float(2.0 / (1 + 0.05 * i)), "threshold": clip, "clipped": fraction > 0,
               "skipped": False, "nonfinite": False, "spike": False,
               "dp": {"fraction_clipped": fraction, "norm_p10": float(p10), "norm_p50": float(p50),
                      "norm_p90": float(p90), "clip": clip, "epsilon": float((0.19 if adaptive else 0.15) * np.sqrt(i + 1 + seed % 2))}}
        if with_norm:
            rec["norm"] = float(p90)
        recs.append(rec)
        if adaptive:  # geometric update towards the median
            clip *= float(np.exp(-0.2 * (np.mean(norms <= clip) - 0.5)))
    return recs


def _write(path: Path, runs: list[tuple[str, int, list[dict]]]) -> Path:
    lines = []
    for method, seed, recs in runs:
        lines.append({"event": "start", "run": f"{method} seed {seed}", "method": method, "seed": seed})
        lines.extend(recs)
        lines.append({"event": "end", "run": f"{method} seed {seed}", "steps": len(recs)})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.fixture
def dp_log(tmp_path):
    return _write(tmp_path / "dp.jsonl", [(m, seed, dp_records(a, seed + 10 * a)) for m, a in METHODS.items()
                                          for seed in (0, 1)])


def _images(page: str, plot_id: str) -> list[str]:
    return re.findall(rf'<figure class="plot" id="plot-{plot_id}"><img alt="[^"]*" src="data:image/png;base64,', page)


def test_dp_section_with_its_plots_and_table(dp_log, tmp_path):
    page = build_report([dp_log], tmp_path / "report.html").read_text()
    assert '<section id="dp"><h2>Differential privacy</h2>' in page
    for plot in ("dp-clipped", "dp-norms", "dp-epsilon"):
        assert len(_images(page, plot)) == 1, plot
    assert '<table id="dp-table">' in page and "final \u03b5 (median)" in page
    assert 'id="plot-norm"' not in page  # DP-only logs have no global norm to draw
    assert 'id="plot-loss"' in page
    table = page[page.index('<table id="dp-table">'):page.index("</table>", page.index('<table id="dp-table">'))]
    assert "dp-sgd adaptive" in table and "\u2192" in table  # the adaptive C moved: first -> last


def test_dp_summary_numbers(dp_log):
    runs = [series(r) for r in read_runs(dp_log)]
    rows = {r["method"]: r for r in dp_summary(runs)}
    assert list(rows) == list(METHODS) and all(r["runs"] == 2 for r in rows.values())
    fixed, adaptive = rows["dp-sgd C=1.0"], rows["dp-sgd adaptive"]
    assert fixed["final_epsilon"] == pytest.approx(0.15 * np.median([np.sqrt(80), np.sqrt(81)])) and fixed["clip_first"] == fixed["clip_last"] == 1.0
    assert adaptive["clip_first"] == 3.0 and adaptive["clip_last"] < 3.0
    expect = np.mean([np.mean([r["dp"]["fraction_clipped"] for r in dp_records(False, s)]) for s in (0, 1)])
    assert fixed["fraction_clipped_pct"] == pytest.approx(100 * expect)


def test_quantile_figure_is_log_scale_with_one_panel_per_method_and_c_drawn(dp_log):
    fig = norm_quantiles_figure([series(r) for r in read_runs(dp_log)])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and all(ax.get_yscale() == "log" for ax in axes)
    assert [ax.get_title().split(" (")[0] for ax in axes] == list(METHODS)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "clip bound C" in texts and "p50 of the examples" in texts
    adaptive_c = next(line for line in axes[1].get_lines() if line.get_linestyle() == ":").get_ydata()
    assert adaptive_c[0] == pytest.approx(3.0) and adaptive_c[-1] < 3.0


def test_logs_without_dp_get_no_section(tmp_path):
    recs = [{"step": i, "norm": 1.0 + 0.1 * i, "threshold": 1.5, "clipped": i > 5, "loss": 1.0 / (1 + i)}
            for i in range(20)]
    path = _write(tmp_path / "plain.jsonl", [("norm:1.5", 0, recs)])
    page = build_report([path], tmp_path / "report.html").read_text()
    assert 'id="dp"' not in page and "Differential privacy" not in page and 'id="plot-norm"' in page
    assert series(read_runs(path)[0]).dp is None


def test_dp_runs_mixed_with_other_runs_keep_the_norm_plot(tmp_path):
    path = _write(tmp_path / "mixed.jsonl", [("dp-sgd C=1.0", 0, dp_records(False, 0, with_norm=True)),
                                             ("norm:1.5", 0, [{"step": i, "norm": 1.0} for i in range(10)])])
    page = build_report([path], tmp_path / "report.html").read_text()
    assert 'id="plot-norm"' in page and len(_images(page, "dp-norms")) == 1
    table = page[page.index('<table id="dp-table">'):]
    assert "norm:1.5" not in table[:table.index("</table>")]  # only runs with dp records are in the dp table
