"""``gradclip.monitor.Monitor``: records against the Clipper's ClipStats, per-layer modes, spikes, offenders."""

from __future__ import annotations

import math
import re

import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip.monitor import Monitor, SpikeDetector, read_jsonl, read_runs  # noqa: E402
from conftest import tiny_model  # noqa: E402

KEYS = {"step", "norm", "clipped_norm", "threshold", "coef", "clipped", "skipped", "nonfinite", "loss", "lr",
        "spike", "offenders", "layers"}
NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]


def _train(monitor, steps=6, *, clipper=None, nan_at=None, lr=0.1, scale=10.0, named=True):
    """A few SGD steps of the tiny MLP; returns (records, stats per step)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.randn(8, 4)
    records, all_stats = [], []
    for step in range(steps):
        opt.zero_grad()
        loss = (model(x) ** 2).sum() * scale
        loss.backward()
        if step == nan_at:
            model[2].weight.grad[1, 2] = float("nan")
            model[2].weight.grad[0, 0] = float("inf")
        stats = clipper.step(model.named_parameters() if named else model.parameters()) if clipper else None
        all_stats.append(stats)
        records.append(monitor.step(model, clip_stats=stats, loss=loss.detach(), lr=lr))
        if not (stats is not None and bool(stats.skipped)):
            opt.step()
    return records, all_stats, model


def test_records_match_clipstats_of_a_real_clipper_run():
    got = []
    with Monitor(sinks=[got.append], per_layer=False) as monitor:
        records, stats, _ = _train(monitor, clipper=gct.Clipper("norm:1.0"))
    assert records == got and len(got) == 6
    for i, (rec, st) in enumerate(zip(got, stats)):
        d = st.to_dict()
        assert set(rec) == KEYS
        assert rec["step"] == i and rec["lr"] == 0.1 and isinstance(rec["loss"], float)
        for key in ("norm", "clipped_norm", "coef", "threshold"):
            assert rec[key] == pytest.approx(d[key], rel=1e-7), key
        assert (rec["clipped"], rec["skipped"], rec["nonfinite"]) == (d["clipped"], d["skipped"], d["nonfinite"])
        assert rec["layers"] is None and rec["offenders"] == [] and rec["spike"] is False
    assert any(r["clipped"] for r in got) and got[0]["clipped_norm"] == pytest.approx(1.0, rel=1e-5)


def test_no_clipper_measures_the_global_norm_itself():
    model = tiny_model()
    expected = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    rec = Monitor().step(model)
    assert rec["norm"] == pytest.approx(expected, rel=1e-6) and rec["clipped_norm"] == rec["norm"]
    assert (rec["clipped"], rec["skipped"], rec["nonfinite"], rec["coef"], rec["threshold"]) == (False, False, False, None, None)
    assert rec["loss"] is None and rec["lr"] is None


def test_monitor_reuses_the_clippers_per_tensor_norms_without_a_second_pass(monkeypatch):
    from gradclip.torch import _measure

    model = tiny_model()
    stats = gct.Clipper("norm:1.0").step(model)
    calls = []
    real = _measure.norms_in_order
    monkeypatch.setattr(_measure, "norms_in_order", lambda ts, *a: calls.append([t.data_ptr() for t in ts]) or real(ts, *a))
    Monitor(per_layer=False).step(model, clip_stats=stats)
    assert calls == []  # no pass over gradients nor parameters
    rec = Monitor(per_layer=True).step(model, clip_stats=stats)
    grad_ptrs = {p.grad.data_ptr() for p in model.parameters()}
    assert len(calls) == 1 and not grad_ptrs & set(calls[0])  # one pass, over the parameters only
    pre = stats.tensor_norms.tolist()
    assert [rec["layers"][n]["grad_norm"] for n in NAMES] == pytest.approx(pre, rel=1e-6)


def test_per_layer_true_records_grad_param_norms_and_update_ratio():
    clipper = gct.Clipper("norm:1.0")
    with Monitor(per_layer=True) as monitor:
        torch.manual_seed(0)
        records, stats, model = _train(monitor, steps=1, clipper=clipper)
    rec, st = records[0], stats[0]
    assert list(rec["layers"]) == NAMES
    for name, g in zip(NAMES, st.tensor_norms.tolist()):
        layer = rec["layers"][name]
        assert layer["grad_norm"] == pytest.approx(g, rel=1e-6)
        assert layer["update_ratio"] == pytest.approx(0.1 * g * float(st.coef) / layer["param_norm"], rel=1e-6)
    # param norms were read before the optimizer step: compare with the weights one step back
    p0 = dict(model.named_parameters())["0.weight"]
    before = p0.detach() + 0.1 * p0.grad  # SGD: p_new = p_old - lr * g
    assert rec["layers"]["0.weight"]["param_norm"] == pytest.approx(float(before.norm()), rel=1e-5)


def test_per_layer_on_anomaly_records_layers_only_on_nonfinite_steps():
    with Monitor(per_layer="on_anomaly") as monitor:
        records, _, _ = _train(monitor, steps=5, clipper=gct.Clipper("norm:1.0", nonfinite="skip"), nan_at=3)
    assert [r["layers"] is not None for r in records] == [False, False, False, True, False]
    assert [r["nonfinite"] for r in records] == [False, False, False, True, False]
    assert records[3]["skipped"] and records[3]["norm"] is None
    assert math.isnan(float("nan")) and records[3]["layers"]["2.weight"]["grad_norm"] is None  # NaN -> null
    assert records[3]["layers"]["0.weight"]["grad_norm"] > 0
    with Monitor(per_layer=False) as monitor:
        records, _, _ = _train(monitor, steps=5, clipper=gct.Clipper("norm:1.0", nonfinite="skip"), nan_at=3)
    assert all(r["layers"] is None for r in records)


def test_per_layer_on_anomaly_records_layers_on_spike_steps():
    model = torch.nn.Linear(3, 1)
    monitor = Monitor(per_layer="on_anomaly", spike_window=10, spike_z=3.0)
    out = []
    for step in range(14):
        model.zero_grad()
        scale = 100.0 if step == 12 else 1.0 + 0.01 * (step % 3)
        (model(torch.ones(2, 3)).sum() * scale).backward()
        out.append(monitor.step(model))
    assert [r["spike"] for r in out] == [i == 12 for i in range(14)]
    assert [r["layers"] is not None for r in out] == [i == 12 for i in range(14)]
    assert monitor.events[0]["kind"] == "spike" and monitor.events[0]["step"] == 12


@pytest.mark.parametrize("with_clipper", [True, False])
def test_first_offender_is_named_with_shape_and_counts(with_clipper):
    clipper = gct.Clipper("norm:1.0", nonfinite="skip") if with_clipper else None
    model = tiny_model()
    model[0].bias.grad[1] = float("nan")
    model[2].weight.grad[0, :2] = float("inf")
    model[2].weight.grad[1, 0] = float("nan")
    stats = clipper.step(model.parameters()) if clipper else None  # unnamed: the monitor names them
    monitor = Monitor(per_layer=False)
    rec = monitor.step(model, clip_stats=stats)
    assert rec["nonfinite"] and rec["offenders"] == [
        {"name": "0.bias", "shape": [3], "nan": 1, "inf": 0},
        {"name": "2.weight", "shape": [2, 3], "nan": 1, "inf": 2},
    ]
    assert monitor.events == [{"step": 0, "kind": "nonfinite", "first": rec["offenders"][0]}]


def test_spike_detection_on_a_scripted_norm_sequence():
    norms = [1.0, 1.2, 0.9, 1.1, 1.0, 0.95, 1.05, 1.1, 0.9, 1.0, 1.0, 8.0, 1.0, 1.1, float("nan"), 1.0, 5.0]
    got = []
    monitor = Monitor(sinks=[got.append], spike_window=10, spike_z=4.0)
    for n in norms:  # framework-neutral path: ClipStats of Python numbers, no parameters
        monitor.step(clip_stats=gradclip.ClipStats(norm=n, clipped_norm=n, coef=None, clipped=False,
                                                   nonfinite=not math.isfinite(n), skipped=False, threshold=None))
    spikes = [r["step"] for r in got if r["spike"]]
    assert spikes == [11]  # step 16 (5.0) sits within 4 std of a window that holds the 8.0
    assert [e["kind"] for e in monitor.events] == ["spike", "nonfinite"]
    assert monitor.events[0]["z"] > 4.0


def test_spike_detector_window_and_warmup():
    d = SpikeDetector(window=3, z=2.0, min_history=3)
    flags = [d.update(x)[0] for x in [1.0, 1.0, 10.0, 1.0, 1.0, 1.0, 1.0, 10.0]]
    assert flags == [False, False, False, False, False, False, False, True]  # warm-up, then the window forgets
    with pytest.raises(gradclip.ConfigError, match="spike_window"):
        SpikeDetector(window=1)
    with pytest.raises(gradclip.ConfigError, match="spike_z"):
        Monitor(spike_z=0)


def test_include_exclude_filters_select_the_layers():
    model = tiny_model()
    rec = Monitor(per_layer=True, include=["0.*"]).step(model)
    assert list(rec["layers"]) == ["0.weight", "0.bias"]
    rec = Monitor(per_layer=True, exclude=["*.bias"]).step(model)
    assert list(rec["layers"]) == ["0.weight", "2.weight"]
    rec = Monitor(per_layer=True, include=["*weight"], exclude=["2.*"]).step(model)
    assert list(rec["layers"]) == ["0.weight"]
    # the global norm still covers every parameter
    full = Monitor(per_layer=False).step(model)["norm"]
    assert Monitor(per_layer=True, include=["0.*"]).step(model)["norm"] == full


def test_flush_every_buffers_and_close_writes_the_rest():
    got = []
    model = tiny_model()
    monitor = Monitor(sinks=[got.append], flush_every=3, per_layer="on_anomaly")
    assert monitor.step(model) is None and monitor.step(model) is None and got == []
    monitor.step(model)
    assert [r["step"] for r in got] == [0, 1, 2] and all(r["layers"] is None for r in got)
    monitor.step(model)
    monitor.close()
    assert [r["step"] for r in got] == [0, 1, 2, 3]
    with pytest.raises(gradclip.ConfigError, match="closed"):
        monitor.step(model)


def test_buffered_on_anomaly_keeps_layers_of_nonfinite_steps_only():
    got = []
    model = tiny_model()
    monitor = Monitor(sinks=[got.append], flush_every=4)
    for step in range(4):
        if step == 2:
            model[0].weight.grad[0, 0] = float("nan")
        monitor.step(model)
    assert [r["layers"] is not None for r in got] == [False, False, True, True]
    assert got[2]["offenders"][0]["name"] == "0.weight" and got[2]["offenders"][0]["shape"] == [3, 4]


def test_attach_records_every_clipper_step():
    got = []
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    clipper = gct.Clipper("norm:1.0")
    monitor = Monitor(sinks=[got.append], per_layer=True)
    assert monitor.attach(clipper, optimizer=opt) is clipper
    stats = clipper.step(model.named_parameters())
    assert len(got) == 1 and got[0]["norm"] == pytest.approx(float(stats.norm)) and got[0]["lr"] == 0.5
    assert list(got[0]["layers"]) == NAMES
    monitor.detach(clipper)
    clipper.step(model)
    assert len(got) == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"per_layer": "always"}, "per_layer"),
    ({"flush_every": 0}, "flush_every"),
    ({"include": [3]}, "include"),
    ({"overwrite": "yes"}, "overwrite must be True .* Received: 'yes'"),
    ({"run": ""}, "run must be a non-empty string"),
])
def test_bad_options_raise_config_error(kwargs, match):
    with pytest.raises(gradclip.ConfigError, match=match):
        Monitor(**kwargs)


def test_step_needs_parameters_or_stats():
    with pytest.raises(gradclip.ConfigError, match="neither"):
        Monitor().step()
    with pytest.raises(gradclip.InputTypeError, match="ClipStats"):
        Monitor().step(tiny_model(), clip_stats={"norm": 1.0})


# -- run labels and several runs in one log -------------------------------------------------------


def _log(path, run=None, steps=3, **kwargs):
    """A Monitor writing ``steps`` records of the tiny MLP to a JSONL file."""
    with Monitor(sinks=[f"jsonl:{path}"], run=run, **kwargs) as monitor:
        _train(monitor, steps=steps, clipper=gct.Clipper("norm:1.0"))
    return monitor


def test_default_label_is_the_log_folder_and_stem(tmp_path):
    assert _log(tmp_path / "a" / "grads.jsonl").label == "a/grads"
    assert Monitor(sinks=[f"csv:{tmp_path / 'b' / 'grads.csv'}"]).label == "b/grads"
    assert Monitor(sinks=[lambda r: None], run="baseline").label == "baseline"
    assert read_runs(tmp_path / "a" / "grads.jsonl")[0].meta["run"] == "a/grads"


def test_a_summary_of_two_grads_jsonl_in_different_folders_has_two_labels(tmp_path):
    from gradclip.report import summarize

    a, b = tmp_path / "runs" / "a" / "grads.jsonl", tmp_path / "runs" / "b" / "grads.jsonl"
    _log(a)
    _log(b)
    assert [row["label"] for row in summarize([a, b])] == ["a/grads", "b/grads"]
    # logs of older versions (no start record, no run key) fall back to the same parent/stem label
    for path in (a, b):
        path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if '"event"' not in line))
    assert [row["label"] for row in summarize([a, b])] == ["a/grads", "b/grads"]


def test_a_resumed_log_reads_back_as_two_runs_and_reports_both(tmp_path):
    from gradclip.report import summarize

    path = tmp_path / "a" / "grads.jsonl"
    _log(path, steps=4)
    _log(path, steps=2)
    first, second = read_runs(path)
    assert (first.label, second.label) == ("a/grads", "a/grads #2")
    assert [len(first.records), len(second.records)] == [4, 2]
    assert "resumed" not in first.meta and second.meta["resumed"] is True
    assert (first.end["steps"], second.end["steps"]) == (4, 2) and first.end["event"] == "end"
    assert [r["step"] for r in second.records] == [0, 1]
    whole = read_jsonl(path)  # one RunLog for the file: every step record, in file order
    assert len(whole.records) == 6 and whole.meta == first.meta and whole.end == second.end
    assert [(row["label"], row["steps"]) for row in summarize(path)] == [("a/grads", 4), ("a/grads #2", 2)]


def test_read_runs_keeps_older_steps_before_the_first_start_record(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text('{"step": 0, "norm": 1.0}\n{"step": 1, "norm": 2.0}\n')
    _log(path, run="new", steps=2)
    old, new = read_runs(path)
    assert old.meta == {} and len(old.records) == 2 and old.end is None
    assert new.label == "new" and new.meta["resumed"] is True and len(new.records) == 2
    assert all(r["run"] == "new" for r in new.records)


def test_runs_with_different_labels_keep_them(tmp_path):
    path = tmp_path / "shared.jsonl"
    _log(path, run="lr=0.1")
    _log(path, run="lr=0.01")
    assert [run.label for run in read_runs(path)] == ["lr=0.1", "lr=0.01"]


def test_end_record_says_how_the_run_went_by_the_one_definition(tmp_path):
    import json

    import torch

    log = tmp_path / "run" / "grads.jsonl"
    model = torch.nn.Linear(3, 1)
    with Monitor([f"jsonl:{log}"]) as monitor:
        for loss in (100.0, 80.0, 5e4):  # rose to 500x the first loss: exploded, though never NaN
            model.zero_grad()
            model(torch.ones(2, 3)).sum().backward()
            monitor.step(model, loss=loss)
        assert monitor.outcome == "exploded"
    end = json.loads(log.read_text().splitlines()[-1])
    assert end["event"] == "end" and end["outcome"] == "exploded" and end["framework"] == "torch"
    with Monitor([lambda r: None]) as m2:
        m2.step(model, loss=float("nan"))
        assert m2.outcome == "diverged"


# -- a record is never lost: step values checked first, threads sharing a monitor ------------------


def _stats(norm=1.0):
    return gradclip.ClipStats(norm=norm, clipped_norm=norm, coef=1.0, clipped=False, nonfinite=False,
                              skipped=False, threshold=2.0)


def _value(kind, x):
    if kind == "python":
        return x
    if kind in ("numpy scalar", "numpy 0-d"):
        np = pytest.importorskip("numpy")
        return np.asarray(x)[()] if kind == "numpy scalar" else np.asarray(x)
    if kind == "torch 0-d":
        return torch.tensor(x, requires_grad=isinstance(x, float))
    tf = pytest.importorskip("tensorflow")
    return tf.constant(x)


@pytest.mark.parametrize("kind", ["python", "numpy scalar", "numpy 0-d", "torch 0-d", "tensorflow 0-d"])
@pytest.mark.parametrize("field, x", [("epoch", 3), ("loss", 1.5), ("lr", 0.25)])
def test_step_values_of_any_framework_become_python_numbers_in_every_sink(tmp_path, kind, field, x):
    import json

    got, path = [], tmp_path / "a.jsonl"
    with Monitor(sinks=[got.append, f"jsonl:{path}"], flush_every=2) as monitor:  # also through the buffer
        for _ in range(2):
            monitor.step(clip_stats=_stats(), **{field: _value(kind, x)})
    written = [json.loads(line) for line in path.read_text().splitlines()[1:-1]]
    assert written == got and len(got) == 2
    assert all(r[field] == x and type(r[field]) is type(x) for r in got)


@pytest.mark.parametrize("field, bad, shown", [
    ("loss", "1.5", "str '1.5'"), ("lr", [0.1, 0.2], "list"), ("epoch", "3", "str '3'"), ("loss", True, "bool True"),
    ("loss", torch.ones(2), "Tensor of shape (2,)"), ("lr", torch.tensor(1 + 1j), "Tensor of dtype torch.complex64"),
    ("epoch", torch.tensor(True), "Tensor of dtype torch.bool"), ("loss", {"total": 1.0}, "dict"),
])
def test_a_value_that_is_not_one_number_is_refused_before_anything_is_recorded(tmp_path, field, bad, shown):
    got, path = [], tmp_path / "a.jsonl"
    monitor = Monitor(sinks=[got.append, f"jsonl:{path}"], flush_every=3)
    monitor.step(clip_stats=_stats(), loss=1.0)
    monitor.step(clip_stats=_stats(), loss=2.0)
    with pytest.raises(gradclip.InputTypeError, match=rf"Monitor.step\({field}=\.\.\.\).*Received: a?\s?{re.escape(shown)}"):
        monitor.step(clip_stats=_stats(), **{field: bad})
    assert monitor.steps == 2 and got == []  # nothing recorded for it; the buffered steps are kept
    monitor.step(clip_stats=_stats(), loss=3.0)
    monitor.close()
    assert [(r["step"], r["loss"]) for r in got] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert len(read_jsonl(path).records) == 3


def test_threads_sharing_a_monitor_number_each_step_once_and_write_every_record(tmp_path):
    import sys
    import threading

    got, path = [], tmp_path / "a.jsonl"
    monitor = Monitor(sinks=[got.append, f"jsonl:{path}"], per_layer=False)
    returned: list[list] = [[] for _ in range(4)]

    def work(i):
        for k in range(500):
            returned[i].append(monitor.step(clip_stats=_stats(float(i * 1000 + k + 1)), loss=float(i), epoch=k))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show at once
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    monitor.close()
    assert all(r is not None and KEYS <= set(r) for rs in returned for r in rs)  # each call got its own record
    assert sorted(r["step"] for rs in returned for r in rs) == list(range(2000))
    assert [r["step"] for r in got] == list(range(2000))  # numbered once each, written in order
    assert [r["step"] for r in read_jsonl(path).records] == list(range(2000))
    for rs in returned:  # each record holds its own thread's values
        assert all(r["loss"] == float(int(r["norm"] - 1) // 1000) and r["epoch"] == (r["norm"] - 1) % 1000 for r in rs)
