"""`gradclip report` and `gradclip suggest` survive any log: odd field types, deep nesting, zero norms,
mathtext in names, huge labels. Each case goes through ``gradclip.cli.main``: exit 0 with a sane
report, or exit 2 with one line on stderr; never a traceback."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradclip._errors import GradclipError
from gradclip.cli import main
from gradclip.monitor import RunLog
from gradclip.report import build_report, summarize
from gradclip.report._data import series
from gradclip.report._plots import display_label, layer_heatmaps, norm_figure
from gradclip.report._suggest import suggest

# the warnings that odd fields raise are checked through the CLI (which records its own)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
DEMO = Path(__file__).resolve().parent.parent / "runs" / "demo" / "logs" / "regression__norm_1.0__seed0.jsonl"


def records(n: int = 40, run: str = "a", nan_at: int | None = None) -> list[dict]:
    """Valid step records as the Monitor writes them (one spike at step 30)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        g = 50.0 if i == 30 else float(rng.lognormal(0.0, 0.3))
        r = {"run": run, "step": i, "loss": 2.0 / (1 + i), "norm": g, "clipped_norm": min(g, 1.5),
             "threshold": 1.5, "clipped": g > 1.5, "nonfinite": False,
             "layers": {"fc.weight": {"grad_norm": g / 2}, "fc.bias": {"grad_norm": g / 3}}}
        if nan_at is not None and i == nan_at:
            r.update(norm=None, clipped_norm=None, nonfinite=True,
                     offenders=[{"name": "fc.weight", "shape": [4, 3], "nan": 1, "inf": 0}])
        out.append(r)
    return out


def write(path: Path, recs: list, head: str = "") -> Path:
    path.write_text(head + "".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def report(tmp_path: Path, *logs: Path) -> tuple[int, str]:
    """Run ``gradclip report`` through the CLI's error boundary: (status, the page or "")."""
    out = tmp_path / "report.html"
    status = main(["report", *map(str, logs), "-o", str(out)])
    return status, out.read_text(encoding="utf-8") if status == 0 else ""


def run_both(tmp_path: Path, capsys, log: Path) -> tuple[int, int, str]:
    """Status of report and suggest on one log, and stderr; each failure is one line."""
    status_r, page = report(tmp_path, log)
    err_r = capsys.readouterr().err
    status_s = main(["suggest", str(log)])
    err_s = capsys.readouterr().err
    for status, err in ((status_r, err_r), (status_s, err_s)):
        assert status in (0, 2)
        if status == 2:
            assert err.count("\n") == 1, err
    if status_r == 0:
        assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    return status_r, status_s, err_r + err_s


# -- steps ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, shown", [(None, 20), ("7", 20), ("seven", 20), ([1], 20), ({"a": 1}, 20), (True, 20),
                                        (1e300, int(1e300)), (-5, -5), (10**400, 20)])
def test_odd_step_falls_back_to_the_position(tmp_path, capsys, bad, shown):
    recs = records(nan_at=20)
    for i in (3, 20):
        recs[i]["step"] = bad
    log = write(tmp_path / "steps.jsonl", recs)
    assert run_both(tmp_path, capsys, log)[:2] == (0, 0)
    row = summarize(log)[0]
    assert row["first_nonfinite_step"] == shown and row["logged_steps"] == 40


def test_all_steps_null_report_and_suggest(tmp_path, capsys):
    recs = records(nan_at=5)
    for r in recs:
        r["step"] = None
    status_r, status_s, _ = run_both(tmp_path, capsys, write(tmp_path / "nulls.jsonl", recs))
    assert (status_r, status_s) == (0, 0)


def test_bad_step_type_is_named_in_a_warning(tmp_path, capsys):
    recs = records()
    recs[4]["step"] = "four"
    _, _, err = run_both(tmp_path, capsys, write(tmp_path / "w.jsonl", recs))
    assert "warning" in err and "'step'" in err


# -- offenders and shapes ------------------------------------------------------------------------

@pytest.mark.parametrize("offenders", [
    {"name": "fc.weight", "shape": [4, 3]},                  # a dict, not a list
    [{"name": "fc.weight", "shape": 12, "nan": 1}],          # shape as an int
    [{"name": "fc.weight", "shape": "4x3", "nan": "many"}],  # shape as a string
    [{"name": {"deep": [1, 2]}, "shape": [[1], {"a": 2}]}],  # nested junk
    "fc.weight",                                             # a string
    [None], [[1, 2]], 7, [],
])
def test_malformed_offender_is_shown_as_text(tmp_path, capsys, offenders):
    recs = records(nan_at=20)
    recs[20]["offenders"] = offenders
    log = write(tmp_path / "off.jsonl", recs)
    assert run_both(tmp_path, capsys, log)[:2] == (0, 0)
    text = summarize(log)[0]["first_offender"]
    assert text is None or isinstance(text, str)


