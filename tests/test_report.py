"""The HTML report: summary numbers vs NumPy, self-contained page, NaN marks, bad logs, CLI exit codes,
and a report that reads well with 1 run or 27 (seeds grouped, robust axes, one definition of spike)."""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from gradclip._errors import InputTypeError, LogError  # noqa: E402
from gradclip.monitor import RunLog, read_jsonl  # noqa: E402
from gradclip.monitor._spike import SpikeDetector  # noqa: E402
from gradclip.report import build_report, summarize  # noqa: E402
from gradclip.report._cli import add_report_parser, add_suggest_parser, run_report, run_suggest  # noqa: E402
from gradclip.report._data import series, summarize_methods  # noqa: E402
from gradclip.report._plots import norm_figure, rolling_rate  # noqa: E402

NAN_STEP = 37


def synthetic_records(run: str, n: int = 60, seed: int = 0, nan_at: int | None = None, layers: bool = False,
                      scale: float = 1.0) -> list[dict]:
    """Records as Monitor/compare write them: log-normal norms, threshold 1.5, spikes, an optional NaN."""
    rng = np.random.default_rng(seed)
    norms = scale * rng.lognormal(0.0, 0.6, n)
    recs = []
    for i, g in enumerate(norms):
        r = {"run": run, "step": i, "loss": float(2.0 / (1 + i)), "norm": float(g),
             "clipped_norm": float(min(g, 1.5)), "threshold": 1.5, "clipped": bool(g > 1.5),
             "skipped": False, "nonfinite": False, "spike": bool(i % 17 == 5)}
        if layers and i % 10 == 0:
            r["layers"] = {"fc1.weight": {"grad_norm": float(g / 2)}, "fc2.bias": {"grad_norm": float(g / 3)}}
        if nan_at is not None and i >= nan_at:
            r.update(norm=None, clipped_norm=None, loss=None, clipped=False, nonfinite=True, spike=False)
            if i == nan_at:
                r["offenders"] = [{"name": "lstm.weight_hh", "shape": [64, 16], "nan": 3, "inf": 1},
                                  {"name": "fc.bias", "shape": [10], "nan": 10, "inf": 0}]
                r["layers"] = {"fc1.weight": {"grad_norm": None}, "fc2.bias": {"grad_norm": 0.1}}
        recs.append(r)
    return recs


