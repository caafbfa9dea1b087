"""Monitor sinks: JSONL (and surviving SIGKILL), CSV, TensorBoard event files, callbacks, bad specs."""

from __future__ import annotations

import csv
import datetime
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip.monitor import SCALAR_KEYS, Monitor, read_jsonl, read_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _run(sinks, steps=5, nan_at=None, **kwargs):
    """Train the tiny MLP with a Clipper and a Monitor; returns the records the monitor wrote."""
    got = []
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    clipper = gct.Clipper("norm:1.0", nonfinite="skip")
    x = torch.randn(8, 4)
    with Monitor(sinks=[*sinks, got.append], **kwargs) as monitor:
        for step in range(steps):
            opt.zero_grad()
            loss = (model(x) ** 2).sum() * 10
            loss.backward()
            if step == nan_at:
                model[0].weight.grad[0, 0] = float("nan")
            stats = clipper.step(model.named_parameters())
            monitor.step(model, clip_stats=stats, loss=loss.detach(), lr=0.05, epoch=0)
            if not bool(stats.skipped):
                opt.step()
    return got


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "deep" / "run.jsonl"
    got = _run([f"jsonl:{path}"], per_layer=True, nan_at=2)
    log = read_jsonl(path)
    assert log.records == got and not log.truncated
    assert log.records[2]["offenders"][0]["name"] == "0.weight" and log.records[2]["norm"] is None


def test_csv_round_trip(tmp_path):
    path = tmp_path / "run.csv"
    got = _run([f"csv:{path}"], nan_at=3)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SCALAR_KEYS and len(rows) == len(got)
    for row, rec in zip(rows, got):
        for key in SCALAR_KEYS:
            expected = rec.get(key)
            assert (json.loads(row[key]) if row[key] else None) == expected, key
    assert rows[3]["nonfinite"] == "true" and rows[3]["norm"] == ""


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_appends_to_an_existing_log_and_marks_the_restart(tmp_path):
    path = tmp_path / "a" / "grads.jsonl"
    first = _run([f"jsonl:{path}"], steps=5, run="first")
    second = _run([f"jsonl:{path}"], steps=3, run="second")
    lines = _lines(path)
    assert [line.get("event") for line in lines] == ["start"] + [None] * 5 + ["end", "start"] + [None] * 3 + ["end"]
    start, restart = lines[0], lines[7]
    assert start["run"] == "first" and "resumed" not in start
    assert restart == {"event": "start", "run": "second", "time": restart["time"], "resumed": True}
    stamp = datetime.datetime.fromisoformat(restart["time"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds()) < 60
    assert lines[6] == {"event": "end", "run": "first", "time": lines[6]["time"], "steps": 5,
                        "outcome": lines[6]["outcome"], "framework": "torch"}
    runs = read_runs(path)
    assert [run.records for run in runs] == [first, second] and runs[1].meta == restart
    assert read_jsonl(path).records == first + second  # every step record, none lost


def test_overwrite_true_truncates_and_a_bad_value_is_a_config_error(tmp_path):
    path = tmp_path / "grads.jsonl"
    _run([f"jsonl:{path}"], steps=5)
    again = _run([f"jsonl:{path}"], steps=2, overwrite=True)
    runs = read_runs(path)
    assert len(runs) == 1 and runs[0].records == again and "resumed" not in runs[0].meta
    with pytest.raises(gradclip.ConfigError, match="overwrite must be True"):
        Monitor(sinks=[f"jsonl:{path}"], overwrite="w")
    assert len(read_runs(path)[0].records) == 2  # a bad option touches nothing


def test_appending_after_a_killed_run_keeps_its_lines_and_ends_the_cut_one(tmp_path):
    path = tmp_path / "grads.jsonl"
    first = _run([f"jsonl:{path}"], steps=4)
    path.write_text(path.read_text() + '{"step": 4, "no')  # killed in the middle of a line
    second = _run([f"jsonl:{path}"], steps=2)
    with pytest.warns(UserWarning, match="truncated"):
        killed, resumed = read_runs(path)
    assert killed.truncated and killed.records == first
    assert not resumed.truncated and resumed.records == second and resumed.meta["resumed"] is True
    with pytest.warns(UserWarning, match="truncated"):
        assert read_jsonl(path).records == first + second


def test_a_bad_line_in_the_middle_of_a_run_is_still_an_error(tmp_path):
    path = tmp_path / "grads.jsonl"
    _run([f"jsonl:{path}"], steps=2)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], "not json", *lines[2:]]) + "\n")
    with pytest.raises(gradclip.LogError, match=r"grads.jsonl:3: not a JSON object"):
        read_runs(path)


def test_csv_appends_and_starts_each_run_with_a_header_line(tmp_path):
    path = tmp_path / "grads.csv"
    first = _run([f"csv:{path}"], steps=3)
    path.write_text(path.read_text() + "3,0,1.5")  # a row cut short by a kill
    second = _run([f"csv:{path}"], steps=2)
    lines = path.read_text().splitlines()
    header = ",".join(SCALAR_KEYS)
    assert [i for i, line in enumerate(lines) if line == header] == [0, 5]
    assert lines[4] == "3,0,1.5" and len(lines) == 1 + 3 + 1 + 1 + 2
    with open(path, newline="") as fh:
        rows = [row for row in csv.reader(fh)]
    assert [int(row[0]) for row in rows[1:4] + rows[6:]] == [r["step"] for r in first + second]
    _run([f"csv:{path}"], steps=1, overwrite=True)
    assert path.read_text().splitlines()[0] == header and len(path.read_text().splitlines()) == 2


