"""Tasks behind ``gradclip compare``: data, model shape and hyper-parameters, framework-neutral.

Each task loads its data from an installed package (never from the network) as NumPy arrays, and
describes its model and optimizer in plain values; each framework runner builds them its own way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradclip._errors import ConfigError


@dataclass(frozen=True)
class Data:
    """Training (and optional held-out test) arrays of a task."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


@dataclass(frozen=True)
class Task:
    """One experiment: data, model and optimizer settings.

    Attributes:
        name: Name used on the command line (``--task``).
        description: One line for ``--help`` and reports.
        load: Returns :class:`Data` (NumPy arrays).
        model: ``"mlp"`` or ``"lstm"``.
        sizes: MLP layer widths, input first (``(20, 25, 1)``); for the LSTM
            ``(features, hidden, classes)``.
        loss: ``"mse"`` or ``"cross_entropy"`` (then test accuracy is reported too).
        lr: SGD learning rate. momentum: SGD momentum.
        batch_size: Mini-batch size (DP tasks: the expected Poisson batch size).
        epochs: Passes over the data.
        extra: More settings, written into the results JSON.
        methods: The task's own default ``--method`` list; empty (default) means the clipping
            methods of :data:`gradclip.experiments.DEFAULT_METHODS`.
        privacy: DP-SGD settings (``noise_multiplier``, ``max_grad_norm``, ``delta``) of a
            differential-privacy task, whose methods are those of
            :data:`gradclip.experiments._dp.METHODS`; ``None`` (default) for a clipping task.
    """

    name: str
    description: str
    load: Callable[[], Data]
    model: str
    sizes: tuple[int, ...]
    loss: str
    lr: float
    momentum: float
    batch_size: int
    epochs: int
    extra: dict[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] = ()
    privacy: dict[str, float] | None = None

    def config(self) -> dict[str, Any]:
        """The settings as plain values (written into the results JSON)."""
        return {
            "model": self.model, "sizes": list(self.sizes), "loss": self.loss, "optimizer": "sgd", "lr": self.lr,
            "momentum": self.momentum, "batch_size": self.batch_size, "epochs": self.epochs, **self.extra,
            **({"privacy": dict(self.privacy)} if self.privacy is not None else {}),
        }


def _regression() -> Data:
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=1000, n_features=20, noise=0.1, random_state=1)
    return Data(X.astype(np.float32), y.astype(np.float32).reshape(-1, 1))


def _digits_rows() -> Data:
    """scikit-learn's 8x8 digits read row by row: 8 steps of 8 features in [0, 1]; 360 held out."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X.reshape(-1, 8, 8) / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(X))
    test, train = order[:360], order[360:]
    return Data(X[train], y[train].astype(np.int64), X[test], y[test].astype(np.int64))


def _digits_flat() -> Data:
    """scikit-learn's 8x8 digits as 64 features standardised with the training set's mean and std.

    The same fixed 360-image test split as :func:`_digits_rows` (seed 0); constant pixels keep std 1.
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(X))
    test, train = order[:360], order[360:]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    std[std == 0] = 1.0
    X = ((X - mean) / std).astype(np.float32)
    return Data(X[train], y[train].astype(np.int64), X[test], y[test].astype(np.int64))


TASKS: dict[str, Task] = {
    "regression": Task(
        name="regression",
        description=(
            "MLP 20-25-1 (ReLU, Xavier-uniform weights, bias 0.01) on make_regression(1000 x 20, "
            "noise 0.1, raw targets), MSE, SGD lr 0.07 momentum 0.8, batch 128, 50 epochs"
        ),
        load=_regression,
        model="mlp",
        sizes=(20, 25, 1),
        loss="mse",
        lr=0.07,
        momentum=0.8,
        batch_size=128,
        epochs=50,
        extra={"data": "sklearn.datasets.make_regression(n_samples=1000, n_features=20, noise=0.1, random_state=1)",
               "init": "xavier_uniform, bias 0.01"},
    ),
    "digits-lstm": Task(
        name="digits-lstm",
        description=(
            "LSTM(64) + Linear(10) reading scikit-learn's 8x8 digits row by row (8 steps x 8 "
            "features in [0, 1]; 1437 train, 360 test), cross-entropy, plain SGD at a deliberately "
            "aggressive lr 10, batch 32, 25 epochs"
        ),
        load=_digits_rows,
        model="lstm",
        sizes=(8, 64, 10),
        loss="cross_entropy",
        lr=10.0,
        momentum=0.0,
        batch_size=32,
        epochs=25,
        extra={"data": "sklearn.datasets.load_digits, rows as time steps, fixed 360-image test split (seed 0)",
               "init": "torch defaults"},
    ),
    "dp-digits": Task(
        name="dp-digits",
        description=(
            "DP-SGD: MLP 64-128-10 (tanh) on scikit-learn's 8x8 digits (64 standardised features; 1437 "
            "train, 360 test), cross-entropy, SGD lr 0.5 momentum 0.5, Poisson batches of expected size 64, "
            "10 epochs; noise multiplier 1.0, C 1.0, epsilon at delta 1e-5 (RDP). Methods: nonprivate, "
            "flat, per-layer, adaptive, flat-ghost"
        ),
        load=_digits_flat,
        model="mlp",
        sizes=(64, 128, 10),
        loss="cross_entropy",
        lr=0.5,
        momentum=0.5,
        batch_size=64,
        epochs=10,
        extra={"data": "sklearn.datasets.load_digits, 64 features standardised (train mean/std), fixed 360-image "
                       "test split (seed 0)",
               "init": "torch defaults", "activation": "tanh", "sampling": "poisson",
               "memory": "resource.getrusage ru_maxrss: peak_rss_mb is the process's peak resident set after the "
                         "run, peak_rss_growth_mb how much the run raised it (0 under an earlier run's peak)"},
        methods=("nonprivate", "flat", "per-layer", "adaptive", "flat-ghost"),
        privacy={"noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5},
    ),
}


def get_task(name: str) -> Task:
    """Look up a task by name.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    if name not in TASKS:
        raise ConfigError(f"Unknown task {name!r}. Valid tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[name]
