"""Loss spikes of a small character-level transformer under AdamW, with and without clipping.

Claim tested (the practice behind ZClip, Kumar et al. 2025, Section 1 and their pre-training
runs; also OLMo 2's spike skipping and AdaGC): at a learning rate high enough for AdamW's loss
to spike, clipping the gradients, fixed or adaptive, removes most loss spikes without making the
final validation loss worse.

Setting (ours, not the paper's: they pre-train 1B-parameter LLaMA models on 50B tokens; we train a
~0.1M-parameter model for a few hundred steps on one CPU core). A causal **pre-LN** transformer
built by hand from ``torch.nn`` (token + learned position embeddings; per block
``x + Attn(LN(x))`` then ``x + MLP(LN(x))``, 4 heads, MLP 4x with GELU; a final LN and an untied
linear head), trained on the Shakespeare text (:mod:`gradclip.reproduce._shakespeare`) with
AdamW (betas 0.9/0.95, weight decay 0.1, constant learning rate, no warm-up) on random windows.
Every method of a seed sees the same initial weights and the same batches. The learning rate
was picked once, by a short unclipped probe (:data:`LR`), and not tuned after.

Methods: ``none``, ``norm:1.0``, ``zclip``, ``zclip:z=2.0``, ``spikeguard+norm:1.0``, ``adagc``,
``autoclip:p=10`` (gradclip spec strings; ZClip, SpikeGuard and AutoClip keep their default cap
``max_norm=1.0``). A step that SpikeGuard skips does not step the optimizer.

Definitions, computed here:

- **Loss spike**: a step ``t >= 10`` whose training-batch loss exceeds the median of the previous
  ``SPIKE_WINDOW`` = 50 losses (fewer at the start, at least 10) by more than ``SPIKE_REL`` = 10 %
  of that median. Each such step counts (a spike lasting 3 steps counts 3).
- **Gradient-norm spike**: the Monitor's flag (:mod:`gradclip.monitor._spike`: pre-clip norm more
  than 4 standard deviations above the mean of the previous 50), reported beside the loss spikes.
- **Clip rate**: the fraction of steps with ``ClipStats.clipped`` (the cap included). For ZClip
  also the **z-rate**: the fraction of post-warm-up steps whose threshold the z-score rule set
  (``threshold < max_norm``), the number the ZClip paper's clip rates speak of.
- **Final validation loss**: mean cross-entropy (nats per character) on a fixed set of windows of
  the held-out tail of the text, after the last step.

Verdict rule (computed in :func:`verdict`): with ``S(m)`` the loss spikes of method ``m`` summed
over seeds and ``V(m)`` its median final validation loss, a clipping method *helps* when
``S(m) < S(none)`` and ``V(m) <= V(none) + VAL_TOLERANCE`` (0.02 nats). "reproduced": ``none``
spiked and every clipping method helps; "partly": ``none`` spiked and at least half help;
"not reproduced": otherwise (including a setting in which ``none`` never spiked).

References:
    Kumar et al. 2025, "ZClip: Adaptive Spike Mitigation for LLM Pre-Training", arXiv:2504.02507.
    Wang et al. 2025, "AdaGC: Improving Training Stability for Large Language Model Pretraining",
    arXiv:2502.11034. OLMo Team 2024, "2 OLMo 2 Furious", arXiv:2501.00656 (spike skipping).
    Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source Separation Networks".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gradclip.reproduce import _plot
from gradclip.reproduce._result import Reproduction

METHODS = ("none", "norm:1.0", "zclip", "zclip:z=2.0", "spikeguard+norm:1.0", "adagc", "autoclip:p=10")
QUICK_METHODS = ("none", "norm:1.0", "zclip", "adagc")
SPIKE_WINDOW, SPIKE_REL, SPIKE_MIN_HISTORY = 50, 0.10, 10
VAL_TOLERANCE = 0.02
#: AdamW learning rate, chosen once by a probe: ``none``, seed 0, this model, 300 steps at lr 0.003,
#: 0.01, 0.03, 0.1 and 0.3; the smallest lr whose run had a loss spike (0.3: one; the others none).
LR = 0.3

FULL = {"d_model": 64, "layers": 2, "heads": 4, "context": 64, "batch": 16, "steps": 300, "eval_every": 50,
        "eval_windows": 128, "lr": LR, "betas": (0.9, 0.95), "weight_decay": 0.1, "seeds": (0, 1, 2),
        "methods": METHODS}
QUICK = {**FULL, "d_model": 32, "context": 32, "batch": 8, "steps": 150, "eval_every": 50, "eval_windows": 32,
         "seeds": (0,), "methods": QUICK_METHODS}


def loss_spikes(losses: np.ndarray) -> np.ndarray:
    """Boolean flags of the loss spikes (definition in the module docstring).

    Example:
        >>> import numpy as np
        >>> from gradclip.reproduce._charlm_spikes import loss_spikes
        >>> x = np.full(30, 2.0); x[20] = 2.5; x[25] = 2.1
        >>> np.flatnonzero(loss_spikes(x)).tolist()
        [20]
    """
    losses = np.asarray(losses, dtype=np.float64)
    flags = np.zeros(len(losses), dtype=bool)
    for t in range(SPIKE_MIN_HISTORY, len(losses)):
        base = float(np.median(losses[max(0, t - SPIKE_WINDOW):t]))
        flags[t] = losses[t] > base * (1.0 + SPIKE_REL)
    return flags


def _model(vocab: int, cfg: dict[str, Any]) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    d, heads = cfg["d_model"], cfg["heads"]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ln2, self.fc, self.out = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(a)
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class CharTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(cfg["context"], d)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg["layers"]))
            self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
            for block in self.blocks:
                h = block(h)
            return self.head(self.ln(h))

    return CharTransformer()


def train_one(method: str, seed: int, cfg: dict[str, Any], log: Path | None) -> dict[str, Any]:
    """Train one run; return its per-step losses, clip flags, thresholds and validation curve."""
    import torch
    import torch.nn.functional as F

    import gradclip.torch as gct
    from gradclip import Monitor, parse_policy
    from gradclip.reproduce._shakespeare import batches, load, windows

    corpus = load()
    torch.manual_seed(seed)
    model = _model(corpus.vocab_size, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=cfg["betas"], weight_decay=cfg["weight_decay"])
    clipper = gct.Clipper(parse_policy(method))
    vx, vy = (torch.from_numpy(a) for a in windows(corpus.val, cfg["eval_windows"], cfg["context"], seed=10_000))
    data = batches(corpus.train, cfg["batch"], cfg["context"], seed=seed)

    def val_loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(vx).flatten(0, 1), vy.flatten()))

    sinks = [f"jsonl:{log}"] if log is not None else []
    out: dict[str, Any] = {"loss": [], "clipped": [], "threshold": [], "norm": [], "grad_spike": [],
                           "val": [(0, val_loss())], "skipped": 0, "diverged": False}
    with Monitor(sinks=sinks, run=f"{method} seed {seed}", overwrite=True, per_layer=False,
                 framework="torch") as monitor:
        for step in range(cfg["steps"]):
            x, y = (torch.from_numpy(a) for a in next(data))
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            stats = clipper.step(model)
            rec = monitor.step(model, clip_stats=stats, loss=loss.detach(), lr=cfg["lr"]) or {}
            value = loss.item()
            out["loss"].append(value)
            out["norm"].append(float(stats.norm))
            out["clipped"].append(bool(stats.clipped))
            out["threshold"].append(_scalar_threshold(stats.threshold))
            out["grad_spike"].append(bool(rec.get("spike")))
            if not math.isfinite(value) or bool(stats.nonfinite):
                out["diverged"] = True
                break
            if bool(stats.skipped):
                out["skipped"] += 1
            else:
                opt.step()
            if (step + 1) % cfg["eval_every"] == 0 or step + 1 == cfg["steps"]:
                out["val"].append((step + 1, val_loss()))
    return out


def summarize(run: dict[str, Any], method: str) -> dict[str, Any]:
    """The numbers of one run: final validation loss, spikes, clip rates."""
    from gradclip import parse_policy

    loss = np.asarray(run["loss"])
    policy = parse_policy(method)
    row = {"final_val": run["val"][-1][1] if not run["diverged"] else math.inf,
           "loss_spikes": int(loss_spikes(loss).sum()), "grad_spikes": int(sum(run["grad_spike"])),
           "clip_rate": float(np.mean(run["clipped"])), "skipped": run["skipped"], "diverged": run["diverged"],
           "steps": len(loss)}
    if type(policy).__name__ == "ZClip":
        after = np.asarray(run["threshold"])[policy.warmup_steps:]
        row["z_rate"] = float(np.mean(after < policy.max_norm)) if len(after) else 0.0
    return row


def verdict(per_method: dict[str, dict[str, Any]]) -> tuple[str, str]:
    """The verdict from each method's summed loss spikes and median final validation loss."""
    base = per_method["none"]
    others = [m for m in per_method if m != "none"]
    helps = [m for m in others if per_method[m]["loss_spikes"] < base["loss_spikes"]
             and per_method[m]["median_final_val"] <= base["median_final_val"] + VAL_TOLERANCE]
    said = (f"none: {base['loss_spikes']} loss spikes, median final val {base['median_final_val']:.3f}; "
            f"{len(helps)}/{len(others)} clipping methods have fewer spikes and a final val loss within "
            f"{VAL_TOLERANCE} nats of it ({', '.join(helps) or 'none'})")
    if base["loss_spikes"] == 0:
        return "not reproduced", "no loss spike without clipping in this setting; " + said
    if len(helps) == len(others):
        return "reproduced", said
    if 2 * len(helps) >= len(others):
        return "partly", said
    return "not reproduced", said


