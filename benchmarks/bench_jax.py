"""JAX benchmarks: what ``gradclip.jax.transform`` costs under ``jax.jit``, one process, one run.

Three questions, each answered as a ratio of medians (targets from issue 13):

1. ``transform(GlobalNorm(1.0, semantics="optax"))`` and ``transform(GlobalNorm(1.0))`` against
   ``optax.clip_by_global_norm(1.0)``: target at most 1.05x.
2. ``transform(ZClip())`` and ``transform(AutoClip(window=1000))`` against
   ``transform(GlobalNorm(1.0))``: target at most 1.10x.
3. Compile time (trace + lower + XLA compile) of an Adam train step, with and without the
   transform in front of ``optax.adam``.

Workloads: GPT-2-small gradient shapes in JAX's ``[in, out]`` layout (124M float32 elements in
148 leaves: wte 50257x768, wpe 1024x768, 12 blocks of ln_1, attn c_attn 768x2304 / c_proj
768x768, ln_2, mlp c_fc 768x3072 / c_proj 3072x768, then ln_f), and 2,000 small leaves of 1K-64K
elements (log-uniform). Gradients are N(0, 1), so every call really clips. Each jitted function
is called twice untimed (compile, warm-up), then ``--reps`` times per implementation, interleaved
in a rotated order, each call ended by ``jax.block_until_ready``; the table gives medians.
Timings are never asserted in tests.

    .venv/bin/python benchmarks/bench_jax.py [--quick] [--reps 21] [--only gpt2,small,compile] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradclip
import gradclip.jax as gcj

TARGETS = {"clip": 1.05, "policy": 1.10}


# --- workloads -------------------------------------------------------------------------------

def gpt2_shapes(scale: int = 1, layers: int = 12) -> dict[str, Any]:
    """GPT-2-small parameter shapes as a pytree (JAX ``[in, out]`` kernels); ``scale`` divides widths."""
    d, v, ctx = 768 // scale, 50257 // scale, 1024 // scale
    dense = lambda a, b: {"kernel": (a, b), "bias": (b,)}
    norm = {"scale": (d,), "bias": (d,)}
    block = {"ln_1": norm, "attn": {"c_attn": dense(d, 3 * d), "c_proj": dense(d, d)},
             "ln_2": norm, "mlp": {"c_fc": dense(d, 4 * d), "c_proj": dense(4 * d, d)}}
    return {"wte": (v, d), "wpe": (ctx, d), **{f"h{i}": block for i in range(layers)}, "ln_f": norm}


def small_shapes(n: int = 2000, seed: int = 0, low: int = 10, high: int = 16) -> dict[str, Any]:
    """``n`` 1-D leaves of ``2**low`` to ``2**high`` elements, log-uniform (most are small)."""
    u = np.random.default_rng(seed).random(n)
    return {f"t{i:04d}": (int(2 ** (low + (high - low) * x)),) for i, x in enumerate(u)}


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def make_grads(shapes: dict[str, Any], seed: int = 0) -> Any:
    """N(0, 1) float32 arrays of the given shapes, on the default device."""
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=_is_shape)
    rng = np.random.default_rng(seed)  # NumPy: jax.random would compile once per shape
    arrays = [jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in leaves]
    return jax.block_until_ready(jax.tree.unflatten(treedef, arrays))


def describe(tree: Any) -> str:
    leaves = jax.tree.leaves(tree)
    n = sum(x.size for x in leaves)
    count = f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"
    return f"{count} in {len(leaves)}"


# --- timing ----------------------------------------------------------------------------------

def jitted_update(tx: optax.GradientTransformation, grads: Any) -> tuple[Callable[[], Any], Any]:
    """``call()`` running one jitted ``tx.update`` on ``grads`` from a fixed state."""
    state = tx.init(grads)
    update = jax.jit(lambda g, s: tx.update(g, s))
    return (lambda: update(grads, state)), state


def measure(impls: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Milliseconds of each call: two untimed calls each, then ``reps`` rounds in a rotated order."""
    for call in impls.values():
        for _ in range(2):
            jax.block_until_ready(call())
    names = list(impls)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            jax.block_until_ready(impls[name]())
            samples[name].append((time.perf_counter() - start) * 1e3)
    return samples


