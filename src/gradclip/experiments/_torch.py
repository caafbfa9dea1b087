"""The PyTorch runner of ``gradclip compare``: one training run of one task with one method."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradclip._spec import parse_policy
from gradclip._stats import ClipStats
from gradclip.experiments._loop import train
from gradclip.experiments._results import RunResult
from gradclip.experiments._tasks import Data, Task, optimizer_params
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


def make_optimizer(task: Task, params: Any) -> torch.optim.Optimizer:
    """``task.optimizer`` over ``params``, every hyper-parameter set explicitly (see :data:`._tasks.OPTIMIZERS`).

    Raises:
        ConfigError: an unknown ``task.optimizer``.
    """
    hp = optimizer_params(task)
    if task.optimizer == "adam":
        return torch.optim.Adam(params, lr=task.lr, betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"])
    if task.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=task.lr, alpha=hp["alpha"], eps=hp["eps"])
    if task.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=task.lr, initial_accumulator_value=hp["initial_accumulator"],
                                   eps=hp["eps"])
    return torch.optim.SGD(params, lr=task.lr, momentum=task.momentum)  # sgd, momentum


def run(task: Task, method: str, seed: int, data: Data, log_path: Path | None = None, *, shard=None) -> RunResult:
    """Train ``task``'s model with clipping ``method`` and report how it went.

    Args:
        task: The task (data, model, optimizer and its settings: :func:`make_optimizer`).
        method: A method spec string (``"none"``, ``"norm:1.0"``, ...).
        seed: Seeds the initial weights and the batch order.
        data: The task's arrays from ``task.load()`` (loaded once for all runs).
        log_path: When given, the run's JSONL log is written there (see :mod:`._loop`).
        shard: Set by the DDP runner (:class:`gradclip.experiments._ddp.Shard`): this rank's part
            of every batch; ``None`` (default) trains in one process.

    Returns:
        The :class:`RunResult`. A run stops at the first non-finite loss or gradient.
    """
    torch.manual_seed(seed)
    X, y = torch.from_numpy(data.X), torch.from_numpy(data.y)
    model = build_model(task)
    net = model if shard is None else shard.wrap(model)
    optimizer = make_optimizer(task, model.parameters())
    clipper = Clipper(parse_policy(method))
    order = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.functional.mse_loss if task.loss == "mse" else torch.nn.functional.cross_entropy

    def step(rows: np.ndarray) -> tuple[float, ClipStats]:
        idx = torch.from_numpy(rows)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(X[idx]), y[idx]) if shard is None else shard.loss(net, loss_fn, X[idx], y[idx])
        loss.backward()
        value = loss.item() if shard is None else shard.value(loss)
        stats = clipper.step(model.named_parameters())
        if math.isfinite(value) and not bool(stats.nonfinite):
            optimizer.step()
        return value, stats

    @torch.no_grad()
    def evaluate(x: np.ndarray, target: np.ndarray) -> tuple[float, float | None]:
        out = model(torch.from_numpy(x))
        t = torch.from_numpy(target)
        accuracy = None if task.loss == "mse" else float((out.argmax(dim=1) == t).double().mean())
        return float(loss_fn(out, t)), accuracy

    return train(task, method, seed, data, step, evaluate, log_path, framework="torch",
                 permutation=lambda epoch: torch.randperm(len(X), generator=order).numpy())