def test_int_shape_is_shown_as_written(tmp_path):
    recs = records(nan_at=20)
    recs[20]["offenders"] = [{"name": "fc.weight", "shape": 12, "nan": 1}]
    assert summarize(write(tmp_path / "o.jsonl", recs))[0]["first_offender"] == "fc.weight shape=12 nan=1"


# -- nesting -------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["line", "field"])
def test_deeply_nested_json_is_one_line_error(tmp_path, capsys, where):
    deep = "[" * 100_000 + "]" * 100_000
    line = deep if where == "line" else '{"step": 1, "norm": 1.0, "layers": ' + deep + "}"
    log = tmp_path / "deep.jsonl"
    log.write_text(json.dumps({"step": 0, "norm": 1.0}) + "\n" + line + "\n", encoding="utf-8")
    for argv in (["report", str(log), "-o", str(tmp_path / "r.html")], ["suggest", str(log)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{log}:2:" in err and "nested" in err


# -- zero norms ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layers", [True, False])
def test_all_zero_norms(tmp_path, capsys, layers):
    recs = records()
    for r in recs:
        r.update(norm=0.0, clipped_norm=0.0, threshold=0.0)
        if layers:
            r["layers"] = {"fc.weight": {"grad_norm": 0.0}}
        else:
            del r["layers"]
    log = write(tmp_path / "zero.jsonl", recs)
    status_r, status_s, err = run_both(tmp_path, capsys, log)
    assert (status_r, status_s) == (0, 2)  # a report of zeros is fine; a threshold read off zeros is not
    assert "every finite 'norm' is 0" in err


@pytest.mark.parametrize("other", [1e-300, 5e-324, 1.0, 1e308])
def test_zero_norms_mixed_with_others_give_positive_finite_thresholds(tmp_path, capsys, other):
    recs = records()
    for i, r in enumerate(recs):
        r.update(norm=0.0 if i % 2 else other, clipped=i % 4 == 0)
    log = write(tmp_path / "mixed.jsonl", recs)
    assert run_both(tmp_path, capsys, log)[:2] == (0, 0)
    advice = suggest(log)
    assert advice["candidates"] and all(math.isfinite(c["threshold"]) and c["threshold"] > 0
                                        for c in advice["candidates"])
    assert advice["recommended"]["threshold"] > 0
    assert main(["suggest", str(log), "--json"]) == 0
    json.loads(capsys.readouterr().out)


# -- mathtext ------------------------------------------------------------------------------------

MATHTEXT = r"$\frac{$"


def _texts(fig) -> list[str]:
    ax = fig.axes[0]
    out = [t.get_text() for t in ax.get_legend().get_texts()] + [ax.get_title()]
    out += [c.get_text() for c in ax.get_children() if hasattr(c, "get_text") and c.get_text()]
    return out


def test_mathtext_run_and_layer_names_are_drawn_verbatim(tmp_path, capsys):
    recs = records(run=MATHTEXT, nan_at=35)
    for r in recs:
        r["layers"] = {r"$\sqrt{$.weight": {"grad_norm": 1.0}, "b_$x^2$": {"grad_norm": 2.0}}
    log = write(tmp_path / "math.jsonl", recs, head=json.dumps({"event": "start", "run": MATHTEXT}) + "\n")
    status_r, status_s, _ = run_both(tmp_path, capsys, log)
    assert (status_r, status_s) == (0, 0)
    fig = norm_figure([series(RunLog(log, recs, meta={"run": MATHTEXT}))])
    texts = _texts(fig)
    assert any(MATHTEXT.replace("$", r"\$") in t for t in texts)  # escaped, so drawn as written
    assert not any("$" in t.replace(r"\$", "") for t in texts)


def test_a_title_that_is_mathtext_is_escaped_too(tmp_path, capsys):
    log = write(tmp_path / "t.jsonl", records())
    assert main(["report", str(log), "-o", str(tmp_path / "r.html"), "--title", MATHTEXT]) == 0


def test_layer_tick_labels_are_escaped():
    recs = records()
    for r in recs:
        r["layers"] = {r"m.$\frac{$": {"grad_norm": 1.0}, "m.b": {"grad_norm": 2.0}}
    maps = layer_heatmaps([series(RunLog(Path("x.jsonl"), recs, meta={"run": "$a$"}))])
    assert len(maps) == 1


# -- several runs in one file --------------------------------------------------------------------

def test_one_file_with_several_runs_is_reported_as_several_runs(tmp_path, capsys):
    text = ""
    for name in ("alpha", "beta", "alpha"):
        text += json.dumps({"event": "start", "run": name}) + "\n"
        text += "".join(json.dumps(r) + "\n" for r in records(n=25, run=name))
    log = tmp_path / "shared.jsonl"
    log.write_text(text, encoding="utf-8")
    status, page = report(tmp_path, log)
    assert status == 0
    for label in ("alpha", "beta", "alpha #2"):
        assert f">{label}</td>" in page
    assert "3 runs" in page


# -- huge labels ---------------------------------------------------------------------------------

def test_a_100kb_label_is_truncated_and_fast(tmp_path, capsys):
    label = "x" * 100_000
    log = write(tmp_path / "huge.jsonl", records(run=label), head=json.dumps({"event": "start", "run": label}) + "\n")
    start = time.perf_counter()
    status, page = report(tmp_path, log)
    assert status == 0
    assert main(["suggest", str(log)]) == 0
    assert time.perf_counter() - start < 10  # 70 s and 1 GB before labels were shortened
    assert "x" * 200 not in page.replace(f'title="{label}"', "")  # full label only in a title= attribute
    assert len(page) < 2_000_000


def test_display_labels_stay_distinct():
    a, b = "run-" + "x" * 100 + "-seed0", "run-" + "x" * 100 + "-seed1"
    assert len(display_label(a)) <= 60 and display_label(a) != display_label(b)
    assert display_label("short") == "short"
    assert display_label(MATHTEXT) == MATHTEXT  # display only shortens; escaping is the plot's job


def test_two_long_labels_get_two_legend_entries(tmp_path):
    a, b = "r" * 500 + "A", "r" * 500 + "B"
    runs = [series(RunLog(Path(f"{n}.jsonl"), records(run=n), meta={"run": n})) for n in (a, b)]
    labels = [t.get_text() for t in norm_figure(runs).axes[0].get_legend().get_texts()][:2]
    assert len(set(labels)) == 2 and all(len(t) <= 70 for t in labels)


# -- random mutations of a real log --------------------------------------------------------------

def _base_records() -> list[dict]:
    if DEMO.is_file():
        recs = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
        recs = [r for r in recs if "event" not in r][:24]
        if recs:
            return recs
    return records()


BASE = _base_records()
JUNK = st.one_of(
    st.none(), st.booleans(), st.text(max_size=8), st.sampled_from(["nan", "NaN", "inf", "-Infinity", "1e999", "$x$"]),
    st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0]),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)
