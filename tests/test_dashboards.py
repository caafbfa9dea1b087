"""Dashboard sinks, really run: TensorBoard event files, MLflow file store, W&B offline, Neptune offline.

Each test trains a tiny MLP with a Clipper and a Monitor, then reads what the tracker stored back
from disk (TFRecord events with their checksums, ``MlflowClient.get_metric_history``, the W&B
``.wandb`` transaction log, Neptune's offline operation log) and compares it with the records.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradclip
import gradclip.torch as gct
from gradclip.monitor import Monitor, scalars


def _train(sinks, steps=6, nan_at=2, per_layer=True, raise_at=None):
    """Train the tiny MLP; returns the records (a non-finite step at ``nan_at`` leaves values out)."""
    got = []
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    clipper = gct.Clipper("norm:1.0", nonfinite="skip")
    x = torch.randn(8, 4)
    with Monitor(sinks=[*sinks, got.append], per_layer=per_layer) as monitor:
        for step in range(steps):
            if step == raise_at:
                raise KeyboardInterrupt("stop")
            opt.zero_grad()
            loss = (model(x) ** 2).sum() * 10
            loss.backward()
            if step == nan_at:
                model[0].weight.grad[0, 0] = float("nan")
            stats = clipper.step(model.named_parameters())
            monitor.step(model, clip_stats=stats, loss=loss.detach(), lr=0.05)
            if not bool(stats.skipped):
                opt.step()
    return got


def _expected(records):
    """{(name, step): value} of the records' dashboard scalars."""
    return {(name, r["step"]): v for r in records for name, v in scalars(r).items()}


# -- TensorBoard -----------------------------------------------------------------------------------


def _tfrecords(path: Path):
    """The events of one event file, every length and data checksum verified (tensorboardX's CRC32C)."""
    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto import event_pb2

    def masked(data):
        c = crc32c(data)
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    data, at, out = path.read_bytes(), 0, []
    while at < len(data):
        head = data[at : at + 8]
        (length,) = struct.unpack("<Q", head)
        assert struct.unpack("<I", data[at + 8 : at + 12])[0] == masked(head)
        body = data[at + 12 : at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length : at + 16 + length])[0] == masked(body)
        at += 16 + length
        event = event_pb2.Event()
        event.ParseFromString(body)
        out.append(event)
    return out


def _tb_scalars(logdir: Path):
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = _tfrecords(files[0])
    assert events[0].file_version == "brain.Event:2"
    return {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value if not v.HasField("histo")}


def test_tensorboard_batches_and_close_writes_every_record(tmp_path):
    pytest.importorskip("tensorboardX")
    from gradclip.monitor._sink_tb import TensorBoardSink

    sink = TensorBoardSink("tensorboard:x", str(tmp_path / "tb"), every=4)
    got = _train([sink], steps=6, nan_at=2)
    events = _tb_scalars(tmp_path / "tb")
    expected = _expected(got)
    assert {k for k in events if k[0] != "grad/norm_layers_nonfinite"} == set(expected)
    for key, value in expected.items():  # stored as float32: exactly the float32 of the record's value
        assert events[key] == np.float32(value), key
    assert ("grad/norm_total", 2) not in events and events[("grad/norm_layers_nonfinite", 2)] == 1.0


def test_tensorboard_writes_a_batch_every_n_records_and_the_rest_at_flush(tmp_path):
    pytest.importorskip("tensorboardX")
    from gradclip.monitor._sink_tb import TensorBoardSink

    sink = TensorBoardSink("tensorboard:x", str(tmp_path), every=3, flush_secs=1e9)
    for step in range(4):
        sink.write({"step": step, "norm": 1.0 + step})
    steps = sorted(s for (tag, s) in _tb_scalars(tmp_path) if tag == "grad/norm_total")
    assert steps == [0, 1, 2]  # the 4th waits in the buffer
    sink.flush()
    assert sorted(s for (tag, s) in _tb_scalars(tmp_path) if tag == "grad/norm_total") == [0, 1, 2, 3]
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(gradclip.monitor.SinkError, match="closed"):
        sink.write({"step": 9, "norm": 1.0})


def test_tensorboard_keeps_every_record_on_an_exception_exit(tmp_path):
    pytest.importorskip("tensorboardX")
    seen = []
    with pytest.raises(KeyboardInterrupt):
        _train([f"tensorboard:{tmp_path}", seen.append], steps=9, nan_at=None, raise_at=5)
    events = _tb_scalars(tmp_path)
    assert sorted(s for (tag, s) in events if tag == "grad/norm_total") == [0, 1, 2, 3, 4] == [r["step"] for r in seen]


