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
class Task:
    """One experiment: data, model and optimizer settings.

    Attributes:
        name: Name used on the command line (``--task``).
        description: One line for ``--help`` and reports.
        load: Returns ``(X, y)`` as float32 NumPy arrays.
        model: Layer widths of the MLP, input first (``(20, 25, 1)``).
        loss: ``"mse"``.
        lr: SGD learning rate. momentum: SGD momentum.
        batch_size: Mini-batch size. epochs: Passes over the data.
    """

    name: str
    description: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]
    model: tuple[int, ...]
    loss: str
    lr: float
    momentum: float
    batch_size: int
    epochs: int
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """The settings as plain values (written into the results JSON)."""
        return {
            "model": list(self.model), "loss": self.loss, "optimizer": "sgd", "lr": self.lr,
            "momentum": self.momentum, "batch_size": self.batch_size, "epochs": self.epochs, **self.extra,
        }


def _regression() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_regression

    X, y = make_regression(n_samples=1000, n_features=20, noise=0.1, random_state=1)
    return X.astype(np.float32), y.astype(np.float32).reshape(-1, 1)


TASKS: dict[str, Task] = {
    "regression": Task(
        name="regression",
        description=(
            "MLP 20-25-1 (ReLU, Xavier-uniform weights, bias 0.01) on make_regression(1000 x 20, "
            "noise 0.1, raw targets), MSE, SGD lr 0.07 momentum 0.8, batch 128, 50 epochs"
        ),
        load=_regression,
        model=(20, 25, 1),
        loss="mse",
        lr=0.07,
        momentum=0.8,
        batch_size=128,
        epochs=50,
        extra={"data": "sklearn.datasets.make_regression(n_samples=1000, n_features=20, noise=0.1, random_state=1)",
               "init": "xavier_uniform, bias 0.01"},
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
