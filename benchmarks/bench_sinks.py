"""What each sink adds per training step, over a callback sink, on the digits-LSTM task.

Two measurements. **Replay** (always): the records of ``--records`` digits-LSTM training steps
(Monitor per_layer="on_anomaly") are written to each sink, sinks interleaved round after round,
and the time of ``write`` for every record plus the final ``close`` (which sends what a batching
sink still holds) is divided by the number of records: the sink's own cost per step, wall clock
and process CPU time (CPU counts the sink's background threads; W&B's service process is not
counted). **Training loop** (``--loop``): every variant is a Monitor(per_layer="on_anomaly") on the same model and Clipper (norm:1.0); the
baseline's only sink is a callback that does nothing, so (variant - baseline) is the sink's own
cost. Variants are interleaved (a block of ``--steps`` steps of each, round after round, the first
round dropped as warm-up); the table gives the median and the mean of the per-round ms/step.
Sinks that send in batches (tensorboard every 200 records, mlflow and neptune every 100) pay for a
batch in one step of a round: keep ``--steps`` at least as large as the batch, or read the mean.
"tensorboardX add_scalar" is the TensorBoard sink as it was before batching (one
``SummaryWriter.add_scalar`` per value), kept here for the comparison.

Trackers run locally: MLflow in a file store, W&B with WANDB_MODE=offline, Neptune with
mode offline, all under a temporary directory (nothing is uploaded). Missing packages are skipped.

    .venv/bin/python benchmarks/bench_sinks.py [--records 1000] [--rounds 5] [--only tensorboard]
    .venv/bin/python benchmarks/bench_sinks.py --loop [--steps 200] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import gradclip.torch as gct
from gradclip.experiments._tasks import get_task
from gradclip.experiments._torch import build_model
from gradclip.monitor import Monitor, scalars


class LegacyTensorBoard:
    """The TensorBoard sink before batching: one tensorboardX ``add_scalar`` call per value."""

    def __init__(self, logdir: str) -> None:
        import tensorboardX

        self._writer = tensorboardX.SummaryWriter(logdir, flush_secs=10)

    def write(self, record: dict[str, Any]) -> None:
        step = record["step"]
        for name, value in scalars(record).items():
            self._writer.add_scalar(name, value, step)
        layers = record.get("layers")
        if layers:
            import numpy as np

            norms = [(d or {}).get("grad_norm") for d in layers.values()]
            finite = [v for v in norms if isinstance(v, (int, float)) and math.isfinite(v)]
            self._writer.add_scalar("grad/norm_layers_nonfinite", float(len(norms) - len(finite)), step)
            if finite:
                self._writer.add_histogram("grad/norm_layers", np.asarray(finite, dtype=np.float64), step)

    def close(self) -> None:
        self._writer.close()


def variants() -> dict[str, Callable[[Path], list[Any]]]:
    """Variant name -> a function of a fresh directory that returns the Monitor's sinks."""
    has = {m: importlib.util.find_spec(m) is not None for m in ("tensorboardX", "mlflow", "wandb", "neptune")}
    out: dict[str, Callable[[Path], list[Any]]] = {
        "callback (baseline)": lambda d: [lambda r: None],
        "jsonl": lambda d: [f"jsonl:{d / 'a.jsonl'}"],
        "csv": lambda d: [f"csv:{d / 'a.csv'}"],
    }
    if has["tensorboardX"]:
        out["tensorboard"] = lambda d: [f"tensorboard:{d / 'tb'}"]
        out["tensorboardX add_scalar (before)"] = lambda d: [LegacyTensorBoard(str(d / "tb_legacy"))]
    if has["mlflow"]:
        out["mlflow (file store)"] = lambda d: ["mlflow"]
    if has["wandb"]:
        out["wandb (offline)"] = lambda d: ["wandb"]
    if has["neptune"]:
        out["neptune (offline)"] = lambda d: ["neptune"]
    return out


def _setup(args: argparse.Namespace) -> tuple[Any, ...]:
    torch.set_num_threads(args.threads)
    task = get_task("digits-lstm")
    data = task.load()
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    torch.manual_seed(0)
    model = build_model(task)
    opt = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum)
    batches = [(X[i : i + task.batch_size], y[i : i + task.batch_size]) for i in range(0, len(X), task.batch_size)]
    return task, model, opt, gct.Clipper("norm:1.0"), batches


