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
    uri = (tmp_path / "mlruns").as_uri()  # a new directory: MLflow creates its default experiment there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        got = _run(["mlflow"], steps=3)
        run = mlflow.search_runs(output_format="list")[0]
        history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "grad/norm_total")
    finally:
        mlflow.set_tracking_uri(None)
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


# -- a record is never lost: failing sinks, full disks, several writers ----------------------------

import warnings

from gradclip.monitor._sinks import SinkError, SinkWarning


def _stats(norm=1.0):
    return gradclip.ClipStats(norm=norm, clipped_norm=norm, coef=1.0, clipped=False, nonfinite=False,
                              skipped=False, threshold=2.0)


def test_a_failing_sink_costs_the_others_nothing_and_errs_after_max_sink_failures():
    before, after, calls = [], [], []

    def flaky(record):
        calls.append(record["step"])
        raise RuntimeError("tracking server unreachable")

    monitor = Monitor(sinks=[before.append, flaky, after.append], max_sink_failures=3)
    with pytest.warns(SinkWarning, match=r"'flaky' failed on step 0 \(1 of 3.*RuntimeError: tracking server"):
        monitor.step(clip_stats=_stats(), loss=1.0)
    with pytest.warns(SinkWarning, match="'flaky' failed on step 1"):
        monitor.step(clip_stats=_stats(), loss=1.0)
    with pytest.raises(SinkError, match=r"'flaky' failed 3 times in a row .*max_sink_failures=None") as info:
        monitor.step(clip_stats=_stats(), loss=1.0)
    assert isinstance(info.value, gradclip.GradclipError) and info.value.sink == "flaky"
    assert isinstance(info.value.__cause__, RuntimeError)
    # both list sinks got every record, the one of the failing step too, and the monitor goes on
    with pytest.warns(SinkWarning, match=r"step 3 \(1 of 3"):
        monitor.step(clip_stats=_stats(), loss=1.0)
    monitor.close()
    assert [r["step"] for r in before] == [r["step"] for r in after] == [0, 1, 2, 3]
    assert before == after and calls == [0, 1, 2, 3] and monitor.last["step"] == 3


def test_a_sink_that_recovers_resets_its_count_and_none_only_warns():
    n = {"calls": 0}

    def sometimes(record):
        n["calls"] += 1
        if n["calls"] % 2:
            raise ValueError("odd call")

    got = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Monitor(sinks=[sometimes, got.append], max_sink_failures=2) as monitor:
            for _ in range(6):  # fails every other step: never twice in a row
                monitor.step(clip_stats=_stats())
        with Monitor(sinks=[lambda r: 1 / 0, got.append], max_sink_failures=None) as monitor:
            for _ in range(5):
                monitor.step(clip_stats=_stats())
    assert len(got) == 11 and all(w.category is SinkWarning for w in caught)
    assert [str(w.message).split(";")[0] for w in caught[-2:]] == ["Sink '<lambda>' failed on step 3",
                                                                   "Sink '<lambda>' failed on step 4"]
    assert len(caught) == 3 + 5 and caught[-1].filename == __file__  # the warning points at the caller
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(gradclip.ConfigError, match="max_sink_failures must be an int >= 1"):
            Monitor(max_sink_failures=bad)


def test_disk_full_is_a_sink_error_naming_the_path(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "full.jsonl"
    got = []
    monitor = Monitor(sinks=[f"jsonl:{path}", got.append], max_sink_failures=1)
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(SinkError, match=r"cannot write to .*full\.jsonl: No space left on device \(ENOSPC\)") as info:
        monitor.step(clip_stats=_stats())
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC and info.value.path == str(path)
    assert "disk is full" in str(info.value) and got[0]["step"] == 0  # the other sink got the record
    # a short write (the disk filled up mid-line) is an error too, and the next line starts fresh
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(SinkError, match="wrote only 10 of"):
        monitor.step(clip_stats=_stats())
    monkeypatch.setattr(os, "write", real_write)
    monitor.step(clip_stats=_stats())
    monitor.close()
    lines = path.read_text().splitlines()  # the start event, the cut fragment, step 2, the end event
    assert lines[1] == '{"step": 1' and json.loads(lines[2])["step"] == 2 and json.loads(lines[3])["event"] == "end"
    assert [r["step"] for r in got] == [0, 1, 2]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_dev_full_raises_enospc_as_a_sink_error():
    import errno

    with pytest.warns(SinkWarning, match="failed on the start event"):
        monitor = Monitor(sinks=["jsonl:/dev/full"], max_sink_failures=2)
    with pytest.raises(SinkError, match=r"'jsonl:/dev/full' cannot write to /dev/full.*ENOSPC") as info:
        monitor.step(clip_stats=_stats())
    assert info.value.errno == errno.ENOSPC and info.value.path == "/dev/full"
    with pytest.warns(SinkWarning):
        monitor.close()


def test_files_are_opened_with_o_append_and_each_record_is_one_os_write(tmp_path, monkeypatch):
    import fcntl

    for overwrite in (False, True):
        monitor = Monitor(sinks=[f"jsonl:{tmp_path / 'a.jsonl'}", f"csv:{tmp_path / 'a.csv'}"], overwrite=overwrite,
                          per_layer=True)
        for sink in monitor.sinks:
            assert fcntl.fcntl(sink._fd, fcntl.F_GETFL) & os.O_APPEND, (sink.spec, overwrite)
        writes, real_write = [], os.write
        monkeypatch.setattr(os, "write", lambda fd, data, w=writes, real=real_write: w.append(data) or real(fd, data))
        model = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(40)])  # 80 layers: lines > PIPE_BUF
        model(torch.ones(1, 2)).sum().backward()
        monitor.step(model, clip_stats=gct.Clipper("norm:1.0").step(model))
        monkeypatch.setattr(os, "write", real_write)
        monitor.close()
        assert len(writes) == 2 and all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes)
        assert len(writes[0]) > 4096  # one write of a line longer than PIPE_BUF


WRITER = """
import sys
import gradclip
from gradclip.monitor import Monitor
stats = gradclip.ClipStats(norm=1.0, clipped_norm=1.0, coef=1.0, clipped=False, nonfinite=False, skipped=False,
                           threshold=2.0)
run = sys.argv[2] * 3000  # lines of about 3 KB (and of 9 KB): longer than PIPE_BUF for one of the runs
with Monitor(sinks=["jsonl:" + sys.argv[1]], run=run, per_layer=False) as monitor:
    for step in range(int(sys.argv[3])):
        monitor.step(clip_stats=stats, loss=float(step), lr=0.1)
"""


def test_two_processes_appending_to_one_jsonl_lose_and_mix_no_line(tmp_path):
    path = tmp_path / "shared.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    children = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), label, "2000"], env=env)
                for label in ("a", "bbb")]
    assert [c.wait(timeout=300) for c in children] == [0, 0]
    text = path.read_bytes()
    # A writer that opens while the other's line is in flight may see no newline at the end and start
    # on a fresh line: at most a blank line, which the reader skips. No record is lost or mixed.
    lines = [line for line in text.split(b"\n") if line]
    assert text.endswith(b"\n") and len(lines) == 2 * (2000 + 2)  # steps, start and end events
    records = [json.loads(line) for line in lines]  # every line parses
    for label in ("a", "bbb"):
        mine = [r for r in records if r["run"] == label * 3000]
        assert [r["event"] for r in mine if "event" in r] == ["start", "end"]
        steps = [r for r in mine if "event" not in r]
        assert [r["step"] for r in steps] == list(range(2000)) and [r["loss"] for r in steps] == list(range(2000))