def run(quick: bool, out: Path, say: Callable[[str], None]) -> Reproduction:
    """Train every method over the seeds, then count, compare, plot."""
    import torch

    cfg = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    logs_dir = out / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in cfg["methods"]}
    logs: list[Path] = []
    try:
        for seed in cfg["seeds"]:
            for method in cfg["methods"]:
                start = time.perf_counter()
                log = logs_dir / f"{_slug(method)}-seed{seed}.jsonl"
                result = train_one(method, seed, cfg, log)
                result["summary"] = summarize(result, method)
                runs[method].append(result)
                logs.append(log)
                s = result["summary"]
                say(f"{method} seed {seed}: val {s['final_val']:.3f}, {s['loss_spikes']} loss spikes, clip rate "
                    f"{s['clip_rate']:.2f} ({time.perf_counter() - start:.1f} s)")
    finally:
        torch.set_num_threads(threads)
    per_method = {m: _aggregate([r["summary"] for r in rs]) for m, rs in runs.items()}
    label, reason = verdict(per_method)
    columns = ["method", "median final val loss", "loss spikes (sum)", "grad-norm spikes (sum)", "clip rate",
               "ZClip z-rate", "skipped steps", "diverged runs"]
    rows = [[m, a["median_final_val"], a["loss_spikes"], a["grad_spikes"], a["clip_rate"], a.get("z_rate"),
             a["skipped"], a["diverged"]] for m, a in per_method.items()]
    plots = [_plot_curves(runs, cfg, out), _plot_bars(per_method, out)]
    numbers = {"per_method": per_method,
               "per_run": {m: [r["summary"] for r in rs] for m, rs in runs.items()},
               "val_curves": {m: [r["val"] for r in rs] for m, rs in runs.items()}}
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    config.update(model="causal pre-LN transformer, learned positions, MLP 4x GELU, untied head",
                  optimizer="AdamW, constant lr, no warm-up", torch_threads=1,
                  spike_definition=f"loss > (1 + {SPIKE_REL}) x median of the previous {SPIKE_WINDOW} losses "
                                   f"(>= {SPIKE_MIN_HISTORY} of them)")
    return Reproduction(
        name="charlm-spikes",
        claim=("At a learning rate that makes AdamW's loss spike, gradient clipping (fixed norm, ZClip, "
               "SpikeGuard, AdaGC, AutoClip) removes loss spikes without a worse final validation loss "
               "(Kumar et al. 2025, arXiv:2504.02507, the practice their pre-training runs test)."),
        verdict=label, reason=reason, columns=columns, rows=rows, numbers=numbers, config=config,
        plots=plots, logs=logs)