def train_step(tx: optax.GradientTransformation) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """``step(params, state, grads) -> (params, state)``: one optimizer update, applied."""

    def step(p: Any, s: Any, g: Any) -> tuple[Any, Any]:
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s

    return step


def compile_seconds(make_tx: Callable[[], optax.GradientTransformation], params: Any, reps: int) -> list[float]:
    """Seconds to trace, lower and compile a fresh jitted Adam step (abstract shapes, nothing runs)."""
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
    out = []
    for _ in range(reps):
        tx = make_tx()
        state = jax.eval_shape(tx.init, abstract)
        start = time.perf_counter()
        jax.jit(train_step(tx)).lower(abstract, state, abstract).compile()
        out.append(time.perf_counter() - start)
    return out


# --- the suite -------------------------------------------------------------------------------

def clip_rows(workload: str, grads: Any, reps: int) -> list[dict[str, Any]]:
    """Questions 1 and 2 on one workload: rows of (operation, implementation, ms, ratio)."""
    txs = {
        "optax.clip_by_global_norm": optax.clip_by_global_norm(1.0),
        'GlobalNorm(semantics="optax")': gcj.transform(gradclip.GlobalNorm(1.0, semantics="optax")),
        "GlobalNorm": gcj.transform(gradclip.GlobalNorm(1.0)),
        "ZClip": gcj.transform(gradclip.ZClip()),
        "AutoClip(window=1000)": gcj.transform(gradclip.AutoClip(window=1000)),
    }
    samples = measure({name: jitted_update(tx, grads)[0] for name, tx in txs.items()}, reps)
    ms = {name: statistics.median(s) for name, s in samples.items()}
    label = f"{workload} ({describe(grads)})"
    base = {"optax.clip_by_global_norm": None, 'GlobalNorm(semantics="optax")': "optax.clip_by_global_norm",
            "GlobalNorm": "optax.clip_by_global_norm", "ZClip": "GlobalNorm", "AutoClip(window=1000)": "GlobalNorm"}
    rows = []
    for name in txs:
        ref = base[name]
        kind = "clip" if ref == "optax.clip_by_global_norm" else "policy" if ref else None
        rows.append({"workload": label, "implementation": name, "ms": ms[name], "base": ref,
                     "ratio": ms[name] / ms[ref] if ref else None, "target": TARGETS.get(kind),
                     "samples": samples[name]})
    return rows


