"""The CLI's error boundary: a user's mistake is one line and exit status 2, Ctrl-C one line and 130.

No traceback for anything a user can cause: a path that is a directory, a missing file, a value of the
wrong type, an interruption. ``gradclip compare`` interrupted still writes what finished.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gradclip import cli
from gradclip.experiments import CompareInterrupted, RunResult, compare
from gradclip.experiments import _compare as compare_module


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps({"step": i, "norm": 1.0 + i, "loss": 2.0 - 0.1 * i}) + "\n" for i in range(5)))
    return path


def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default, so Python turns it into KeyboardInterrupt.

    A process started in the background by a non-interactive shell inherits SIGINT ignored, and
    Python then installs no handler; the tests must not depend on how the suite was launched.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("output", ["some_dir/", "existing"])
def test_report_to_a_directory_is_one_line(output, log, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    assert cli.main(["report", str(log), "-o", output]) == 2
    err = one_line(capsys)
    assert err.startswith("gradclip report: -o/--output") and "is a directory" in err and "report.html" in err


def test_compare_json_to_a_directory_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("gradclip.experiments.compare", lambda *a, **k: pytest.fail("trained before checking --json"))
    assert cli.main(["compare", "--seeds", "0", "--json", str(tmp_path)]) == 2
    assert "--json" in one_line(capsys)


def test_any_os_error_on_a_path_is_one_line(log, tmp_path, capsys, monkeypatch):
    import gradclip.report._html as html

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "r.html"))

    monkeypatch.setattr(html, "build_report", denied)
    assert cli.main(["report", str(log), "-o", str(tmp_path / "r.html")]) == 2
    err = one_line(capsys)
    assert err.startswith("gradclip report: ") and "r.html: permission denied" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "--threads", "abc"], "argument --threads: expected comma-separated integers such as 1,2, each 1 or more"),
        (["bench", "--threads", "0"], "each 1 or more"),
        (["bench", "--reps", "x"], "argument --reps"),
        (["compare", "--seeds", "x"], "argument --seeds: expected comma-separated integers"),
        (["compare", "--nproc", "0"], "argument --nproc: expected a whole number, 1 or more. Received: '0'"),
        (["compare", "--no-such-option"], "unrecognized arguments: --no-such-option"),
    ],
)
def test_bad_option_values_are_usage_errors(argv, needle, capsys):
    assert cli.main(argv) == 2
    err = one_line(capsys)
    assert err.startswith("gradclip") and needle in err and "--help" in err


def test_a_directory_as_log_says_so(tmp_path, capsys):
    for command in ("report", "suggest"):
        assert cli.main([command, str(tmp_path)]) == 2
        err = one_line(capsys)
        assert err.startswith(f"gradclip {command}: {tmp_path}: is a directory") and "no such file" not in err


def test_a_missing_log_says_so(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "r.html")]) == 2
    assert "nope.jsonl: no such file" in one_line(capsys)


@pytest.mark.parametrize(("command", "module", "name"), [
    ("report", "gradclip.report._cli", "run_report"),
    ("suggest", "gradclip.report._cli", "run_suggest"),
    ("bench", "gradclip.bench", "run_and_print"),
])
def test_ctrl_c_is_one_line_and_130_in_every_command(command, module, name, log, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"{module}.{name}", interrupted)
    argv = [command] if command == "bench" else [command, str(log)]
    assert cli.main(argv) == 130
    assert one_line(capsys) == f"gradclip {command}: interrupted"


class InterruptedRunner:
    """A runner whose ``n``-th run is interrupted (as Ctrl-C would), the others finish at once."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def run(self, task, method, seed, data, log=None) -> RunResult:
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return RunResult(method=method, seed=seed, final_loss=0.5, initial_loss=2.0, diverged=False,
                         first_nonfinite_step=None, steps=10, clipped_fraction=0.1, max_grad_norm=3.0, seconds=0.01)


def test_compare_hands_back_the_finished_runs_when_interrupted(monkeypatch):
    monkeypatch.setattr(compare_module, "_runner", lambda framework: InterruptedRunner(3))
    seen = []
    with pytest.raises(CompareInterrupted) as info:
        compare("regression", ["none", "norm:1.0"], [0, 1], on_run=lambda run, done, total: seen.append((done, total)))
    stop = info.value
    assert isinstance(stop, KeyboardInterrupt) and (stop.done, stop.total) == (2, 4)
    assert stop.result["incomplete"] is True
    assert [(r["method"], r["seed"]) for r in stop.result["runs"]] == [("none", 0), ("none", 1)]
    assert seen == [(1, 4), (2, 4)]


def test_compare_ctrl_c_writes_table_and_json_marked_incomplete(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(compare_module, "_runner", lambda framework: InterruptedRunner(3))
    out = tmp_path / "r.json"
    code = cli.main(["compare", "--method", "none,norm:1.0", "--seeds", "0,1", "--json", str(out), "--no-report"])
    assert code == 130
    captured = capsys.readouterr()
    assert "incomplete: interrupted after 2 of 4 runs finished" in captured.out
    assert f"results: {out}" in captured.out
    assert captured.err.splitlines()[-1] == "gradclip compare: interrupted (2 of 4 runs finished)"
    assert "Traceback" not in captured.err
    data = json.loads(out.read_text())
    assert data["incomplete"] is True and len(data["runs"]) == 2


def test_real_sigint_during_compare(tmp_path):
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradclip.cli", "compare", "--method", "none,norm:1.0,value:1.0",
         "--seeds", "0,1,2", "--json", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint,
    )
    lines = []
    for line in proc.stderr:  # one line per finished run (no terminal)
        lines.append(line)
        if line.startswith("[1/9] "):
            proc.send_signal(signal.SIGINT)
            break
    stdout, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("gradclip compare: interrupted")
    data = json.loads(out.read_text())
    assert data["incomplete"] is True and 1 <= len(data["runs"]) < 9
    assert "incomplete: interrupted after" in stdout
    assert Path(tmp_path / "report.html").is_file()


@pytest.mark.slow
def test_ctrl_c_to_the_whole_process_group_with_ddp_workers(tmp_path):
    # a terminal's Ctrl-C reaches every process of the group: the DDP ranks must stay quiet
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradclip.cli", "compare", "--method", "norm:1.0", "--seeds", "0,1,2,3",
         "--nproc", "2", "--json", str(out), "--no-report"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
        preexec_fn=_default_sigint,
    )
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("[1/4] "):
            os.killpg(proc.pid, signal.SIGINT)
            break
    stdout, rest = proc.communicate(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert json.loads(out.read_text())["incomplete"] is True
