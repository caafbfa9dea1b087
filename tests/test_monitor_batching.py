"""The Monitor's buffered path: values read in batches, records complete and in order, nothing lost.

``flush_every > 1`` keeps each step's values as tensors and reads them in one transfer per flush;
these tests check that the records are the ones the eager path (``flush_every=1``) writes, that a
non-finite step is written at once where that is free (the CPU), that ``flush``, ``close``, an
exception in a ``with`` block and interpreter exit deliver what is buffered, and that the batched
read (:mod:`gradclip.monitor._fetch`) gives the values a float64 NumPy reference gives.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip.monitor import Monitor, SpikeDetector, read_runs  # noqa: E402
from gradclip.monitor import _fetch  # noqa: E402


def _steps(n=12, nan_at=(7,), spike_at=(10,)):
    """Deterministic (model, ClipStats, loss) per step of a small MLP (gradients set by hand)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    clipper = gct.Clipper("norm:1.0", nonfinite="skip")
    out = []
    for i in range(n):
        model.zero_grad()
        scale = 50.0 if i in spike_at else 1.0 + 0.01 * (i % 3)
        loss = (model(torch.ones(2, 4)) ** 2).sum() * scale
        loss.backward()
        if i in nan_at:
            model[2].weight.grad[1, 0] = float("nan")
        out.append((clipper.step(model), loss.detach()))
    return model, out


def _feed(monitor, model, steps, **kw):
    returned = []
    for stats, loss in steps:
        returned.append(monitor.step(model, clip_stats=stats, loss=loss, lr=0.1, **kw))
    return returned


@pytest.mark.parametrize("per_layer", [False, "on_anomaly", True])
def test_buffered_records_equal_the_eager_ones(per_layer):
    """Same values, keys, order, spike flags, offenders, events and outcome as flush_every=1."""
    model, steps = _steps()
    eager, batched = [], []
    # the same gradients for both monitors: each step's stats is recorded by both before the next
    with Monitor([eager.append], per_layer=per_layer, spike_window=5, spike_z=3.0) as a, \
            Monitor([batched.append], per_layer=per_layer, spike_window=5, spike_z=3.0, flush_every=4) as b:
        for stats, loss in steps:
            a.step(model, clip_stats=stats, loss=loss, lr=0.1)
            b.step(model, clip_stats=stats, loss=loss, lr=0.1)
    assert [r["step"] for r in batched] == list(range(12))
    assert [list(r) for r in batched] == [list(r) for r in eager]  # key order too (the JSONL lines)
    assert json.dumps(batched) == json.dumps(eager)
    assert [r["spike"] for r in eager] == [i == 10 for i in range(12)]
    assert eager[7]["nonfinite"] and eager[7]["offenders"][0]["name"] == "2.weight"
    assert a.events == b.events and a.outcome == b.outcome == "diverged"
    if per_layer is not False:
        assert eager[10]["layers"] is not None and eager[7]["layers"] is not None


def test_a_nonfinite_step_is_written_at_once_on_the_cpu():
    """Reading the flag is free on the CPU: a NaN step and everything before it reach the sinks in
    the call that recorded it (a crash right after it loses nothing)."""
    model, steps = _steps(nan_at=(5,))
    got = []
    monitor = Monitor([got.append], flush_every=100)
    returned = _feed(monitor, model, steps[:5])
    assert got == [] and returned == [None] * 5
    monitor.step(model, clip_stats=steps[5][0], loss=steps[5][1])
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4, 5] and got[-1]["nonfinite"]
    assert got[-1]["offenders"] == [{"name": "2.weight", "shape": [2, 3], "nan": 1, "inf": 0}]
    monitor.step(model, clip_stats=steps[6][0], loss=steps[6][1])
    assert len(got) == 6  # buffered again
    monitor.close()
    assert [r["step"] for r in got] == list(range(7))


class _Buffering:
    """A sink object that buffers, with the optional ``flush()``."""

    def __init__(self):
        self.buffer, self.out, self.flushes = [], [], 0

    def write(self, record):
        self.buffer.append(record)

    def flush(self):
        self.flushes += 1
        self.out, self.buffer = self.out + self.buffer, []

    def close(self):
        self.flush()


def test_flush_writes_the_buffer_and_flushes_the_sinks():
    model, steps = _steps(nan_at=())
    sink = _Buffering()
    monitor = Monitor([sink], flush_every=50)
    _feed(monitor, model, steps[:3])
    assert sink.buffer == [] and sink.flushes == 0
    monitor.flush()
    assert [r["step"] for r in sink.out] == [0, 1, 2] and sink.flushes == 1
    monitor.close()
    monitor.flush()  # closed: nothing to do, no error
    assert [r["step"] for r in sink.out] == [0, 1, 2]