def compile_rows(params: Any, reps: int) -> list[dict[str, Any]]:
    """Question 3: compile time of an Adam step, bare and behind each clipping transformation."""
    makers = {
        "adam": lambda: optax.adam(1e-3),
        "chain(optax.clip_by_global_norm, adam)": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3)),
        "chain(transform(GlobalNorm), adam)": lambda: optax.chain(gcj.transform(gradclip.GlobalNorm(1.0)),
                                                                  optax.adam(1e-3)),
        "chain(transform(ZClip), adam)": lambda: optax.chain(gcj.transform(gradclip.ZClip()), optax.adam(1e-3)),
    }
    compile_seconds(makers["adam"], params, 1)  # the first compile of a process pays for set-up
    rows = []
    for name, make in makers.items():
        s = compile_seconds(make, params, reps)
        rows.append({"workload": f"adam step ({describe(params)})", "implementation": name,
                     "ms": statistics.median(s) * 1e3, "base": None if name == "adam" else "adam",
                     "ratio": None, "target": None, "samples": [x * 1e3 for x in s]})
    for row in rows[1:]:
        row["ratio"] = row["ms"] / rows[0]["ms"]
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: workload, implementation, median ms, ratio to its base, target met."""
    lines = ["| workload | implementation | median ms | vs | ratio | target |", "|---|---|--:|---|--:|---|"]
    last = None
    for r in rows:
        target = "" if r["target"] is None else (f"<= {r['target']:.2f} " + ("met" if r["ratio"] <= r["target"]
                                                                              else "**not met**"))
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.3f}"
        workload = r["workload"] if r["workload"] != last else ""
        last = r["workload"]
        lines.append(f"| {workload} | {r['implementation']} | {r['ms']:.2f} | {r['base'] or ''} | {ratio} | {target} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Versions and hardware, recorded next to the numbers."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"python": platform.python_version(), "jax": jax.__version__, "optax": optax.__version__,
            "gradclip": gradclip.__version__, "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "processor": cpu, "cores": cores,
            "platform": platform.platform()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: GPT-2 shapes at 1/64 width without blocks (4 leaves), 8 small leaves, 3 repetitions")
    p.add_argument("--reps", type=int, default=None, help="timed calls per implementation (default 21; --quick 3)")
    p.add_argument("--compile-reps", type=int, default=None, help="compilations per train step (default 5; --quick 1)")
    p.add_argument("--only", default="gpt2,small,compile", help="comma-separated parts: gpt2, small, compile")
    p.add_argument("--json", metavar="PATH", help="write machine, settings and every sample as JSON to PATH")
    return p.parse_args(argv)


def run(args: argparse.Namespace, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the selected parts; returns ``{"machine", "settings", "rows"}``. ``echo`` gets progress
    lines and each part's table as soon as it is measured (a full run takes many minutes on a
    small CPU: XLA compiles a 2,000-leaf update for about a minute)."""
    reps = args.reps or (3 if args.quick else 21)
    compile_reps = args.compile_reps or (1 if args.quick else 5)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"gpt2", "small", "compile"}
    if unknown:
        raise SystemExit(f"bench_jax.py: unknown part(s) {sorted(unknown)}; valid: gpt2, small, compile")
    gpt2 = gpt2_shapes(64, 0) if args.quick else gpt2_shapes()
    rows: list[dict[str, Any]] = []
    if "gpt2" in parts or "compile" in parts:
        grads = make_grads(gpt2)
        if "gpt2" in parts:
            echo("measuring gpt2 fp32 ...")
            rows += clip_rows("gpt2 fp32", grads, reps)
            echo(render(rows[-5:]))
        if "compile" in parts:
            echo("measuring compile times ...")
            rows += compile_rows(grads, compile_reps)
            echo(render(rows[-4:]))
        del grads
    if "small" in parts:
        echo("measuring small leaves ...")
        small = make_grads(small_shapes(8 if args.quick else 2000, low=6 if args.quick else 10,
                                        high=10 if args.quick else 16), seed=1)
        rows += clip_rows("small leaves", small, reps)
        echo(render(rows[-5:]))
    settings = {"reps": reps, "compile_reps": compile_reps, "quick": bool(args.quick), "parts": sorted(parts)}
    return {"machine": machine(), "settings": settings, "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args, echo=lambda line: print(line, file=sys.stderr, flush=True))
    m = result["machine"]
    print(f"Machine: {m['processor']}, {m['cores']} cores, backend {m['backend']}; Python {m['python']}, "
          f"jax {m['jax']}, optax {m['optax']}, gradclip {m['gradclip']}; "
          f"{result['settings']['reps']} repetitions (medians)\n")
    print(render(result["rows"]))
    missed = [r for r in result["rows"] if r["target"] is not None and r["ratio"] > r["target"]]
    print(f"\nTargets: {sum(r['target'] is not None for r in result['rows']) - len(missed)} met, {len(missed)} not met"
          + "".join(f"\n  not met: {r['workload']} {r['implementation']} {r['ratio']:.3f} > {r['target']}"
                    for r in missed))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
        print(f"JSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
