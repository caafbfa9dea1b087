"""A smoke run of benchmarks/bench_jax.py, so that the script cannot rot (timings are never asserted)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_jax.py"
#: XLA:CPU compiles most of a --quick run's time; a lower LLVM effort keeps the smoke run short.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _bench_module():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_jax
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return bench_jax


def test_gpt2_shapes_are_gpt2_small():
    shapes = _bench_module().gpt2_shapes()
    leaves = [s for s in _flatten(shapes)]
    assert len(leaves) == 148
    assert sum(math.prod(s) for s in leaves) == 124_439_808  # GPT-2 small, tied embedding counted once
    assert shapes["wte"] == (50257, 768) and shapes["h0"]["attn"]["c_attn"]["kernel"] == (768, 2304)


def test_small_leaves():
    bench = _bench_module()
    shapes = bench.small_shapes()
    sizes = [s[0] for s in shapes.values()]
    assert len(sizes) == 2000 and min(sizes) >= 2**10 and max(sizes) <= 2**16
    grads = bench.make_grads(bench.small_shapes(5, low=2, high=4))
    assert bench.describe(grads).endswith("in 5")


def _flatten(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _flatten(v)
    else:
        yield tree


@pytest.mark.slow
def test_quick_run_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "XLA_FLAGS": FAST_COMPILE, "JAX_PLATFORMS": "cpu"}
    # "small" runs the same clip_rows as "gpt2" on other leaves (test_small_leaves below): left out for time
    argv = [sys.executable, str(SCRIPT), "--quick", "--only", "gpt2,compile", "--json", str(out)]
    proc = subprocess.run(argv, capture_output=True, check=False,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| workload | implementation | median ms |" in proc.stdout and "Targets:" in proc.stdout
    result = json.loads(out.read_text())
    assert result["settings"]["quick"] is True and result["machine"]["backend"] == "cpu"
    rows = result["rows"]
    assert len(rows) == 5 + 4  # gpt2 clip rows, compile rows
    for row in rows:
        assert row["ms"] > 0 and len(row["samples"]) == (1 if row["workload"].startswith("adam") else 3)
        assert (row["ratio"] is None) == (row["base"] is None)
    targets = [r for r in rows if r["target"] is not None]
    assert len(targets) == 4 and {r["target"] for r in targets} == {1.05, 1.10}