FIELDS = sorted({k for r in BASE for k in r} | {"offenders", "step", "layers", "run"})


@st.composite
def mutated_logs(draw) -> list[dict]:
    recs = [dict(r) for r in BASE]
    for _ in range(draw(st.integers(1, 12))):
        i = draw(st.integers(0, len(recs) - 1))
        recs[i][draw(st.sampled_from(FIELDS))] = draw(JUNK)
    return recs


def _succeeds_or_gradclip_error(fn) -> None:
    try:
        fn()
    except GradclipError:
        pass


_SETTINGS = {"deadline": None, "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]}


@settings(max_examples=50, **_SETTINGS)
@given(recs=mutated_logs())
def test_mutated_records_summarize_and_suggest_or_raise_a_gradclip_error(tmp_path, recs):
    log = RunLog(tmp_path / "m.jsonl", recs)
    _succeeds_or_gradclip_error(lambda: summarize([log]))
    _succeeds_or_gradclip_error(lambda: suggest(log))


@settings(max_examples=12, **_SETTINGS)  # each report draws four PNGs (~0.3 s)
@given(recs=mutated_logs())
def test_mutated_records_build_a_report_or_raise_a_gradclip_error(tmp_path, recs):
    _succeeds_or_gradclip_error(lambda: build_report([RunLog(tmp_path / "m.jsonl", recs)], tmp_path / "m.html"))


def test_an_integer_too_long_to_read_is_one_line_error(tmp_path, capsys):
    log = tmp_path / "digits.jsonl"
    log.write_text('{"step": 0, "norm": 1.0}\n{"step": 1, "norm": ' + "9" * 5000 + "}\n", encoding="utf-8")
    assert main(["suggest", str(log)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{log}:2:" in err


def test_a_step_too_large_for_a_figure_falls_back_to_the_position(tmp_path):
    log = tmp_path / "huge.jsonl"
    recs = [{"step": -1.7976931348623155e308 if i == 2 else i, "norm": 1.0 + i, "loss": 1.0} for i in range(6)]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    from gradclip.report import build_report, summarize
    from gradclip.report._data import series
    from gradclip.monitor import read_jsonl

    assert series(read_jsonl(log)).step.tolist() == [0, 1, 2, 3, 4, 5]
    assert build_report([log], tmp_path / "r.html").is_file() and summarize([log])[0]["logged_steps"] == 6


def test_per_tensor_thresholds_are_read_without_a_warning(tmp_path):
    """A list ``threshold`` (AdaGC, PerTensorNorm: per-tensor bounds, in the record schema) is not a
    global bound: not drawn, and no warning; a list of non-numbers still warns."""
    import warnings

    from gradclip.report import build_report

    good = tmp_path / "a.jsonl"
    good.write_text("".join(json.dumps({"step": i, "norm": 1.0 + i, "threshold": [0.5, 1.0, None]}) + "\n"
                            for i in range(4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_report([good], tmp_path / "a.html")
    bad = tmp_path / "b.jsonl"
    bad.write_text("".join(json.dumps({"step": i, "norm": 1.0, "threshold": ["x"]}) + "\n" for i in range(2)))
    with pytest.warns(UserWarning, match="list 'threshold'"):
        build_report([bad], tmp_path / "b.html")
