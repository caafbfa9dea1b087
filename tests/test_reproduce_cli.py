"""``gradclip reproduce``: the listing, the errors, and what every reproduction writes.

The reproductions themselves are tested in ``tests/test_reproduce_<name>.py``; here a small
reproduction written for the test checks the writer (results.json, report.html with the PNGs
inside, the verdict table) and the command's error boundary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from gradclip import cli
from gradclip.reproduce import REPRODUCTIONS, Reproduction, reproduce, table
from gradclip.reproduce import _registry


def _tiny(quick: bool, out: Path, say) -> Reproduction:
    from gradclip.reproduce._plot import figure, save

    say("one run")
    fig, ax = figure(3, 2)
    ax.plot([0, 1], [1, 0])
    return Reproduction(
        name="tiny", claim="a line goes down", verdict="reproduced", reason="it went down",
        columns=["method", "final", "note"], rows=[["none", 1.23456, None], ["norm:1.0", float("nan"), "x"]],
        numbers={"final": [1.0, float("inf")], "n": 3}, config={"steps": 2 if quick else 20},
        plots=[save(fig, out, "line")], logs=[],
    )


@pytest.fixture
def tiny(monkeypatch):
    entry = _registry.Entry("tiny", "a test reproduction", "_tiny")
    monkeypatch.setitem(_registry.REPRODUCTIONS, "tiny", entry)
    monkeypatch.setattr(_registry.Entry, "runner", lambda self: _tiny)
    return entry


def test_list_names_every_reproduction_once(capsys):
    assert cli.main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("mnist-lstm", "optimizers", "zhang-toy", "zhang-smoothness", "pascanu-cliff", "charlm-spikes"):
        assert name in REPRODUCTIONS
        assert sum(line.split()[0] == name for line in out.splitlines() if line.strip()) == 1


def test_writes_results_report_and_table(tiny, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["reproduce", "tiny", "--quick", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "[tiny] one run" in captured.err
    assert "verdict: reproduced (it went down)" in captured.out and "1.235" in captured.out
    data = json.loads((out / "results.json").read_text())
    assert data["verdict"] == "reproduced" and data["config"] == {"steps": 2, "quick": True}
    assert data["numbers"]["final"] == [1.0, "inf"]  # strict JSON: no bare Infinity/NaN
    assert data["table"]["rows"][1][1] is None and data["plots"] == ["line.png"]
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "a line goes down" in page and "Verdict: reproduced" in page


def test_python_api_returns_the_reproduction(tiny, tmp_path):
    result = reproduce("tiny", out=tmp_path)
    assert result.seconds > 0 and result.config["quick"] is False
    assert table(result).splitlines()[0].split() == ["method", "final", "note"]


def test_a_verdict_must_be_one_of_three():
    with pytest.raises(ValueError, match="verdict"):
        Reproduction("x", "c", "kind of", "r", ["a"], [[1]], {}, {})
    with pytest.raises(ValueError, match="cells"):
        Reproduction("x", "c", "partly", "r", ["a", "b"], [[1]], {}, {})


@pytest.mark.parametrize("argv, expected", [
    (["reproduce", "zhang-tooy"], "Did you mean 'zhang-toy'?"),
    (["reproduce"], "Name a reproduction"),
    (["reproduce", "--quick"], "Name a reproduction"),
])
def test_mistakes_are_one_line(argv, expected, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("gradclip reproduce: ") and expected in err


def test_out_that_is_a_file_is_refused_before_running(tiny, tmp_path, capsys, monkeypatch):
    target = tmp_path / "file"
    target.write_text("")
    monkeypatch.setattr(_registry.Entry, "runner", lambda self: pytest.fail("ran before checking --out"))
    assert cli.main(["reproduce", "tiny", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_ctrl_c_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    def interrupted(quick, out, say):
        raise KeyboardInterrupt

    monkeypatch.setattr(_registry.Entry, "runner", lambda self: interrupted)
    assert cli.main(["reproduce", "tiny", "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err.strip() == "gradclip reproduce: interrupted"


def test_cells_are_compact():
    from gradclip.reproduce._result import cell

    assert [cell(None), cell(0.123456), cell(math.nan), cell(3)] == ["-", "0.1235", "nan", "3"]
