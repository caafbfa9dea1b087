"""The PyTorch runner of ``gradclip compare``: one training run of one task with one method."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from gradclip._spec import parse_policy
from gradclip.experiments._results import RunResult, finish, finite_or_none
from gradclip.experiments._tasks import Data, Task
from gradclip.torch import Clipper


class _RowLSTM(torch.nn.Module):
    """LSTM over the rows of an image, then a linear classifier on the last hidden state."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(features, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def build_model(task: Task) -> torch.nn.Module:
    """The task's model: an MLP (ReLU, Xavier-uniform weights, biases 0.01) or the row LSTM."""
    if task.model == "lstm":
        return _RowLSTM(*task.sizes)
    layers: list[torch.nn.Module] = []
    widths = task.sizes
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        linear = torch.nn.Linear(a, b)
        torch.nn.init.xavier_uniform_(linear.weight)
        torch.nn.init.constant_(linear.bias, 0.01)
        layers.append(linear)
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def run(task: Task, method: str, seed: int, data: Data, log_path: Path | None = None, *, shard=None) -> RunResult:
    """Train ``task``'s model with clipping ``method`` and report how it went.

    Args:
        task: The task (data, model and optimizer settings).
        method: A method spec string (``"none"``, ``"norm:1.0"``, ...).
        seed: Seeds the initial weights and the batch order.
        data: The task's arrays from ``task.load()`` (loaded once for all runs).
        log_path: When given, one JSON line per step is written there.
        shard: Set by the DDP runner (:class:`gradclip.experiments._ddp.Shard`): this rank's part
            of every batch; ``None`` (default) trains in one process.

    Returns:
        The :class:`RunResult`. A run stops at the first non-finite loss or gradient.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    model = build_model(task)
    net = model if shard is None else shard.wrap(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum)
    clipper = Clipper(parse_policy(method))
    order = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.functional.mse_loss if task.loss == "mse" else torch.nn.functional.cross_entropy
    with torch.no_grad():
        initial = float(loss_fn(model(X), y))
    log = open(log_path, "w") if log_path else None
    step, clipped, max_norm, first_bad = 0, 0, None, None
    try:
        for epoch in range(task.epochs):
            perm = torch.randperm(len(X), generator=order)
            for i in range(0, len(X), task.batch_size):
                idx = perm[i : i + task.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(X[idx]), y[idx]) if shard is None else shard.loss(net, loss_fn, X[idx], y[idx])
                loss.backward()
                loss_value = loss.item() if shard is None else shard.value(loss)
                stats = clipper.step(model.named_parameters())
                rec = stats.to_dict()
                if log:
                    head = {"run": f"{method} seed {seed}", "step": step, "epoch": epoch, "loss": finite_or_none(loss_value)}
                    log.write(json.dumps({**head, **_record(rec)}) + "\n")
                if not math.isfinite(loss_value) or rec["nonfinite"]:
                    first_bad = step
                    break
                max_norm = rec["norm"] if max_norm is None else max(max_norm, rec["norm"])
                clipped += rec["clipped"]
                optimizer.step()
                step += 1
            if first_bad is not None:
                break
    finally:
        if log:
            log.close()
    with torch.no_grad():
        final = float(loss_fn(model(X), y))
        accuracy = None
        if task.loss == "cross_entropy" and data.X_test is not None:
            predicted = model(torch.from_numpy(data.X_test)).argmax(dim=1)
            accuracy = float((predicted == torch.from_numpy(data.y_test)).double().mean())
    return finish(method, seed, initial=initial, final=final, accuracy=accuracy, first_bad=first_bad, steps=step,
                  clipped=clipped, max_norm=max_norm, seconds=time.perf_counter() - start)


def _record(rec: dict) -> dict:
    keep = ("norm", "clipped_norm", "coef", "threshold", "clipped", "skipped", "nonfinite")
    return {k: (finite_or_none(rec[k]) if isinstance(rec[k], float) else rec[k]) for k in keep}
