"""Monitoring overhead per training step on the digits-LSTM task (Clipper norm:1.0 in every row).

Rows: the Clipper alone; Monitor with per_layer False / "on_anomaly" / True and a callback sink
(the monitor's own cost), each eager (``flush_every=1``, the CPU default: ``step`` returns the
record) and batched (``flush_every=20``: values kept as tensors, read in one transfer per 20
steps); then the file sinks with the default ``per_layer="on_anomaly"``. Variants are interleaved
(one block of steps of each, round after round, the first round dropped as warm-up).

Two measures per row. ``ms/step`` is the median over rounds of the whole training step, with
``added``: the median over rounds of the paired difference to the Clipper-alone block of the same
round, and its 25th-75th percentile spread. ``monitor us`` is the monitor's own cost: the CPU
time of the calling thread (``time.thread_time_ns``) around every ``Monitor.step`` call (flushes
included, and the ``flush()`` at the end of each block), averaged over blocks of 20 steps; the
median over blocks is reported with its 25th-75th percentile spread. On a shared, overloaded
machine the second is the one to read: CPU time does not count the time the process waits for a
core, while a whole-step difference of 0.05 ms drowns in the preemptions of a 2-20 ms step.

    .venv/bin/python benchmarks/bench_monitor.py [--steps 40] [--rounds 10] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import gradclip.torch as gct
from gradclip.experiments._tasks import get_task
from gradclip.experiments._torch import build_model
from gradclip.monitor import Monitor

BASE = "clipper only"
BLOCK = 20  # steps per block of the monitor's own cost (one flush in each with flush_every=20)


def variants(tmp: Path, sinks: bool) -> dict[str, dict | None]:
    def cb():
        return [lambda record: None]

    out: dict[str, dict | None] = {BASE: None}
    for flush in (1, 20):
        for per_layer in (False, "on_anomaly", True):
            out[f"per_layer={per_layer}, callback, flush {flush}"] = {"per_layer": per_layer, "sinks": cb(),
                                                                     "flush_every": flush}
    if sinks:
        out.update({
            "on_anomaly + jsonl": {"sinks": [f"jsonl:{tmp / 'a.jsonl'}"]},
            "on_anomaly + csv": {"sinks": [f"csv:{tmp / 'a.csv'}"]},
            "on_anomaly + tensorboard": {"sinks": [f"tensorboard:{tmp / 'tb'}"]},
            "per_layer=True + jsonl": {"per_layer": True, "sinks": [f"jsonl:{tmp / 'b.jsonl'}"]},
            "per_layer=True + tensorboard": {"per_layer": True, "sinks": [f"tensorboard:{tmp / 'tb2'}"]},
        })
    return out


def _quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def run(steps: int, rounds: int, threads: int, sinks: bool) -> dict:
    torch.set_num_threads(threads)
    task = get_task("digits-lstm")
    data = task.load()
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    torch.manual_seed(0)
    model = build_model(task)
    opt = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum)
    clipper = gct.Clipper("norm:1.0")
    bs = task.batch_size
    batches = [(X[i : i + bs], y[i : i + bs]) for i in range(0, len(X) - bs + 1, bs)]
    with tempfile.TemporaryDirectory() as tmp:
        specs = variants(Path(tmp), sinks)
        monitors = {k: (Monitor(**v) if v is not None else None) for k, v in specs.items()}
        step_ms: dict[str, list[float]] = {k: [] for k in specs}
        monitor_us: dict[str, list[float]] = {k: [] for k in specs}  # per-step CPU us, each 20-step block
        b = 0
        for r in range(rounds + 1):  # the first round warms up and is dropped
            for name, monitor in monitors.items():
                own: list[int] = []
                start = time.perf_counter_ns()
                for _ in range(steps):
                    xb, yb = batches[b % len(batches)]
                    b += 1
                    opt.zero_grad(set_to_none=True)
                    loss = torch.nn.functional.cross_entropy(model(xb), yb)
                    loss.backward()
                    stats = clipper.step(model.named_parameters())
                    if monitor is not None:
                        t = time.thread_time_ns()
                        monitor.step(model, clip_stats=stats, loss=loss.detach(), lr=task.lr)
                        own.append(time.thread_time_ns() - t)
                    opt.step()
                if monitor is not None:  # what is still buffered is part of this block's cost
                    t = time.thread_time_ns()
                    monitor.flush()
                    own[-1] += time.thread_time_ns() - t
                if r:
                    step_ms[name].append((time.perf_counter_ns() - start) / 1e6 / steps)
                    for i in range(0, len(own) - BLOCK + 1, BLOCK):
                        monitor_us[name].append(sum(own[i : i + BLOCK]) / BLOCK / 1e3)
        for m in monitors.values():
            if m is not None:
                m.close()
    rows = []
    for name in specs:
        added = [a - b for a, b in zip(step_ms[name], step_ms[BASE])]
        lo, hi = _quartiles(added)
        own = monitor_us[name] or [0.0]
        mlo, mhi = _quartiles(own)
        rows.append({"variant": name, "ms_per_step": statistics.median(step_ms[name]),
                     "added_ms": statistics.median(added), "added_q25": lo, "added_q75": hi,
                     "monitor_us": statistics.median(own), "monitor_us_q25": mlo, "monitor_us_q75": mhi,
                     "blocks": len(monitor_us[name])})
    return {"task": "digits-lstm", "batch_size": bs, "threads": threads, "steps": steps, "rounds": rounds,
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40, help="steps per block (default 40)")
    ap.add_argument("--rounds", type=int, default=10, help="measured rounds after one warm-up round (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--no-sinks", action="store_true", help="only the callback rows (no file sinks)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args()
    res = run(args.steps, args.rounds, args.threads, not args.no_sinks)
    base = res["rows"][0]["ms_per_step"]
    print(f"digits-lstm, batch {res['batch_size']}, {res['threads']} threads, {res['steps']} steps x "
          f"{res['rounds']} rounds (interleaved), torch {res['torch']}")
    print(f"{'variant':42} {'ms/step':>8} {'added':>7} {'(q25..q75)':>16} {'%':>6} {'monitor us':>11} {'(q25..q75)':>14}")
    for row in res["rows"]:
        print(f"{row['variant']:42} {row['ms_per_step']:8.3f} {row['added_ms']:7.3f} "
              f"{'(' + format(row['added_q25'], '.3f') + '..' + format(row['added_q75'], '.3f') + ')':>16} "
              f"{100 * row['added_ms'] / base:5.1f}% {row['monitor_us']:11.1f} "
              f"{'(' + format(row['monitor_us_q25'], '.1f') + '..' + format(row['monitor_us_q75'], '.1f') + ')':>14}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
