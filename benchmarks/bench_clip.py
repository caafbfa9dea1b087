"""Clipping cost: gradclip vs torch.nn.utils, side by side in one run.

Prints a table (median milliseconds per call and the ratio gradclip / torch) and writes JSON.
Repetitions are interleaved (A, B, A, B, ...), gradients are restored before every call so every
call really clips, and timing excludes the restore. Never used for assertions in tests.

    .venv/bin/python benchmarks/bench_clip.py [--reps 15] [--threads 1,2] [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

import gradclip
import gradclip.torch as gct


def gpt2_shapes(scale: int = 1) -> list[tuple[int, ...]]:
    """GPT-2 small gradient shapes (124M elements, 148 tensors); ``scale`` divides the width."""
    d, v, ctx = 768 // scale, 50257 // scale, 1024
    shapes: list[tuple[int, ...]] = [(v, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


def many_small(n: int = 2000) -> list[tuple[int, ...]]:
    gen = torch.Generator().manual_seed(0)
    return [(int(torch.randint(1024, 65536, (1,), generator=gen)),) for _ in range(n)]


def make_params(shapes, dtype) -> list[torch.nn.Parameter]:
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.empty(s, dtype=dtype))
        p.grad = torch.randn(s, dtype=dtype)
        params.append(p)
    return params


def timed(fn: Callable[[], object], params, saved) -> float:
    for p, g in zip(params, saved):
        p.grad.copy_(g)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(name, params, ops: dict[str, Callable[[], object]], reps: int) -> dict:
    saved = [p.grad.clone() for p in params]
    for fn in ops.values():  # warm-up
        timed(fn, params, saved)
    times: dict[str, list[float]] = {k: [] for k in ops}
    for _ in range(reps):
        for k, fn in ops.items():
            times[k].append(timed(fn, params, saved))
    for p, g in zip(params, saved):
        p.grad.copy_(g)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def workloads(quick: bool):
    scale = 4 if quick else 1
    yield "gpt2-shapes fp32", make_params(gpt2_shapes(scale), torch.float32)
    yield "2000 small fp32", make_params(many_small(500 if quick else 2000), torch.float32)
    yield "gpt2-shapes bf16", make_params(gpt2_shapes(scale), torch.bfloat16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true", help="smaller workloads (a quarter of GPT-2's width)")
    ap.add_argument("--policies", action="store_true", help="also time the Clipper with each adaptive policy")
    args = ap.parse_args()
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name, params in workloads(args.quick):
            clipper = gct.Clipper(gradclip.GlobalNorm(1.0))
            pairs = {
                "norm clip": (lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
                              lambda: gct.clip_grad_norm_(params, 1.0)),
                "norm clip, Clipper": (lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
                                       lambda: clipper.step(params)),
                "value clip": (lambda: torch.nn.utils.clip_grad_value_(params, 0.5),
                               lambda: gct.clip_grad_value_(params, 0.5)),
                "norm only": (lambda: torch.nn.utils.get_total_norm([p.grad for p in params]),
                              lambda: gct.get_total_norm([p.grad for p in params])),
            }
            if args.policies:
                for spec in ("autoclip:p=10", "zclip", "adagc", "agc:0.01", "spikeguard+norm:1.0", "maxhist:5"):
                    c = gct.Clipper(spec)
                    pairs[f"Clipper {spec}"] = (lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
                                                lambda c=c: c.step(params))
            for op, (ref, ours) in pairs.items():
                r = bench(name, params, {"torch": ref, "gradclip": ours}, args.reps)
                rows.append({"threads": threads, "workload": name, "op": op, "torch_ms": r["torch"],
                             "gradclip_ms": r["gradclip"], "ratio": r["gradclip"] / r["torch"]})
                print(f"{threads}  {name:<18} {op:<20} torch {r['torch']:9.2f} ms  gradclip {r['gradclip']:9.2f} ms"
                      f"  ratio {r['gradclip'] / r['torch']:.2f}", flush=True)
            del params
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