def _scalar_threshold(threshold: Any) -> float:
    """A global threshold as a float; ``nan`` for per-tensor thresholds (AdaGC), ``inf`` for none."""
    if threshold is None:
        return math.inf
    import torch

    value = torch.as_tensor(threshold)
    return float(value) if value.numel() == 1 else math.nan


def _slug(method: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in method)


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    agg = {"median_final_val": float(np.median([r["final_val"] for r in rows])),
           "loss_spikes": sum(r["loss_spikes"] for r in rows), "grad_spikes": sum(r["grad_spikes"] for r in rows),
           "clip_rate": float(np.mean([r["clip_rate"] for r in rows])), "skipped": sum(r["skipped"] for r in rows),
           "diverged": sum(r["diverged"] for r in rows)}
    if "z_rate" in rows[0]:
        agg["z_rate"] = float(np.mean([r["z_rate"] for r in rows]))
    return agg


def _median_curve(curves: list[list[float]]) -> np.ndarray:
    n = min(len(c) for c in curves)
    return np.median(np.asarray([c[:n] for c in curves], dtype=np.float64), axis=0)


def _plot_curves(runs: dict[str, list[dict[str, Any]]], cfg: dict[str, Any], out: Path) -> Path:
    fig, (left, right) = _plot.figure(11, 4, 1, 2)
    k = 10
    for method, rs in runs.items():
        train = _median_curve([r["loss"] for r in rs])
        smooth = np.convolve(train, np.ones(k) / k, mode="valid") if len(train) >= k else train
        left.plot(np.arange(len(smooth)) + (len(train) - len(smooth)), smooth, label=method, lw=1)
        val = _median_curve([[v for _, v in r["val"]] for r in rs])
        right.plot([s for s, _ in rs[0]["val"]][:len(val)], val, marker="o", ms=3, label=method, lw=1)
    left.set(xlabel="step", ylabel="training loss (nats/char)",
             title=f"training loss, median over seeds, running mean of {k}")
    right.set(xlabel="step", ylabel="validation loss (nats/char)", title="validation loss, median over seeds")
    right.legend(fontsize=7)
    return _plot.save(fig, out, "curves")


def _plot_bars(per_method: dict[str, dict[str, Any]], out: Path) -> Path:
    fig, (left, right) = _plot.figure(11, 3.8, 1, 2)
    names = list(per_method)
    xs = np.arange(len(names))
    left.bar(xs, [per_method[m]["clip_rate"] for m in names], color="tab:blue", label="clipped (cap included)")
    left.bar(xs, [per_method[m].get("z_rate", 0.0) for m in names], color="tab:orange", width=0.4,
             label="ZClip z-rule set the threshold")
    left.set(ylabel="fraction of steps", title="clip rate", ylim=(0, 1.05))
    left.legend(fontsize=7)
    right.bar(xs, [per_method[m]["loss_spikes"] for m in names], color="tab:red")
    right.set(ylabel="loss spikes (sum over seeds)", title="loss spikes",
              ylim=(0, max(1, *(per_method[m]["loss_spikes"] for m in names)) * 1.1))
    for ax in (left, right):
        ax.set_xticks(xs, names, rotation=30, ha="right", fontsize=7)
    return _plot.save(fig, out, "clip-rates")