def write_log(path: Path, records: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")
    return path


class _Page(HTMLParser):
    """Collects tags and attributes of the report page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def find(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_summary_numbers_match_numpy(tmp_path):
    recs = synthetic_records("a", n=80, nan_at=NAN_STEP)
    row = summarize([write_log(tmp_path / "a.jsonl", recs)])[0]
    norms = np.array([r["norm"] for r in recs if r["norm"] is not None])
    assert row["label"] == "a" and row["logged_steps"] == 80 and row["steps"] == NAN_STEP  # optimizer steps
    assert row["clipped_pct"] == pytest.approx(100 * np.mean([r["clipped"] for r in recs[:NAN_STEP]]))
    for p in (50, 90, 99):
        assert row[f"norm_p{p}"] == pytest.approx(np.percentile(norms, p), rel=1e-12)
    assert row["norm_max"] == pytest.approx(norms.max())
    assert row["spikes"] == sum(r["spike"] for r in recs)
    assert row["nonfinite_steps"] == 80 - NAN_STEP
    assert row["first_nonfinite_step"] == NAN_STEP
    assert row["first_offender"] == "lstm.weight_hh shape=(64, 16) nan=3 inf=1"
    assert row["outcome"] == "diverged" and row["spikes_source"] == "log"
    assert row["final_loss"] is None and row["last_batch_loss"] == pytest.approx(2.0 / NAN_STEP)


def test_summary_of_a_run_with_only_null_norms(tmp_path):
    row = summarize([write_log(tmp_path / "x.jsonl", [{"step": 0, "norm": None}, {"step": 1, "norm": None}])])[0]
    assert row["norm_p50"] is None and row["norm_max"] is None
    assert row["nonfinite_steps"] == 2 and row["first_nonfinite_step"] == 0 and row["first_offender"] is None


def test_report_is_self_contained_with_all_sections(tmp_path):
    a = write_log(tmp_path / "a.jsonl", synthetic_records("run-a", layers=True))
    b = write_log(tmp_path / "b.jsonl", synthetic_records("run-b", seed=1))
    out = build_report([a, b], tmp_path / "sub" / "report.html", title="My <report>")
    text = out.read_text(encoding="utf-8")
    page = parse(out)
    assert "<title>My &lt;report&gt;</title>" in text
    imgs = page.find("img")
    for img in imgs:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        assert img.get("alt")
    for tag in ("script", "link", "iframe", "object"):
        assert not page.find(tag), tag
    assert not any(v and v.startswith(("http://", "https://", "//")) for _, attrs in page.tags for v in attrs.values())
    ids = {a.get("id") for _, a in page.tags}
    assert {"summary", "summary-section", "norm", "loss", "clip-rate", "layers"} <= ids
    plots = [a for t, a in page.tags if t == "figure"]
    assert [p["id"] for p in plots] == ["plot-norm", "plot-loss", "plot-clip-rate", "plot-layers-0"]
    assert len(imgs) == len(plots)  # one image per plot
    assert len(page.find("tr")) == 3  # header + one row per run
    assert "run-a" in text and "run-b" in text


def test_overlay_legend_names_both_runs(tmp_path):
    a = write_log(tmp_path / "a.jsonl", synthetic_records("run-a"))
    b = write_log(tmp_path / "b.jsonl", synthetic_records("run-b", seed=1))
    fig = norm_figure([series(read_jsonl(a)), series(read_jsonl(b))])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "run-a" in legend and "run-b" in legend
    assert {"post-clip norm", "global-norm threshold", "spike"} <= set(legend)


def test_nan_run_is_marked_where_it_exploded(tmp_path):
    log = write_log(tmp_path / "boom.jsonl", synthetic_records("boom", nan_at=NAN_STEP))
    fig = norm_figure([series(read_jsonl(log))])
    notes = [t.get_text() for t in fig.axes[0].texts]
    assert any(t.startswith("boom: ") and f"non-finite @ step {NAN_STEP}" in t for t in notes)
    assert any(line.get_xdata()[0] == NAN_STEP and line.get_linestyle() == "--" for line in fig.axes[0].lines)
    text = build_report([log], tmp_path / "r.html").read_text(encoding="utf-8")
    assert 'id="warnings"' in text and f"non-finite at step {NAN_STEP}" in text and "lstm.weight_hh" in text
    assert '<tr class="o-diverged">' in text


def test_wide_range_uses_log_scale(tmp_path):
    wide = write_log(tmp_path / "w.jsonl", [{"step": i, "norm": 10.0 ** i} for i in range(6)])
    narrow = write_log(tmp_path / "n.jsonl", [{"step": i, "norm": 1.0 + i} for i in range(6)])
    assert norm_figure([series(read_jsonl(wide))]).axes[0].get_yscale() == "log"
    assert norm_figure([series(read_jsonl(narrow))]).axes[0].get_yscale() == "linear"


def test_rolling_rate_matches_numpy():
    flags = np.random.default_rng(3).random(200) < 0.3
    w = 7
    expected = [100 * flags[max(0, i + 1 - w): i + 1].mean() for i in range(len(flags))]
    np.testing.assert_allclose(rolling_rate(flags, w), expected)


def test_truncated_last_line_still_reports_with_a_warning(tmp_path):
    log = write_log(tmp_path / "killed.jsonl", synthetic_records("k", n=20), tail='{"step": 20, "nor')
    with pytest.warns(UserWarning, match="truncated"):
        out = build_report([log], tmp_path / "r.html")
    text = out.read_text(encoding="utf-8")
    assert "last line was truncated" in text
    assert summarize([read_jsonl(log, warn=False)])[0]["logged_steps"] == 20


def test_no_loss_no_layers_gives_fewer_plots(tmp_path):
    log = write_log(tmp_path / "bare.jsonl", [{"step": i, "norm": 1.0 + (i % 3)} for i in range(10)])
    page = parse(build_report(log, tmp_path / "r.html"))
    assert [a["id"] for a in page.find("figure")] == ["plot-norm"]  # never clipped: a sentence, no plot


def test_bad_arguments_are_typed_errors(tmp_path):
    with pytest.raises(InputTypeError, match="Received: an empty list"):
        build_report([], tmp_path / "r.html")
    with pytest.raises(InputTypeError, match="Received: int"):
        summarize([3])
    with pytest.raises(LogError, match="no such file"):
        summarize([tmp_path / "missing.jsonl"])


def method_runs(method: str, seeds: int = 3, n: int = 60, diverge_at: int | None = None, layers: bool = False,
                clip: str = "sometimes") -> list[RunLog]:
    """RunLogs as ``gradclip compare`` writes them (start meta, end result), built in memory.

    ``diverge_at``: the norm and loss grow by 1e3 per step from there to 1e15, then a step is
    non-finite (at ``diverge_at + 4``). ``clip``: ``"always"``, ``"never"`` or ``"sometimes"`` (norm above 1.5).
    """
    out = []
    for seed in range(seeds):
        recs = synthetic_records(f"{method} seed {seed}", n=n, seed=seed, layers=layers)
        for r in recs:
            r.pop("spike")  # compare logs carry no spike flag
            r["clipped"] = {"always": True, "never": False}.get(clip, r["clipped"])
        if diverge_at is not None:
            recs = recs[:diverge_at + 5]
            for k, r in enumerate(recs[diverge_at:-1], start=1):
                r.update(norm=10.0 ** (3 * k + 3), clipped_norm=10.0 ** (3 * k + 3), loss=10.0 ** (3 * k + 4))
            recs[-1].update(norm=None, clipped_norm=None, loss=None, clipped=False, nonfinite=True)
        final = None if diverge_at is not None else 0.05
        end = {"event": "end", "final_loss": final, "initial_loss": 2.0, "steps": len(recs) - (diverge_at is not None),
               "outcome": "diverged" if diverge_at is not None else "ok"}
        meta = {"event": "start", "run": f"{method} seed {seed}", "method": method, "seed": seed, "policy": method}
        out.append(RunLog(Path(f"{method}_{seed}.jsonl"), recs, meta=meta, end=end))
    return out


def _legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_seeds_of_a_method_share_one_legend_entry():
    methods = ["none", "norm:1.0", "zclip"]
    runs = [series(log) for m in methods for log in method_runs(m)]
    legend = _legend(norm_figure(runs))
    for m in methods:
        assert sum(t.split(" (")[0] == m for t in legend) == 1, legend
    assert not any(" seed " in t for t in legend)  # no entry per seed


def test_a_run_that_blew_up_does_not_set_the_y_range_and_is_marked_once():
    runs = [series(log) for log in method_runs("norm:1.0") + method_runs("none", diverge_at=5)]
    ax = norm_figure(runs).axes[0]
    assert max(s.norm[np.isfinite(s.norm)].max() for s in runs) >= 1e15
    assert ax.get_ylim()[1] < 1e3  # set by the ok runs (norms of a few units), with head room for the label
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["none: non-finite @ step 9 (3 of 3 runs)"]  # once per method, not per seed


def test_no_threshold_line_for_value_clipping():
    value = norm_figure([series(log) for log in method_runs("value:1.0", seeds=1)]).axes[0]
    norm = norm_figure([series(log) for log in method_runs("norm:1.0", seeds=1)]).axes[0]
    assert not [line for line in value.lines if line.get_linestyle() == ":"]
    assert [line for line in norm.lines if line.get_linestyle() == ":"]
    assert "global-norm threshold" not in _legend(value.figure)


def test_clip_rate_plot_absent_when_every_rate_is_constant(tmp_path):
    logs = method_runs("norm:1.0", clip="always") + method_runs("none", clip="never")
    text = build_report(logs, tmp_path / "r.html").read_text(encoding="utf-8")
    page = parse(tmp_path / "r.html")
    assert "plot-clip-rate" not in {a.get("id") for a in page.find("figure")}
    assert "norm:1.0 clipped every step; none never clipped." in text
    mixed = build_report(logs + method_runs("autoclip:p=10"), tmp_path / "m.html")
    assert "plot-clip-rate" in {a.get("id") for a in parse(mixed).find("figure")}


def test_one_heatmap_per_method_when_records_carry_layers(tmp_path):
    logs = method_runs("norm:1.0", layers=True) + method_runs("zclip", layers=True) + method_runs("none")
    page = parse(build_report(logs, tmp_path / "r.html"))
    maps = [a["id"] for a in page.find("figure") if a["id"].startswith("plot-layers")]
    assert maps == ["plot-layers-0", "plot-layers-1"]
    alts = [a["alt"] for a in page.find("img") if "Per-tensor" in a["alt"]]
    assert alts == ["Per-tensor gradient norms: norm:1.0", "Per-tensor gradient norms: zclip"]


def test_spikes_are_scored_by_the_monitor_detector_when_the_log_has_no_flags():
    recs = [{"step": i, "norm": 1.0 + 0.1 * (i % 3), "loss": 1.0} for i in range(40)]
    recs[30]["norm"] = 50.0
    row = summarize([RunLog(Path("flagless.jsonl"), recs)])[0]
    detector = SpikeDetector()
    expected = sum(detector.update(r["norm"])[0] for r in recs)
    assert row["spikes"] == expected == 1 and row["spikes_source"] == "detector"
    short = summarize(method_runs("none", seeds=1, diverge_at=3))[0]
    assert short["spikes"] is None and short["spikes_note"] == "n/a: 7 finite norms"
    assert summarize_methods([short])[0]["spikes"] is None


def test_final_loss_and_steps_come_from_the_end_record(tmp_path):
    recs = [{"step": i, "norm": 2.0, "loss": 300.0 - i, "clipped": True} for i in range(5)]
    recs[-1]["loss"] = 208.8
    end = {"event": "end", "final_loss": 164.0, "initial_loss": 2.3e4, "steps": 5, "outcome": "ok"}
    log = RunLog(Path("v.jsonl"), recs, meta={"method": "value:1.0", "policy": "value:1.0"}, end=end)
    row = summarize([log])[0]
    assert (row["final_loss"], row["last_batch_loss"], row["steps"], row["logged_steps"]) == (164.0, 208.8, 5, 5)
    text = build_report([log], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "final loss (train set)" in text and "last finite batch loss" in text and "optimizer steps" in text
    assert "<td class=\"\">164</td>" in text


def test_method_summary_means_over_ok_runs_only(tmp_path):
    logs = method_runs("norm:1.0")
    logs[2].end = {**logs[2].end, "final_loss": 1e6, "outcome": "exploded"}
    m = summarize_methods(summarize(logs))[0]
    assert (m["runs"], m["ok"], m["outcomes"], m["mean_final_loss"]) == (3, 2, {"exploded": 1, "ok": 2}, 0.05)
    text = build_report(logs, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "0.05 (2 of 3 ok)" in text and 'class="o-exploded"' in text and "ok 2, exploded 1" in text


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gradclip")
    sub = parser.add_subparsers(dest="command")
    add_report_parser(sub)
    add_suggest_parser(sub)
    args = parser.parse_args(argv)
    return run_report(args) if args.command == "report" else run_suggest(args)


def _bad_logs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text('{"step": 0, "norm": 1.0}\n{not json}\n{"step": 2, "norm": 1.0}\n')
    return {"missing": (tmp_path / "missing.jsonl", "no such file"), "empty": (empty, "empty"),
            "corrupt": (corrupt, "corrupt.jsonl:2:")}


@pytest.mark.parametrize("command", ["report", "suggest"])
@pytest.mark.parametrize("kind", ["missing", "empty", "corrupt"])
def test_cli_bad_log_exits_2_with_one_line(tmp_path, capsys, command, kind):
    path, expected = _bad_logs(tmp_path)[kind]
    argv = [command, str(path)] + (["-o", str(tmp_path / "r.html")] if command == "report" else [])
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"gradclip {command}: ")
    assert str(path) in err and expected in err
    assert not (tmp_path / "r.html").exists()


def test_cli_report_writes_and_prints_path(tmp_path, capsys):
    log = write_log(tmp_path / "a.jsonl", synthetic_records("a"))
    out = tmp_path / "report.html"
    assert _cli(["report", str(log), "-o", str(out), "--title", "T"]) == 0
    assert out.is_file() and f"report: {out}" in capsys.readouterr().out


def test_cli_report_truncated_log_warns_on_stderr(tmp_path, capsys):
    log = write_log(tmp_path / "k.jsonl", synthetic_records("k", n=5), tail='{"st')
    assert _cli(["report", str(log), "-o", str(tmp_path / "r.html")]) == 0
    assert "warning" in capsys.readouterr().err


def test_import_report_does_not_import_matplotlib():
    code = "import gradclip.report, sys; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_gradclip_main_dispatches_report_and_suggest(tmp_path, capsys):
    from gradclip.cli import main

    log = write_log(tmp_path / "a.jsonl", synthetic_records("a"))
    assert main(["report", str(log), "-o", str(tmp_path / "r.html")]) == 0
    assert main(["suggest", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["recommended"]["spec"].startswith("norm:")
    assert main(["suggest", str(tmp_path / "missing.jsonl")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
