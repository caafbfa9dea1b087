"""The benchmark suite's machinery (timing harness, report, CLI) on tiny workloads: no timing asserted."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from gradclip import cli  # noqa: E402
from gradclip.bench import _report, _timing, _workloads, parse_args, run  # noqa: E402


@pytest.fixture
def tiny(monkeypatch):
    """Workloads of a few thousand elements and a small floor copy, so a whole run takes a second."""
    monkeypatch.setattr(_timing, "FLOOR_ELEMENTS", 1 << 14)
    monkeypatch.setattr(_timing, "FLUSH_ELEMENTS", 1 << 12)

    def clip_workloads(quick, device="cpu"):
        yield lambda: _workloads.make("gpt2 fp32", [(40, 8), (8,)], torch.float32)
        yield lambda: _workloads.make("20 small fp32, one buffer", [(s,) for s in range(1, 21)], torch.float32,
                                      one_buffer=True)
        yield lambda: _workloads.make("gpt2 bf16", [(40, 8), (8,)], torch.bfloat16)

    monkeypatch.setattr(_workloads, "clip_workloads", clip_workloads)
    monkeypatch.setattr(_workloads, "step_workload",
                        lambda quick, device="cpu": _workloads.make("gpt2/2 fp32", [(16, 4), (4,)], torch.float32))


def test_measure_restores_before_every_call_and_interleaves():
    log = []
    impls = [_timing.Impl(n, lambda n=n: log.append(n)) for n in "abc"]
    timer = _timing.Timer(floor_elements=1024, flush_elements=1024)
    result = _timing.measure(impls, lambda: log.append("restore"), 3, timer)
    calls = [x for x in log if x != "restore"]
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")  # warm-up, then rotated
    assert all(log[i - 1] == "restore" for i, x in enumerate(log) if x != "restore")
    assert log.count("restore") == len(calls) + 1  # and once at the end
    assert set(result.ms) == set("abc") and all(len(v) == 3 for v in result.samples.values())
    assert result.floor_gbps > 0 and len(result.floor_samples) == 3


def test_workloads_shapes_and_one_buffer():
    assert len(_workloads.gpt2_shapes()) == 148
    assert sum(torch.Size(s).numel() for s in _workloads.gpt2_shapes()) == 124_439_808
    sizes = _workloads.small_sizes(2000)
    assert len(sizes) == 2000 and min(sizes) >= 1024 and max(sizes) <= 65536
    w = _workloads.make("w", [(3, 4), (5,)], torch.float32, one_buffer=True)
    assert w.grads[0]._base is w.grads[1]._base and w.grad_bytes == 68
    w.grads[0].zero_()
    w.restore()
    assert torch.equal(w.grads[0], w.saved[0])


def test_run_reports_rows_targets_and_json(tiny, tmp_path, capsys):
    code = cli.main(["bench", "--quick", "--reps", "2", "--threads", "1", "--json", str(tmp_path / "b.json"),
                     "--markdown", str(tmp_path / "b.md")])
    assert code == 0
    assert "| gpt2 fp32 (328 in 2) | clip (clipping) | **torch foreach** (base) |" in (tmp_path / "b.md").read_text()
    out = capsys.readouterr().out
    assert "torch foreach (base)" in out and "x floor" in out and "verdict" in out
    saved = json.loads((tmp_path / "b.json").read_text())
    ops = {r["op"] for r in saved["rows"]}
    assert {"clip (clipping)", "clip (no clipping needed)", "norm only", "value clip", "adaptive policies",
            "Monitor overhead", "clip + AdamW step"} <= ops
    assert saved["machine"]["torch"] == torch.__version__ and saved["reps"] == 2
    assert {t["target"] for t in saved["targets"]} >= {r[0] for r in _report.TARGETS if "small" not in r[1]}
    for row in saved["rows"]:
        assert row["ms"] > 0 and row["floor_ms"] > 0 and row["x_floor"] == pytest.approx(row["ms"] / row["floor_ms"])


def test_only_and_no_step(tiny):
    result = run(parse_args(["--quick", "--reps", "1", "--threads", "1", "--only", "bf16", "--no-step"]),
                 echo=lambda text: None)
    assert {r["workload"].split(" (")[0] for r in result["rows"]} == {"gpt2 bf16"}


def test_evaluate_names_the_best_implementation():
    def row(impl, ms, floor_ms=10.0, op="clip (clipping)", base="torch foreach"):
        return {"threads": 2, "workload": "gpt2 fp32 (1M in 2)", "op": op, "impl": impl, "ms": ms,
                "floor_ms": floor_ms, "x_floor": ms / floor_ms, "vs_base": 12.0 / ms, "base": base}

    rows = [row("torch foreach", 12.0), row("gradclip", 11.5), row("gradclip fast=True", 10.5)]
    (verdict,) = _report.evaluate(rows)
    assert verdict["impl"] == "gradclip fast=True" and verdict["value"] == pytest.approx(1.05) and verdict["met"]
    assert "met" in _report.render_targets([verdict]) and "gradclip fast=True" in _report.render(rows)
