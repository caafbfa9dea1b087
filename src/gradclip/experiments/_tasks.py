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
        batch_size: Mini-batch size. epochs: Passes over the data.
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

    def config(self) -> dict[str, Any]:
        """The settings as plain values (written into the results JSON)."""
        return {
            "model": self.model, "sizes": list(self.sizes), "loss": self.loss, "optimizer": "sgd", "lr": self.lr,
            "momentum": self.momentum, "batch_size": self.batch_size, "epochs": self.epochs, **self.extra,
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
}


def get_task(name: str) -> Task:
    """Look up a task by name.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    if name not in TASKS:
        raise ConfigError(f"Unknown task {name!r}. Valid tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[name]