def _train(task: Any, model: Any, opt: Any, clipper: Any, batches: list[Any], monitor: Monitor, steps: int, b: int) -> int:
    for _ in range(steps):
        xb, yb = batches[b % len(batches)]
        b += 1
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        stats = clipper.step(model.named_parameters())
        monitor.step(model, clip_stats=stats, loss=loss.detach(), lr=task.lr)
        opt.step()
    return b


def replay(args: argparse.Namespace, tmp: Path) -> None:
    from gradclip.monitor._sinks import open_sink

    task, model, opt, clipper, batches = _setup(args)
    records: list[dict[str, Any]] = []
    with Monitor(sinks=[records.append], per_layer="on_anomaly") as monitor:
        _train(task, model, opt, clipper, batches, monitor, args.records, 0)
    specs = variants()
    if args.only is not None:
        specs = {k: v for k, v in specs.items() if any(k.startswith(o) for o in args.only)}
    wall: dict[str, list[float]] = {k: [] for k in specs}
    cpu: dict[str, list[float]] = {k: [] for k in specs}
    for r in range(args.rounds + 1):  # the first round warms up and is dropped
        for name in specs:
            sink = open_sink(specs[name](tmp / f"r{r}")[0])
            w0, c0 = time.perf_counter(), time.process_time()
            for record in records:
                sink.write(record)
            sink.close()
            w1, c1 = time.perf_counter(), time.process_time()
            wall[name].append((w1 - w0) * 1000 / len(records))
            cpu[name].append((c1 - c0) * 1000 / len(records))
    layered = sum(1 for rec in records if rec.get("layers"))
    print(f"replay: {len(records)} digits-lstm records ({layered} with layers), per_layer='on_anomaly', "
          f"{args.rounds} rounds (interleaved); ms per record, write + close, median over rounds")
    print(f"{'sink':34} {'wall ms':>9} {'cpu ms':>9}")
    for name in specs:
        print(f"{name:34} {statistics.median(wall[name][1:]):9.4f} {statistics.median(cpu[name][1:]):9.4f}")


def loop(args: argparse.Namespace, tmp: Path) -> None:
    task, model, opt, clipper, batches = _setup(args)
    specs = variants()
    if args.only is not None:
        specs = {k: v for k, v in specs.items() if k.startswith("callback") or any(k.startswith(o) for o in args.only)}
    monitors = {k: Monitor(sinks=v(tmp / "loop"), per_layer="on_anomaly", run=k.split()[0]) for k, v in specs.items()}
    times: dict[str, list[float]] = {k: [] for k in specs}
    b = 0
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for name, monitor in monitors.items():
            start = time.perf_counter()
            b = _train(task, model, opt, clipper, batches, monitor, args.steps, b)
            times[name].append((time.perf_counter() - start) * 1000 / args.steps)
    closing = {}
    for name, monitor in monitors.items():
        start = time.perf_counter()
        monitor.close()
        closing[name] = (time.perf_counter() - start) * 1000
    base = times["callback (baseline)"][1:]
    print(f"training loop: digits-lstm, batch {task.batch_size}, {args.threads} threads, per_layer='on_anomaly', "
          f"{args.steps} steps x {args.rounds} rounds (interleaved)")
    print(f"{'sink':34} {'ms/step':>8} {'added (median)':>15} {'added (mean)':>13} {'close ms':>9}")
    for name, ts in times.items():
        med = statistics.median(ts[1:])
        added = [t - b for t, b in zip(ts[1:], base)]
        print(f"{name:34} {med:8.3f} {statistics.median(added):15.3f} {statistics.fmean(added):13.3f} "
              f"{closing[name]:9.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000, help="replay: records written to each sink per round")
    ap.add_argument("--loop", action="store_true", help="also time the training loop with each sink")
    ap.add_argument("--steps", type=int, default=200, help="training loop: steps per variant per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=None, help="variant names (prefixes) to run besides the baseline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        os.environ.update(MLFLOW_ALLOW_FILE_STORE="true", MLFLOW_TRACKING_URI=(tmp / "mlruns").as_uri(),
                          WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_SILENT="true", NEPTUNE_MODE="offline")
        os.chdir(tmp)  # neptune's offline runs go to ./.neptune
        try:
            replay(args, tmp)
            if args.loop:
                loop(args, tmp)
        finally:
            os.chdir("/")


if __name__ == "__main__":
    main()
