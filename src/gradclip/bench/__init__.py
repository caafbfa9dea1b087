"""The benchmark suite behind ``gradclip bench`` and ``make bench``: gradclip vs torch vs the floor.

Workloads: GPT-2-small gradient shapes (124M elements in 148 tensors) in fp32 and bf16, 2000
small tensors (1K-64K elements) as separate tensors and as views of one buffer, one flat 100M
tensor; and a full optimizer step (clip + AdamW) on GPT-2 shapes at half width. Operations:
global-norm clip when clipping happens and when it does not, norm only, value clip, every
adaptive policy, the Monitor's overhead, and the optimizer step. Columns: each implementation's
median time, the memory floor measured in the same run (one large copy per repetition, counting
read + write bytes) and the ratios. Repetitions are interleaved, gradients restored and caches
flushed before every call. Timings are never asserted in tests.

Example:
    >>> from gradclip.bench import parse_args
    >>> parse_args(["--quick", "--threads", "1,2"]).threads
    [1, 2]
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
from collections.abc import Sequence
from typing import Any

from gradclip._argtypes import int_list, positive_int

__all__ = ["add_arguments", "main", "parse_args", "run", "run_and_print"]


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The suite's options (shared by ``gradclip bench`` and ``benchmarks/bench_clip.py``)."""
    parser.add_argument("--quick", action="store_true",
                        help=("a smoke run of every operation: workloads of 8M elements, 3 repetitions, 1 thread, "
                              "a smaller floor copy (well under a minute on 2 idle cores)"))
    parser.add_argument("--reps", type=positive_int, default=None,
                        help=f"repetitions per operation (default: {REPS}, quick: {QUICK_REPS})")
    parser.add_argument("--threads", type=_thread_counts, default=None,
                        help="comma-separated torch thread counts (default: 1,2; quick: 1)")
    parser.add_argument("--only", default="", help="run only workloads whose name contains this text (e.g. bf16)")
    parser.add_argument("--no-step", action="store_true", help="skip the optimizer-step benchmark (slowest part)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="on a shared machine, wait up to SECONDS before each operation for the other "
                             "processes to go idle (default: 0, do not wait)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda (CUDA events, device floor)")
    parser.add_argument("--json", metavar="PATH", help="write every row, the targets and the machine as JSON")
    parser.add_argument("--markdown", metavar="PATH", help="also write the tables as Markdown (for BENCHMARKS.md)")
    return parser


REPS, QUICK_REPS = 11, 3
#: ``--threads``: comma-separated torch thread counts, each 1 or more.
_thread_counts = int_list("1,2", minimum=1)
THREADS, QUICK_THREADS = [1, 2], [1]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return add_arguments(argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])).parse_args(argv)


def machine() -> dict[str, Any]:
    """Versions and hardware, recorded next to the numbers."""
    import torch

    import gradclip

    return {"python": platform.python_version(), "torch": torch.__version__, "gradclip": gradclip.__version__,
            "platform": platform.platform(), "processor": _cpu_name(), "cores": _cores(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def _cores() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run(args: argparse.Namespace, echo=print) -> dict[str, Any]:
    """Run the suite; ``echo`` receives each block of rows as it is measured. Returns all rows."""
    import torch

    from gradclip.bench import _ops, _report, _timing, _workloads

    reps = args.reps or (QUICK_REPS if args.quick else REPS)
    sizes = (_timing.FLOOR_ELEMENTS // 2, _timing.FLUSH_ELEMENTS // 2) if args.quick else ()
    timer = _timing.Timer(args.device, *sizes)
    rows: list[dict[str, Any]] = []
    threads_list = args.threads or (QUICK_THREADS if args.quick else THREADS)
    for threads in (_thread_counts(threads_list) if isinstance(threads_list, str) else threads_list):
        torch.set_num_threads(threads)
        for make in _workloads.clip_workloads(args.quick, args.device):
            w = make()
            if args.only in w.name:
                todo = [(op, w.restore) for op in _ops.clip_ops(w, extras=w.name == "gpt2 fp32")]
                if w.name == "gpt2 fp32":
                    policies = _ops.PolicyBench(w)
                    todo.insert(-1, (policies.op(), policies.restore))
                for op, restore in todo:
                    if args.wait_idle:
                        _timing.wait_idle(args.wait_idle)
                    block = _report.rows_for(threads, w.label(), op, _timing.measure(op.impls, restore, reps, timer))
                    rows += block
                    echo(_report.render(block))
            del w
            gc.collect()
        if not args.no_step and args.only in "gpt2/2 fp32":
            step = _ops.StepBench(lambda: _workloads.step_workload(args.quick, args.device))
            op = step.op()
            if args.wait_idle:
                _timing.wait_idle(args.wait_idle)
            block = _report.rows_for(threads, step.name, op, _timing.measure(op.impls, step.restore, reps, timer))
            rows += block
            echo(_report.render(block))
            del step
            gc.collect()
    return {"machine": machine(), "reps": reps, "quick": args.quick, "rows": rows,
            "targets": _report.evaluate(rows)}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, run the suite, print the table and the targets, write JSON when asked."""
    return run_and_print(parse_args(argv))


def run_and_print(args: argparse.Namespace) -> int:
    """What ``gradclip bench`` does with its parsed options; returns the exit status."""
    from gradclip.bench import _report

    result = run(args, echo=lambda text: print(text + "\n", flush=True))
    print(_report.render(result["rows"]))
    print("\n" + _report.render_targets(result["targets"]))
    if args.quick:
        print("(--quick: a smoke run; smaller workloads, where per-call overhead weighs more, 1 thread unless "
              "--threads, few repetitions; the targets are set for the full sizes)")
    if args.json:
        print(f"\nJSON: {_report.write_json(args.json, result)}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(_report.markdown(result))
        print(f"Markdown: {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