def test_an_exception_in_the_with_block_still_writes_every_buffered_step(tmp_path):
    model, steps = _steps(nan_at=())
    log = tmp_path / "a.jsonl"
    with pytest.raises(RuntimeError, match="boom"):
        with Monitor([f"jsonl:{log}"], flush_every=50) as monitor:
            _feed(monitor, model, steps[:4])
            raise RuntimeError("boom")
    (run,) = read_runs(log)
    assert [r["step"] for r in run.records] == [0, 1, 2, 3] and run.end["steps"] == 4


def test_interpreter_exit_writes_what_an_unclosed_monitor_buffers(tmp_path):
    """A script that crashes (uncaught exception) without close(): the buffered steps are written."""
    log = tmp_path / "crash.jsonl"
    script = textwrap.dedent(f"""
        import gradclip
        from gradclip.monitor import Monitor
        m = Monitor([{f"jsonl:{log}"!r}], flush_every=100)
        for i in range(3):
            m.step(clip_stats=gradclip.ClipStats(norm=1.0 + i, clipped_norm=1.0, coef=1.0, clipped=False,
                                                 nonfinite=False, skipped=False, threshold=2.0), loss=float(i))
        raise SystemExit("crashed")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "crashed" in proc.stderr
    (run,) = read_runs(log)
    assert [(r["step"], r["norm"]) for r in run.records] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert run.end is None  # not closed: no end record claims the run ended


def test_the_model_is_not_walked_without_per_layer_detail(monkeypatch):
    """per_layer=False (and a finite step under "on_anomaly") reads the ClipStats only."""
    from gradclip.torch import _params

    model, steps = _steps(n=3, nan_at=(2,), spike_at=())
    calls = []
    real = _params.named_tensors
    monkeypatch.setattr(_params, "named_tensors", lambda *a, **k: calls.append(1) or real(*a, **k))
    with Monitor(per_layer="on_anomaly") as monitor:
        _feed(monitor, model, steps[:2])
        assert calls == []
        rec = monitor.step(model, clip_stats=steps[2][0])  # non-finite: the layers and the names are needed
    assert len(calls) == 1 and rec["offenders"][0]["name"] == "2.weight" and rec["layers"] is not None


def _reference(values):
    """Python values through float64 NumPy, the way the old one-buffer read gave them."""
    out = []
    for v in values:
        if not isinstance(v, torch.Tensor):
            out.append(v)
            continue
        a = v.detach().to(torch.float64 if v.dtype == torch.bfloat16 else v.dtype).numpy().astype(np.float64).reshape(-1)
        conv = bool if v.dtype == torch.bool else (float if v.is_floating_point() else int)
        items = [conv(x) for x in a.tolist()]
        out.append(items[0] if v.dim() == 0 else items)
    return out


@pytest.mark.parametrize("host", [True, False], ids=["cpu-path", "accelerator-path"])
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_batched_read_gives_the_float64_reference(monkeypatch, host, rows):
    if not host:
        monkeypatch.setattr(_fetch, "HOST_MEMORY", ())
    g = torch.Generator().manual_seed(rows)
    table = []
    for i in range(rows):
        table.append([
            torch.rand((), generator=g) * 10, torch.tensor(float("nan") if i == 1 else 0.5 * i, dtype=torch.float64),
            1.5, None, torch.tensor(i % 2 == 0), torch.tensor(i, dtype=torch.int64),
            torch.rand(3, generator=g), torch.arange(4, dtype=torch.int32).reshape(2, 2),
            torch.tensor(2.0, requires_grad=True), torch.tensor(0.25, dtype=torch.bfloat16), True,
        ])
    got = _fetch.fetch(table)
    for row_got, row in zip(got, table):
        want = _reference(row)
        assert [type(x) for x in row_got] == [type(x) for x in want]
        for x, y in zip(row_got, want):
            assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))


def test_spike_scores_match_a_float64_reference_at_any_scale():
    rng = np.random.default_rng(0)
    for scale in (1e-300, 1e-3, 1.0, 1e150, 1e300):
        d = SpikeDetector(window=20, z=3.0, min_history=5)
        history = []
        for x in scale * (1 + 0.1 * rng.random(60)):
            spike, z = d.update(float(x))
            if len(history) >= 5:
                window = np.array(history[-20:]) / scale
                mean, std = window.mean() * scale, window.std(ddof=1) * scale
                std = max(std, 1e-3 * abs(mean), 1e-12)
                assert z == pytest.approx((x - mean) / std, rel=1e-9) and spike == ((x - mean) / std > 3.0)
            else:
                assert z is None
            history.append(float(x))
