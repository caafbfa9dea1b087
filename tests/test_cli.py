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
    assert "diverged @ step" in stdout and "norm:1.0" in stdout
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


def test_without_a_terminal_one_line_per_finished_run(capsys, monkeypatch):
    held = []  # what stderr held as each run finished: the lines come as runs finish, not at the end
    real = cli._print_run
    monkeypatch.setattr(cli, "_print_run", lambda *a: (held.append(sys.stderr.getvalue()), real(*a)))
    assert cli.main(["compare", "--method", "none,norm:1.0", "--seeds", "0"]) == 0
    err = capsys.readouterr().err  # captured stderr is not a terminal
    lines = err.splitlines()
    assert len(lines) == 2 and "\r" not in err
    assert lines[0].startswith("[1/2] none seed 0: diverged at step ") and lines[0].endswith(" s")
    assert lines[1].startswith("[2/2] norm:1.0 seed 0: ok, final loss ")
    assert held[0] == "" and held[1] == lines[0] + "\n"
    assert cli.main(["compare", "--method", "norm:1.0", "--seeds", "0", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_run_line():
    run = {"method": "norm:1.0", "seed": 0, "final_loss": 0.71342, "diverged": False, "seconds": 0.52,
           "outcome": "stalled", "test_accuracy": None}
    assert cli.run_line(run, 3, 9) == "[3/9] norm:1.0 seed 0: stalled, final loss 0.7134, 0.5 s"
    bad = dict(run, final_loss=None, diverged=True, first_nonfinite_step=4, outcome="diverged", test_accuracy=0.1)
    assert cli.run_line(bad, 1, 2) == "[1/2] norm:1.0 seed 0: diverged at step 4, test acc 0.100, 0.5 s"
    assert cli.run_line({k: v for k, v in run.items() if k != "outcome"}, 1, 1).endswith(": ok, final loss 0.7134, 0.5 s")


def test_progress_bar_only_on_a_terminal(capsys, monkeypatch):
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
        (["compare", "--task", "nope"], "Valid tasks: digits-lstm, dp-digits, mnist-lstm, regression"),
        (["compare", "--method", "none,wat:2"], "Valid methods: adagc, agc, autoclip, blockrms, maxhist, none, norm, pertensor, spikeguard, value, zclip"),
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


def test_compare_help_lists_every_method_and_task(capsys):
    from gradclip import parse_policy
    from gradclip._policies import registry
    from gradclip.experiments import TASKS

    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = capsys.readouterr().out
    methods = text.split("methods (", 1)[1].split("tasks (--task)", 1)[0]
    listed = [line.split()[0] for line in methods.splitlines() if line.startswith("  ") and line[2:3] != " "]
    assert sorted(spec.split(":")[0] for spec in listed) == sorted(registry())  # every name, one example each
    for spec in listed:
        parse_policy(spec)  # every example is a valid spec
    assert all(name in text.split("tasks (--task)", 1)[1] for name in TASKS)


def test_top_level_help_names_every_command_with_an_example(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for command in ("compare", "report", "suggest", "bench"):
        assert f"gradclip {command} " in text.split("examples:", 1)[1]
    assert "130" in text and "'gradclip COMMAND --help'" in text


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
    assert "diverged @ step 4" in text and "75.0" in text
    assert "(1/1 ok)" in text and "(0/1 ok)" in text


def test_compare_table_means_only_ok_runs_and_names_each_outcome():
    base = {"method": "autoclip", "initial_loss": 2.3e4, "diverged": False, "first_nonfinite_step": None,
            "max_grad_norm": 1e13, "clipped_fraction": 0.75, "seconds": 0.5, "steps": 400}
    runs = [dict(base, seed=0, final_loss=1.76e12, outcome="exploded"),
            dict(base, seed=1, final_loss=2.3e4, outcome="stalled"),
            dict(base, seed=2, final_loss=0.8, outcome="ok")]
    text = compare_table({"task": "regression", "framework": "torch", "runs": runs})
    rows = text.splitlines()
    assert any("exploded" in r for r in rows) and any("stalled" in r for r in rows)
    summary = next(r for r in rows if r.startswith("autoclip") and "ok 1" in r)
    assert "exploded 1" in summary and "stalled 1" in summary
    assert "0.8 (1/3 ok)" in summary  # the 1.76e12 and 2.3e4 runs are not averaged in
    assert "exploded = final loss > 10x" in text
