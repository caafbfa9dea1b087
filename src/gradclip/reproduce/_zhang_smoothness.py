"""Local smoothness against gradient norm along the training of an LSTM language model.

Claim tested (Zhang, He, Sra & Jadbabaie 2020, arXiv:1905.11881, Figure 1 and Section 3): along
the training trajectory of an LSTM language model, the local smoothness (the gradient's local
Lipschitz constant) is far from constant and correlates positively with the gradient norm; on a
log-log scatter the points lie along a rising band, which motivates their (L0, L1)-smoothness
``L <= L0 + L1 * ||grad f||``.

Estimator (the paper's, Section 3, along consecutive iterates): at step ``k``

    ``L_k = ||grad f_k(x_{k+1}) - grad f_k(x_k)|| / ||x_{k+1} - x_k||``

with *both* gradients on the same data ``f_k`` (the mini-batch of step ``k``): the gradient at
``x_k`` is the training gradient (before clipping), the weights are stepped, and the gradient at
``x_{k+1}`` is taken again on batch ``k`` before batch ``k + 1`` is drawn. It is plotted against
``||grad f_k(x_k)||``. The authors' code (``why-clipping-accelerates``, ``eval_smooth``) also
evaluates both gradients on the same data, but on the first 10 % of the training set instead of
the mini-batch, and between ``x_k`` and the midpoint of the step; both cost far more than our
budget allows. Their smoothness sums gradients over batches while their norm averages them: a
constant factor, which moves the cloud, not its correlation.

Setting. Their Figure 1 trains AWD-LSTM on PTB words (3 layers, 1150 hidden units, SGD at lr 30,
clip 0.25). Ours: a 2-layer LSTM character model on the Shakespeare text
(:mod:`gradclip.reproduce._shakespeare`), embedding 64, 128 hidden units, untied linear decoder,
encoder and decoder initialised uniform in ±0.1 as in PyTorch's word-language-model example,
plain SGD at lr 20 with the global norm clipped to 0.25 (that example's defaults, which AWD-LSTM
builds on) through ``gradclip.torch.Clipper(gradclip.GlobalNorm(0.25))``; random windows of 64
characters, 16 per batch, a zero initial state per batch (no carried hidden state), no dropout.

Verdict rule (computed): Pearson correlation ``r`` of ``log L_k`` against ``log ||grad f_k(x_k)||``
over all steps: "reproduced" when ``r >= 0.5`` and the fitted log-log slope is positive,
"partly" when ``0.2 <= r < 0.5``, "not reproduced" when ``r < 0.2``.

References:
    Zhang, He, Sra & Jadbabaie 2020, "Why Gradient Clipping Accelerates Training: A Theoretical
    Justification for Adaptivity", ICLR 2020, arXiv:1905.11881 (Figure 1, Section 3).
    Merity, Keskar & Socher 2018, "Regularizing and Optimizing LSTM Language Models", arXiv:1708.02182.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gradclip.reproduce import _plot
from gradclip.reproduce._result import Reproduction

R_REPRODUCED, R_PARTLY = 0.5, 0.2

FULL = {"embed": 64, "hidden": 128, "layers": 2, "context": 64, "batch": 16, "steps": 800, "lr": 20.0,
        "clip": 0.25, "seed": 0}
QUICK = {**FULL, "embed": 32, "hidden": 64, "context": 32, "batch": 8, "steps": 150}


def correlation(grad_norm: np.ndarray, smoothness: np.ndarray) -> dict[str, float]:
    """Pearson ``r`` and least-squares slope of ``log smoothness`` on ``log grad_norm``.

    Steps with a zero or non-finite value are left out (their logarithm is undefined).

    Example:
        >>> import numpy as np
        >>> from gradclip.reproduce._zhang_smoothness import correlation
        >>> g = np.array([1.0, 2.0, 4.0, 8.0])
        >>> c = correlation(g, 3.0 * g ** 0.5)
        >>> round(c["pearson"], 6), round(c["slope"], 6), c["points"]
        (1.0, 0.5, 4)
    """
    g, s = np.asarray(grad_norm, dtype=np.float64), np.asarray(smoothness, dtype=np.float64)
    ok = np.isfinite(g) & np.isfinite(s) & (g > 0) & (s > 0)
    lg, ls = np.log(g[ok]), np.log(s[ok])
    if ok.sum() < 3 or lg.std() == 0 or ls.std() == 0:
        return {"pearson": math.nan, "slope": math.nan, "intercept": math.nan, "points": int(ok.sum())}
    slope, intercept = np.polyfit(lg, ls, 1)
    return {"pearson": float(np.corrcoef(lg, ls)[0, 1]), "slope": float(slope), "intercept": float(intercept),
            "points": int(ok.sum())}


def verdict(pearson: float, slope: float) -> tuple[str, str]:
    """The verdict from the log-log correlation (rule in the module docstring)."""
    said = f"Pearson r of log smoothness vs log gradient norm = {pearson:.3f}, slope {slope:.3f}"
    if math.isfinite(pearson) and pearson >= R_REPRODUCED and slope > 0:
        return "reproduced", f"{said} (>= {R_REPRODUCED}: clearly positive)"
    if math.isfinite(pearson) and pearson >= R_PARTLY:
        return "partly", f"{said} (positive but below {R_REPRODUCED})"
    return "not reproduced", f"{said} (below {R_PARTLY})"


def _model(vocab: int, cfg: dict[str, Any]) -> Any:
    import torch
    from torch import nn

    class CharLSTM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Embedding(vocab, cfg["embed"])
            self.rnn = nn.LSTM(cfg["embed"], cfg["hidden"], cfg["layers"], batch_first=True)
            self.decoder = nn.Linear(cfg["hidden"], vocab)
            nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
            nn.init.zeros_(self.decoder.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.decoder(self.rnn(self.encoder(x))[0])

    return CharLSTM()


def trace(cfg: dict[str, Any], log: Path | None, say: Callable[[str], None] = lambda line: None) -> dict[str, list]:
    """Train and, at every step, measure the gradient norm, the step length and the smoothness."""
    import torch
    import torch.nn.functional as F

    import gradclip
    import gradclip.torch as gct
    from gradclip.reproduce._shakespeare import batches, load

    corpus = load()
    torch.manual_seed(cfg["seed"])
    model = _model(corpus.vocab_size, cfg)
    params = [p for p in model.parameters()]
    opt = torch.optim.SGD(params, lr=cfg["lr"])
    clipper = gct.Clipper(gradclip.GlobalNorm(cfg["clip"]))
    data = batches(corpus.train, cfg["batch"], cfg["context"], seed=cfg["seed"])

    def grad(x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in params]).to(torch.float64)

    def flat() -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in params]).to(torch.float64)

    out: dict[str, list] = {"step": [], "loss": [], "grad_norm": [], "step_size": [], "smoothness": []}
    sinks = [f"jsonl:{log}"] if log is not None else []
    with gradclip.Monitor(sinks=sinks, run=f"lstm sgd lr {cfg['lr']:g} norm:{cfg['clip']:g}", overwrite=True,
                          per_layer=False, framework="torch") as monitor:
        for k in range(cfg["steps"]):
            x, y = (torch.from_numpy(a) for a in next(data))
            loss, g0 = grad(x, y)
            before = flat()
            stats = clipper.step(model)
            monitor.step(model, clip_stats=stats, loss=loss, lr=cfg["lr"])
            opt.step()
            d = float(torch.linalg.vector_norm(flat() - before))
            _, g1 = grad(x, y)  # the gradient at x_{k+1} on the same batch k
            out["step"].append(k)
            out["loss"].append(loss)
            out["grad_norm"].append(float(torch.linalg.vector_norm(g0)))
            out["step_size"].append(d)
            out["smoothness"].append(float(torch.linalg.vector_norm(g1 - g0)) / d if d > 0 else math.nan)
            if not math.isfinite(loss):
                break
            if (k + 1) % max(1, cfg["steps"] // 4) == 0:
                say(f"step {k + 1}/{cfg['steps']}: loss {loss:.3f}, |grad| {out['grad_norm'][-1]:.3g}, "
                    f"L {out['smoothness'][-1]:.3g}")
    return out


def run(quick: bool, out: Path, say: Callable[[str], None]) -> Reproduction:
    """Train, estimate the smoothness at every step, correlate it with the gradient norm, plot."""
    import torch

    cfg = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    log = out / "train.jsonl"
    start = time.perf_counter()
    try:
        tr = trace(cfg, log, say)
    finally:
        torch.set_num_threads(threads)
    say(f"lstm, {len(tr['step'])} steps ({time.perf_counter() - start:.1f} s)")
    csv_path = out / "trace.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(tr))
        writer.writerows(zip(*tr.values()))
    g, s = np.asarray(tr["grad_norm"]), np.asarray(tr["smoothness"])
    corr = correlation(g, s)
    half = len(g) // 2
    late = correlation(g[half:], s[half:])
    label, reason = verdict(corr["pearson"], corr["slope"])
    fin = np.isfinite(s) & (s > 0)
    rows = [
        ["all steps", corr["points"], corr["pearson"], corr["slope"], float(g.min()), float(g.max()),
         float(s[fin].min()), float(s[fin].max())],
        ["second half", late["points"], late["pearson"], late["slope"], float(g[half:].min()), float(g[half:].max()),
         float(s[half:][fin[half:]].min()), float(s[half:][fin[half:]].max())],
    ]
    columns = ["steps used", "points", "Pearson r (log-log)", "slope (log-log)", "min |grad|", "max |grad|",
               "min L", "max L"]
    numbers = {"correlation": corr, "second_half": late, "final_loss": tr["loss"][-1], "first_loss": tr["loss"][0],
               "clip_rate": float(np.mean(g > cfg["clip"]))}
    plots = [_scatter(g, s, corr, out), _traces(tr, out)]
    config = {**cfg, "model": "2-layer LSTM char LM, untied decoder, uniform(±0.1) encoder/decoder init",
              "optimizer": "plain SGD", "clipper": f"gradclip.torch.Clipper(gradclip.GlobalNorm({cfg['clip']}))",
              "estimator": "||g_k(x_{k+1}) - g_k(x_k)|| / ||x_{k+1} - x_k||, both on batch k", "torch_threads": 1}
    return Reproduction(
        name="zhang-smoothness",
        claim=("Along LSTM language-model training the local smoothness correlates positively with the gradient "
               "norm (Zhang, He, Sra & Jadbabaie 2020, arXiv:1905.11881, Figure 1)."),
        verdict=label, reason=reason, columns=columns, rows=rows, numbers=numbers, config=config,
        plots=plots, logs=[log, csv_path])


def _scatter(g: np.ndarray, s: np.ndarray, corr: dict[str, float], out: Path) -> Path:
    fig, ax = _plot.figure(6.4, 4.6)
    steps = np.arange(len(g))
    points = ax.scatter(g, s, c=steps, cmap="viridis", s=6)
    fig.colorbar(points, ax=ax, label="iteration")
    if math.isfinite(corr["slope"]):
        xs = np.geomspace(g[g > 0].min(), g.max(), 50)
        ax.plot(xs, np.exp(corr["intercept"]) * xs ** corr["slope"], color="tab:red", lw=1,
                label=f"fit: slope {corr['slope']:.2f}, r = {corr['pearson']:.2f}")
        ax.legend(fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="gradient norm ||grad f_k(x_k)||",
           ylabel="smoothness ||g_k(x_k+1) - g_k(x_k)|| / ||x_k+1 - x_k||",
           title="local smoothness vs gradient norm (LSTM char LM)")
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FormatStrFormatter("%g"))
        axis.set_minor_formatter(NullFormatter())
    return _plot.save(fig, out, "scatter")


def _traces(tr: dict[str, list], out: Path) -> Path:
    fig, (top, bottom) = _plot.figure(6.4, 5.0, 2, 1)
    top.plot(tr["step"], tr["loss"], lw=0.8)
    top.set(ylabel="training loss", title="training loss, gradient norm and smoothness")
    bottom.plot(tr["step"], tr["grad_norm"], lw=0.8, label="gradient norm")
    bottom.plot(tr["step"], tr["smoothness"], lw=0.8, label="smoothness L_k")
    bottom.set(yscale="log", xlabel="iteration")
    bottom.legend(fontsize=8)
    return _plot.save(fig, out, "trace")
