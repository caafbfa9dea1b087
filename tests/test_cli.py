"""The ``gradclip`` command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gradclip import cli
from gradclip._render import compare_table, table


def test_compare_prints_table_and_writes_json_and_logs(tmp_path, capsys):
    out_json = tmp_path / "out" / "results.json"
    code = cli.main([
        "compare", "--method", "none,norm:1.0", "--seeds", "0", "--json", str(out_json),
        "--log-dir", str(tmp_path / "logs"), "--quiet",
    ])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "yes @ step" in stdout and "norm:1.0" in stdout
    assert str(out_json) in stdout and "per-step logs" in stdout
    data = json.loads(out_json.read_text())
    assert [r["method"] for r in data["runs"]] == ["none", "norm:1.0"]
    assert len(list((tmp_path / "logs").glob("*.jsonl"))) == 2
    report = out_json.parent / "report.html"  # written beside the JSON by default
    assert f"comparison report: {report}" in stdout
    html = report.read_text()
    assert "none seed 0" in html and "norm:1.0 seed 0" in html and "data:image/png;base64," in html
    assert all(r["log"] and (tmp_path / "logs") in Path(r["log"]).parents for r in data["runs"])


def test_compare_json_alone_puts_logs_and_report_beside_it(tmp_path, capsys):
    out_json = tmp_path / "results.json"
    assert cli.main(["compare", "--method", "norm:1.0", "--seeds", "0", "--json", str(out_json), "--quiet"]) == 0
    assert (tmp_path / "report.html").is_file() and len(list((tmp_path / "logs").glob("*.jsonl"))) == 1
    assert cli.main(["compare", "--method", "norm:1.0", "--seeds", "0", "--json", str(tmp_path / "b" / "r.json"),
                     "--quiet", "--no-report"]) == 0
    assert not (tmp_path / "b" / "report.html").exists()


def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
    assert cli.main(["compare", "--method", "norm:1.0", "--seeds", "0"]) == 0
    assert capsys.readouterr().err == ""  # captured stderr is not a terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert cli.main(["compare", "--method", "norm:1.0", "--seeds", "0"]) == 0
    err = capsys.readouterr().err
    assert "\r[" in err and "1/1 done" in err
    assert cli.main(["compare", "--method", "norm:1.0", "--seeds", "0", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_progress_line():
    assert cli.progress_line(0, 4, "none", 0) == "[" + "." * 24 + "] 0/4 none seed 0"
    assert cli.progress_line(2, 4, "norm:1.0", 1, width=8) == "[####....] 2/4 norm:1.0 seed 1"
    assert cli.progress_line(4, 4, "", -1, width=4) == "[####] 4/4 done"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["compare", "--task", "nope"], "Valid tasks: digits-lstm, regression"),
        (["compare", "--method", "none,wat:2"], "Valid methods: adagc, agc, autoclip, maxhist, none, norm, pertensor, spikeguard, value, zclip"),
        (["compare", "--method", "norm:1.0,colour=red"], "Valid keys for 'norm'"),
        (["compare", "--seeds", "a,b"], "comma-separated integers"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none,value:1.0,norm:1.0", ["none", "value:1.0", "norm:1.0"]),
        ("norm:1.0,norm_type=inf,value:1", ["norm:1.0,norm_type=inf", "value:1"]),
        ("value:min=-1,max=0.5;norm:2", ["value:min=-1,max=0.5", "norm:2"]),
        (" none , norm:1 ", ["none", "norm:1"]),
    ],
)
def test_split_methods(text, expected):
    assert cli.split_methods(text) == expected


def test_help_reads_well():
    for argv in (["--help"], ["compare", "--help"]):
        proc = subprocess.run([sys.executable, "-m", "gradclip.cli", *argv], capture_output=True, text=True)
        assert proc.returncode == 0
        assert "compare" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "gradclip.cli", "compare", "--help"], capture_output=True, text=True)
    assert "--method" in proc.stdout and "pertensor:1.0" in proc.stdout


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "compare" in capsys.readouterr().out


def test_table_alignment():
    text = table(["name", "value"], [["a", "1.5"], ["bbb", "10"]])
    lines = text.splitlines()
    assert lines[0].startswith("name") and set(lines[1]) <= {"-", " "}
    assert lines[2].endswith("  1.5") and lines[3].endswith("   10")


def test_compare_table_shows_test_accuracy_when_present():
    run = {"method": "norm:1.0", "seed": 0, "initial_loss": 2.3, "final_loss": 0.5, "diverged": False,
           "first_nonfinite_step": None, "max_grad_norm": 6.0, "clipped_fraction": 0.02, "seconds": 3.0,
           "test_accuracy": 0.8125}
    text = compare_table({"task": "digits-lstm", "framework": "torch", "runs": [run]})
    assert "test acc" in text and "0.812" in text and "mean test acc" in text
    assert "test acc" not in compare_table({"task": "t", "framework": "torch", "runs": [dict(run, test_accuracy=None)]})


def test_compare_table_marks_divergence_and_summarises():
    result = {
        "task": "regression", "framework": "torch",
        "runs": [
            {"method": "none", "seed": 0, "initial_loss": 100.0, "final_loss": None, "diverged": True,
             "first_nonfinite_step": 4, "max_grad_norm": 1e15, "clipped_fraction": 0.0, "seconds": 0.1},
            {"method": "norm:1.0", "seed": 0, "initial_loss": 100.0, "final_loss": 0.5, "diverged": False,
             "first_nonfinite_step": None, "max_grad_norm": 20.0, "clipped_fraction": 0.75, "seconds": 0.2},
        ],
    }
    text = compare_table(result)
    assert "yes @ step 4" in text and "75.0" in text
    assert "1/1" in text and "0/1" in text
