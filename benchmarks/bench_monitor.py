"""Monitoring overhead per training step on the digits-LSTM task (Clipper norm:1.0 in every row).

Rows: no monitor; Monitor with per_layer False / "on_anomaly" / True and a callback sink (the
monitor's own cost); then each file sink with per_layer "on_anomaly". Variants are interleaved
(one block of steps of each, round after round) and the median ms/step is reported.

    .venv/bin/python benchmarks/bench_monitor.py [--steps 40] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import gradclip.torch as gct
from gradclip.experiments._tasks import get_task
from gradclip.experiments._torch import build_model
from gradclip.monitor import Monitor


def variants(tmp: Path) -> dict[str, dict | None]:
    return {
        "clipper only": None,
        "per_layer=False, callback": {"per_layer": False, "sinks": [lambda r: None]},
        "per_layer=on_anomaly, callback": {"per_layer": "on_anomaly", "sinks": [lambda r: None]},
        "per_layer=True, callback": {"per_layer": True, "sinks": [lambda r: None]},
        "on_anomaly + jsonl": {"sinks": [f"jsonl:{tmp / 'a.jsonl'}"]},
        "on_anomaly + csv": {"sinks": [f"csv:{tmp / 'a.csv'}"]},
        "on_anomaly + tensorboard": {"sinks": [f"tensorboard:{tmp / 'tb'}"]},
        "per_layer=True + jsonl": {"per_layer": True, "sinks": [f"jsonl:{tmp / 'b.jsonl'}"]},
        "per_layer=True + tensorboard": {"per_layer": True, "sinks": [f"tensorboard:{tmp / 'tb2'}"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task("digits-lstm")
    data = task.load()
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    torch.manual_seed(0)
    model = build_model(task)
    opt = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum)
    clipper = gct.Clipper("norm:1.0")
    batches = [(X[i : i + task.batch_size], y[i : i + task.batch_size]) for i in range(0, len(X), task.batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        specs = variants(Path(tmp))
        monitors = {k: (Monitor(**v) if v is not None else None) for k, v in specs.items()}
        times: dict[str, list[float]] = {k: [] for k in specs}
        b = 0
        for _ in range(args.rounds + 1):  # the first round warms up and is dropped
            for name, monitor in monitors.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    xb, yb = batches[b % len(batches)]
                    b += 1
                    opt.zero_grad(set_to_none=True)
                    loss = torch.nn.functional.cross_entropy(model(xb), yb)
                    loss.backward()
                    stats = clipper.step(model.named_parameters())
                    if monitor is not None:
                        monitor.step(model, clip_stats=stats, loss=loss.detach(), lr=task.lr)
                    opt.step()
                times[name].append((time.perf_counter() - start) * 1000 / args.steps)
        for m in monitors.values():
            if m is not None:
                m.close()
    base = statistics.median(times["clipper only"][1:])
    print(f"digits-lstm, batch {task.batch_size}, {args.threads} threads, {args.steps} steps x {args.rounds} rounds")
    print(f"{'variant':34} {'ms/step':>8} {'overhead':>9}")
    for name, ts in times.items():
        med = statistics.median(ts[1:])
        print(f"{name:34} {med:8.3f} {100 * (med - base) / base:8.1f}%")


if __name__ == "__main__":
    main()
