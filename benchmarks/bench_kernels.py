"""The measurements behind gradclip's kernel choices (``gradclip/torch/_fast.py``), one run.

For one large fp32 tensor (the GPT-2 embedding, 38.6M elements), its bf16 copy, 2000 small tensors
and 2000 one-element tensors (pure call overhead): the memory floor (copy), the fastest read
(``sum``), torch's norm kernel against ``dot``, blocked and not, one- and two-pass clamps, and the
bf16 conversions. Interleaved repetitions, medians; read/write GB/s next to each time.

    .venv/bin/python benchmarks/bench_kernels.py [--threads 1,2] [--reps 9] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from gradclip.bench._workloads import small_sizes
from gradclip.torch import _fast


def _blocked(x: torch.Tensor, block: int) -> torch.Tensor:
    return torch.stack([torch.dot(c, c) for c in x.split(block)]).sum()


def cases() -> dict[str, tuple[float, object]]:
    """name -> (bytes moved at the least, zero-argument callable)."""
    n = 50257 * 768
    x, y = torch.randn(n), torch.empty(n)
    xb = x.bfloat16()
    small = [torch.randn(s) for s in small_sizes(2000)]
    tiny = [torch.randn(1) for _ in range(2000)]
    nb, sb = 4 * n, 4 * sum(t.numel() for t in small)
    return {
        "large: copy (floor, r+w)": (2 * nb, lambda: y.copy_(x)),
        "large: sum (read)": (nb, lambda: x.sum()),
        "large: vector_norm": (nb, lambda: torch.linalg.vector_norm(x)),
        "large: dot": (nb, lambda: torch.dot(x, x)),
        "large: dot, blocks of 2^20": (nb, lambda: _blocked(x, 1 << 20)),
        "large: dot, blocks of 2^22": (nb, lambda: _blocked(x, 1 << 22)),
        "large: mul_ (in place, r+w)": (2 * nb, lambda: x.mul_(1.0)),
        "large: clamp_(lo, hi)": (2 * nb, lambda: x.clamp_(-10.0, 10.0)),
        "large: clamp_min_ + clamp_max_": (2 * nb, lambda: (x.clamp_min_(-10.0), x.clamp_max_(10.0))),
        "bf16: vector_norm (bf16 result)": (nb / 2, lambda: torch.linalg.vector_norm(xb)),
        "bf16: vector_norm(dtype=fp32)": (nb / 2, lambda: torch.linalg.vector_norm(xb, dtype=torch.float32)),
        "bf16: blocked conversion + dot (fp32)": (nb / 2, lambda: _fast.sumsq(xb, torch.float32)),
        "2000 small: foreach_norm": (sb, lambda: torch._foreach_norm(small)),
        "2000 small: dot per tensor": (sb, lambda: _fast.sumsqs(small, torch.float32)),
        "2000 small: foreach_mul_": (2 * sb, lambda: torch._foreach_mul_(small, 1.0)),
        "2000 small: clamp_ per tensor": (2 * sb, lambda: [t.clamp_(-10.0, 10.0) for t in small]),
        "2000 small: foreach clamp_min_ + max_": (2 * sb, lambda: (torch._foreach_clamp_min_(small, -10.0),
                                                                  torch._foreach_clamp_max_(small, 10.0))),
        "2000 x 1 element: dot per tensor": (0, lambda: [torch.dot(t, t) for t in tiny]),
        "2000 x 1 element: foreach_norm": (0, lambda: torch._foreach_norm(tiny)),
        "2000 x 1 element: foreach_mul_": (0, lambda: torch._foreach_mul_(tiny, 1.0)),
    }


def run(threads: int, reps: int) -> list[dict]:
    torch.set_num_threads(threads)
    todo = cases()
    flush = torch.empty(32 << 20)
    samples: dict[str, list[float]] = {k: [] for k in todo}
    for _, fn in todo.values():
        fn()
    for _ in range(reps):
        for name, (_, fn) in todo.items():
            flush.fill_(1.0)
            t = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t)
    rows = []
    for name, (nbytes, _) in todo.items():
        sec = statistics.median(samples[name])
        rows.append({"threads": threads, "case": name, "ms": sec * 1e3, "gbps": nbytes / sec / 1e9 if nbytes else None})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for t in (int(s) for s in args.threads.split(",")):
        for r in run(t, args.reps):
            rows.append(r)
            gbps = f"{r['gbps']:6.1f} GB/s" if r["gbps"] else ""
            print(f"{t}  {r['case']:42} {r['ms']:9.2f} ms  {gbps}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
