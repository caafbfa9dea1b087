"""A smoke run of benchmarks/bench_privacy.py --quick, so that the script cannot rot (timings are never asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_privacy.py"


def _bench_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_privacy
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return bench_privacy


@pytest.mark.filterwarnings("ignore")
def test_quick_run_times_every_implementation_and_writes_json(tmp_path, capsys):
    bench = _bench_module()
    threads = torch.get_num_threads()
    try:
        code = bench.main(["--quick", "--no-memory", "--rounds", "1", "--steps", "1",
                           "--json", str(tmp_path / "p.json")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    out = capsys.readouterr().out
    assert "MLP" in out and "transformer" in out and "vs opacus ghost" in out
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    assert {(r["model"], r["impl"]) for r in rows} == {(m, i) for m in ("mlp", "transformer") for i in bench.IMPLS}
    failed = [(r["model"], r["impl"], r["error"]) for r in rows if "error" in r]
    assert not failed
    assert all(r["ms"] > 0 for r in rows)


@pytest.mark.filterwarnings("ignore")
def test_memory_worker_reports_peak_rss():
    # In-process without the high-water-mark reset (the benchmark runs it in a fresh process).
    bench = _bench_module()
    threads = torch.get_num_threads()
    try:
        row = bench.worker("gradclip ghost", "transformer", 4, True, 1, 1, reset=False)
    finally:
        torch.set_num_threads(threads)
    assert row["peak_mib"] >= row["rss_before_mib"] > 0 and row["step_mib"] >= 0 and row["cold_peak_mib"] > 0


@pytest.mark.parametrize("name", ["mlp", "transformer"])
def test_ghost_norms_match_materialised_on_the_benchmark_models(name):
    from gradclip.privacy._engine import PerExampleGrads

    bench = _bench_module()
    out = {}
    for ghost in (True, False):
        model, x, y = bench.build(name, bench.workloads(True)[name], 6)
        with PerExampleGrads(model, ghost=ghost) as pe:
            out[ghost] = pe.norms(torch.nn.functional.cross_entropy(model(x), y, reduction="none"))
    torch.testing.assert_close(out[True], out[False], rtol=1e-5, atol=1e-7)