def test_callback_receives_every_record_and_objects_with_write_work():
    class Collect:
        def __init__(self):
            self.records, self.closed = [], 0

        def write(self, record):
            self.records.append(record)

        def close(self):
            self.closed += 1

    seen, obj = [], Collect()
    got = _run([seen.append, obj], steps=3)
    assert seen == got == obj.records and len(got) == 3 and obj.closed == 1


# -- TensorBoard: read the event files back with a small TFRecord reader -------------------------


def _events(logdir: Path):
    from tensorboardX.proto import event_pb2

    out = []
    for f in sorted(logdir.glob("events.out.tfevents.*")):
        data = f.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            body = data[at + 12 : at + 12 + length]  # skip the length's CRC
            at += 12 + length + 4  # and the body's CRC
            event = event_pb2.Event()
            event.ParseFromString(body)
            out.append(event)
    return out


def test_tensorboard_round_trip(tmp_path):
    pytest.importorskip("tensorboardX")
    got = _run([f"tensorboard:{tmp_path / 'tb'}"], steps=4, per_layer=True, nan_at=1)
    scalars, histos = {}, {}
    for event in _events(tmp_path / "tb"):
        for v in event.summary.value:
            if v.HasField("histo"):
                histos[(v.tag, event.step)] = v.histo
            else:
                scalars[(v.tag, event.step)] = v.simple_value
    for rec in got:
        s = rec["step"]
        assert scalars[("grad/clipped", s)] == float(rec["clipped"])
        assert scalars[("grad/skipped", s)] == float(rec["skipped"])
        assert scalars[("loss", s)] == pytest.approx(rec["loss"], rel=1e-6)
        assert scalars[("lr", s)] == pytest.approx(0.05)
        if rec["norm"] is None:  # non-finite: left out, never NaN on the dashboard
            assert ("grad/norm_total", s) not in scalars
        else:
            assert scalars[("grad/norm_total", s)] == pytest.approx(rec["norm"], rel=1e-6)
            assert scalars[("grad/norm_total_clipped", s)] == pytest.approx(rec["clipped_norm"], rel=1e-6)
            assert scalars[("grad/threshold", s)] == pytest.approx(1.0)
        finite = [d["grad_norm"] for d in rec["layers"].values() if d["grad_norm"] is not None]
        assert scalars[("grad/norm_layers_nonfinite", s)] == len(rec["layers"]) - len(finite)
        assert histos[("grad/norm_layers", s)].num == len(finite)
        assert histos[("grad/norm_layers", s)].max == pytest.approx(max(finite), rel=1e-6)
        for name, d in rec["layers"].items():
            if d["grad_norm"] is not None:
                assert scalars[(f"grad/norm/{name}", s)] == pytest.approx(d["grad_norm"], rel=1e-6)
    assert scalars[("grad/norm_layers_nonfinite", 1)] == 1 and ("grad/norm/0.weight", 1) not in scalars


# -- bad specs fail at creation -------------------------------------------------------------------


def test_bad_sink_specs_fail_at_creation(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(gradclip.ConfigError, match=r"Unknown sink 'parquet:x'.*jsonl:PATH"):
        Monitor(sinks=["parquet:x"])
    with pytest.raises(gradclip.ConfigError, match="jsonl:.*cannot be opened"):
        Monitor(sinks=[f"jsonl:{blocker}/sub/run.jsonl"])
    with pytest.raises(gradclip.ConfigError, match="tensorboard:.*cannot be opened"):
        Monitor(sinks=[f"tensorboard:{blocker}/tb"])
    with pytest.raises(gradclip.ConfigError, match="names no file"):
        Monitor(sinks=["csv:"])
    with pytest.raises(gradclip.InputTypeError, match="spec string or a callable"):
        Monitor(sinks=[42])


def test_a_failing_sink_closes_those_already_opened(tmp_path):
    class Spy:
        closed = False

        def write(self, record):
            pass

        def close(self):
            Spy.closed = True

    with pytest.raises(gradclip.ConfigError):
        Monitor(sinks=[Spy(), "nope:x"])
    assert Spy.closed


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_missing_optional_packages_raise_config_error(name):
    try:
        __import__(name)
        pytest.skip(f"{name} is installed")
    except ImportError:
        pass
    with pytest.raises(gradclip.ConfigError, match=f"needs the '{name}' package"):
        Monitor(sinks=[name])


def test_mlflow_file_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(tmp_path.as_uri())
    got = _run(["mlflow"], steps=3)
    run = mlflow.search_runs(output_format="list")[0]
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "grad/norm_total")
    assert [m.value for m in history] == pytest.approx([r["norm"] for r in got])


# -- SIGKILL: every line written before the kill is recovered -------------------------------------

CHILD = """
import sys, time, torch
import gradclip.torch as gct
from gradclip.monitor import Monitor
model = torch.nn.Linear(8, 2)
clipper = gct.Clipper("norm:1.0")
monitor = Monitor(sinks=["jsonl:" + sys.argv[1]], per_layer=True)
x = torch.randn(4, 8)
for step in range(1000):
    model.zero_grad()
    model(x).sum().backward()
    monitor.step(model, clip_stats=clipper.step(model), loss=1.0)
    print(step, flush=True)
    time.sleep(0.002)
"""


def test_jsonl_survives_sigkill(tmp_path):
    path = tmp_path / "killed.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHILD), str(path)], stdout=subprocess.PIPE,
                             text=True, env=env)
    reported = -1
    try:
        for line in child.stdout:
            reported = int(line)
            if reported >= 150:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL, "the child finished before it was killed"
    log = read_jsonl(path, warn=False)
    steps = [r["step"] for r in log.records]
    # every step the child reported is there, complete; at most one more step was written after it
    assert steps == list(range(len(steps))) and reported + 1 <= len(steps) <= reported + 2
    assert len(steps) < 1000
    assert all(set(r["layers"]) == {"weight", "bias"} for r in log.records)
