"""The benchmark suite (``make bench``): gradclip vs torch.nn.utils vs the memory floor, one run.

A thin entry point over :mod:`gradclip.bench` (also ``gradclip bench``). Prints the table and the
issue's targets (met / not met), and writes JSON with ``--json``. Timings are never asserted in tests.

    .venv/bin/python benchmarks/bench_clip.py [--quick] [--reps 11] [--threads 1,2] [--only bf16]
                                              [--no-step] [--device cpu|cuda] [--json PATH]
"""

from __future__ import annotations

import sys

from gradclip.bench import main

if __name__ == "__main__":
    sys.exit(main())
