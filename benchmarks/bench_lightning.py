"""Per-step cost of ``gradclip.lightning.GradientClipping`` against ``Trainer(gradient_clip_val=c)``.

A tiny MLP (2 layers, 64 hidden, batch 32, Adam) on the CPU, ``precision="32"``, the Trainer's
default ``log_every_n_steps=50`` (the callback logs on those steps; ``log_every_n_steps=1`` logs
every step through ``pl_module.log``, whose cost is Lightning's). Variants are
interleaved: each round runs one short ``Trainer.fit`` of every variant, in turn, and the first
round is dropped as warm-up. A step is timed from ``on_train_batch_start`` to ``on_train_batch_end``
(forward, backward, clipping, logging, optimizer step); per variant the table gives the median
over rounds of each fit's median step, the paired difference to the unclipped fit of the same round
(``added``), and the ratio to ``Trainer(gradient_clip_val=c)``. ``hook ms`` is the time inside the
clipping hook alone (the callback's ``on_before_optimizer_step``, logging included, or Lightning's
``configure_gradient_clipping``): the least noisy number on a shared machine.

    .venv/bin/python benchmarks/bench_lightning.py [--steps 60] [--rounds 7] [--threads 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

import gradclip
from gradclip.lightning import GradientClipping

CLIP = 1.0
LIGHTNING = f"Trainer(gradient_clip_val={CLIP})"
NONE = "no clipping"


HOOK: list[float] = []  # seconds in the clipping hook of each step (ours or Lightning's), of the current fit


class TinyNet(pl.LightningModule):
    def __init__(self, width: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        t0 = time.perf_counter()
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        if gradient_clip_val is not None:
            HOOK.append(time.perf_counter() - t0)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y) * 100.0  # large gradients: clipped every step

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class TimedClipping(GradientClipping):
    """GradientClipping with the seconds of its ``on_before_optimizer_step`` recorded."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        t0 = time.perf_counter()
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        HOOK.append(time.perf_counter() - t0)


class StepTimer(pl.Callback):
    """Seconds from ``on_train_batch_start`` to ``on_train_batch_end`` of every step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.times.append(time.perf_counter() - self._t0)


def variants() -> dict[str, dict]:
    """Trainer keyword arguments of each variant (callbacks made fresh for every fit)."""
    return {
        NONE: {},
        LIGHTNING: {"gradient_clip_val": CLIP},
        "GradientClipping(GlobalNorm(1.0))": {"callbacks": lambda: [TimedClipping(gradclip.GlobalNorm(CLIP))]},
        "GradientClipping(GlobalNorm(1.0), log_every_n_steps=1)": {
            "callbacks": lambda: [TimedClipping(gradclip.GlobalNorm(CLIP), log_every_n_steps=1)]},
        "GradientClipping(GlobalNorm(1.0), log=False)": {
            "callbacks": lambda: [TimedClipping(gradclip.GlobalNorm(CLIP), log=False)]},
        "GradientClipping('zclip')": {"callbacks": lambda: [TimedClipping("zclip")]},
        "GradientClipping(norm, nonfinite='skip')": {
            "callbacks": lambda: [TimedClipping(gradclip.GlobalNorm(CLIP), nonfinite="skip")]},
    }


def fit_once(kw: dict, loader, steps: int) -> tuple[float, float]:
    """Median step time and median clipping-hook time (s; NaN without clipping) of one fit of ``steps`` steps."""
    timer = StepTimer()
    HOOK.clear()
    extra = {k: (v() if callable(v) else v) for k, v in kw.items()}
    callbacks = extra.pop("callbacks", []) + [timer]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **extra)
    torch.manual_seed(0)
    trainer.fit(TinyNet(), loader)
    hook = statistics.median(HOOK[5:]) if HOOK else float("nan")
    return statistics.median(timer.times[5:]), hook  # the first steps build optimizer state


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.steps * 32, 32, generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=32)
    table = variants()
    runs: dict[str, list[float]] = {name: [] for name in table}
    hooks: dict[str, list[float]] = {name: [] for name in table}
    for r in range(args.rounds + 1):
        for name, kw in table.items():
            t, h = fit_once(kw, loader, args.steps)
            if r:  # round 0 is warm-up
                runs[name].append(t)
                hooks[name].append(h)
    base, base_hook = statistics.median(runs[LIGHTNING]), statistics.median(hooks[LIGHTNING])
    rows = []
    for name, ts in runs.items():
        added = statistics.median(t - n for t, n in zip(ts, runs[NONE]))
        hook = statistics.median(hooks[name])
        rows.append({"variant": name, "ms_per_step": 1e3 * statistics.median(ts), "added_ms": 1e3 * added,
                     "ratio_to_lightning": statistics.median(ts) / base, "hook_ms": 1e3 * hook,
                     "hook_ratio_to_lightning": hook / base_hook})
    print(f"{'variant':52s} {'ms/step':>8s} {'added ms':>9s} {'vs Lightning':>12s} {'hook ms':>8s} {'hook vs L.':>10s}")
    for row in rows:
        print(f"{row['variant']:52s} {row['ms_per_step']:8.3f} {row['added_ms']:9.3f} {row['ratio_to_lightning']:11.3f}x"
              f" {row['hook_ms']:8.3f} {row['hook_ratio_to_lightning']:9.2f}x")
    result = {"rows": rows, "steps": args.steps, "rounds": args.rounds, "threads": args.threads,
              "torch": torch.__version__, "lightning": pl.__version__, "python": platform.python_version()}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