def test_tensorboard_records_of_a_monitor_never_closed_are_written_at_interpreter_exit(tmp_path):
    pytest.importorskip("tensorboardX")
    import subprocess
    import textwrap

    script = textwrap.dedent(f"""
        from gradclip.monitor._sinks import open_sink
        sink = open_sink("tensorboard:{tmp_path}")
        for step in range(3):
            sink.write({{"step": step, "norm": 1.5 + step}})
        KEEP = sink  # never closed
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert {k: v for k, v in _tb_scalars(tmp_path).items() if k[0] == "grad/norm_total"} == {
        ("grad/norm_total", 0): 1.5, ("grad/norm_total", 1): 2.5, ("grad/norm_total", 2): 3.5}


def test_tensorboard_event_accumulator_reads_the_records(tmp_path):
    pytest.importorskip("tensorboardX")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    got = _train([f"tensorboard:{tmp_path}"], steps=5, nan_at=1)
    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    expected = _expected(got)
    read = {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    assert {k: v for k, v in read.items() if k[0] != "grad/norm_layers_nonfinite"} == pytest.approx(
        {k: float(np.float32(v)) for k, v in expected.items()})
    assert [e.step for e in acc.Histograms("grad/norm_layers")] == [r["step"] for r in got]


def test_crc32c_many_matches_the_reference_on_ragged_chunks():
    from tensorboardX.crc32c import crc32c

    from gradclip.monitor._sink_tb import crc32c_many

    rng = np.random.default_rng(0)
    chunks = [rng.integers(0, 256, size=n, dtype=np.uint8).tobytes() for n in [0, 1, 7, 8, 300, 3, 64, 1000]]
    assert crc32c_many(chunks) == [crc32c(c) for c in chunks]


# -- MLflow ----------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())  # a new directory: MLflow seeds it
    mlflow.set_tracking_uri((tmp_path / "mlruns").as_uri())  # in case a test before set it globally
    yield mlflow
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


def _mlflow_history(mlflow, run_id):
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    return run, {(name, m.step): m.value for name in run.data.metrics for m in client.get_metric_history(run_id, name)}


def test_mlflow_starts_a_run_logs_every_step_and_ends_it(mlflow_store):
    mlflow = mlflow_store
    got = _train(["mlflow"], steps=6, nan_at=2)
    assert mlflow.active_run() is None  # the run the sink started is ended
    (run,) = mlflow.search_runs(output_format="list", search_all_experiments=True)
    run, history = _mlflow_history(mlflow, run.info.run_id)
    assert run.info.status == "FINISHED"
    assert history == _expected(got)  # same names ('/' and '.' kept), steps and values, exactly
    assert ("grad/norm/0.weight", 0) in history and ("grad/norm_total", 2) not in history


def test_mlflow_logs_into_the_active_run_and_leaves_it_running(mlflow_store):
    mlflow = mlflow_store
    with mlflow.start_run() as run:
        got = _train(["mlflow"], steps=3, nan_at=None, per_layer=False)
        assert mlflow.active_run().info.run_id == run.info.run_id
        assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "RUNNING"
    assert _mlflow_history(mlflow, run.info.run_id)[1] == _expected(got)


def test_mlflow_names_keep_only_allowed_characters(mlflow_store):
    from gradclip.monitor._sink_remote import MlflowSink

    sink = MlflowSink("mlflow")
    sink.write({"step": 0, "layers": {"dense/kernel:0": {"grad_norm": 2.0}, "a[1]..b": {"grad_norm": 3.0}}})
    sink.close()
    history = _mlflow_history(mlflow_store, sink.run_id)[1]
    assert history == {("grad/norm/dense/kernel_0", 0): 2.0, ("grad/norm/a_1_..b", 0): 3.0}


# -- Weights & Biases (offline) --------------------------------------------------------------------


def _wandb_log(path: Path):
    """The records of a ``.wandb`` file: the LevelDB log format W&B writes (7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    at, block, part, out = 7, 32768, b"", []
    while at + 7 <= len(data):
        left = block - at % block
        _, length, kind = struct.unpack("<IHB", data[at : at + 7])
        if left < 7 or (length == 0 and kind == 0):  # block trailer / padding
            at += left
            continue
        if at + 7 + length > len(data):  # still being written
            break
        part += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def _wandb_history(tmp_path):
    """History rows of the one offline run under ``tmp_path``.

    W&B 0.31's ``run.finish()`` can return before its service process has created or written the
    file, so this waits (up to 60 s) for the run's ``exit`` record.
    """
    import time

    deadline = time.monotonic() + 60
    while True:
        paths = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
        records = _wandb_log(paths[0]) if len(paths) == 1 else []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(paths) == 1, paths
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
    return rows


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_CONFIG_DIR": str(tmp_path / "config"), "WANDB_CACHE_DIR": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(key, value)
    wandb.teardown()  # W&B reads its environment once per setup: start afresh with this test's
    yield wandb
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()


def test_wandb_offline_run_holds_every_record(wandb_offline, tmp_path):
    wandb = wandb_offline
    got = _train(["wandb"], steps=5, nan_at=2)
    assert wandb.run is None  # the run the sink started is finished
    rows = _wandb_history(tmp_path)
    assert [row["grad/step"] for row in rows] == [r["step"] for r in got]
    read = {(k, row["grad/step"]): v for row in rows for k, v in row.items() if not k.startswith("_") and k != "grad/step"}
    assert read == _expected(got)


def test_wandb_logs_into_the_current_run_and_leaves_it_open(wandb_offline, tmp_path):
    wandb = wandb_offline
    run = wandb.init()
    run.log({"mine": 1.0})
    got = _train(["wandb"], steps=3, nan_at=None, per_layer=False)
    assert wandb.run is run
    run.log({"mine": 2.0})
    run.finish()
    rows = _wandb_history(tmp_path)
    assert [row.get("mine") for row in rows] == [1.0, None, None, None, 2.0]  # nothing dropped, nothing merged
    assert [row["grad/norm_total"] for row in rows[1:4]] == [r["norm"] for r in got]


# -- Neptune (offline) -----------------------------------------------------------------------------


def _neptune_series(root: Path):
    """{(field, step): value} of the float series in Neptune's offline operation logs under ``root``."""
    out = {}
    for log in root.glob(".neptune/offline/*/data-*.log"):
        for line in log.read_text().splitlines():
            op = json.loads(line)["obj"]
            if op["type"] == "LogFloats" and op["path"][0] != "monitoring":  # not Neptune's hardware metrics
                for v in op["values"]:
                    out[("/".join(op["path"]), v["step"])] = v["value"]
    return out


NO_GPU_WARNING = pytest.mark.filterwarnings("ignore:Info \\(NVML\\)")  # Neptune's hardware monitor, on a CPU-only machine


@pytest.fixture
def neptune_offline(tmp_path, monkeypatch):
    neptune = pytest.importorskip("neptune")
    monkeypatch.setenv("NEPTUNE_MODE", "offline")
    monkeypatch.chdir(tmp_path)  # the offline store is ./.neptune
    return neptune


@NO_GPU_WARNING
def test_neptune_offline_run_holds_every_record(neptune_offline, tmp_path):
    got = _train(["neptune"], steps=5, nan_at=2)
    series = _neptune_series(tmp_path)
    assert series == _expected(got)
    assert ("grad/norm/0.weight", 0.0) in series and ("grad/norm_total", 2.0) not in series


@NO_GPU_WARNING
def test_neptune_run_passed_as_a_sink_gets_a_namespace_and_stays_open(neptune_offline, tmp_path):
    run = neptune_offline.init_run(mode="offline")
    got = _train([run["gradclip"]], steps=3, nan_at=None, per_layer=False)
    run["after"].append(1.0, step=0)  # still open
    run.stop()
    series = _neptune_series(tmp_path)
    assert {(k[len("gradclip/"):], s): v for (k, s), v in series.items() if k.startswith("gradclip/")} == _expected(got)
    assert series[("after", 0.0)] == 1.0


@NO_GPU_WARNING
def test_neptune_without_credentials_is_a_config_error(monkeypatch, tmp_path):
    pytest.importorskip("neptune")
    for key in ("NEPTUNE_API_TOKEN", "NEPTUNE_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NEPTUNE_MODE", "async")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(gradclip.ConfigError, match=r"Sink 'neptune' could not start a run: .*NEPTUNE_MODE=offline"):
        Monitor(sinks=["neptune"])


# -- missing packages ------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "module", "extra"), [
    ("mlflow", "mlflow", "mlflow"), ("wandb", "wandb", "wandb"), ("neptune", "neptune", "neptune"),
    ("tensorboard:{tmp}", "tensorboardX", "monitor"),
])
def test_a_missing_package_is_a_one_line_config_error_naming_the_extra(spec, module, extra, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(gradclip.ConfigError) as info:
        Monitor(sinks=[spec.format(tmp=tmp_path)])
    message = str(info.value)
    assert "\n" not in message and f"needs the '{module}' package" in message
    assert f"pip install 'gradclip[{extra}]'" in message


def test_scalars_never_hold_nan_for_the_trackers():
    assert all(math.isfinite(v) for v in scalars({"step": 0, "norm": float("nan"), "loss": float("inf"), "lr": 0.1}).values())
