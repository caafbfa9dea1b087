"""The Keras 3 runner of ``gradclip compare --framework keras`` (any Keras backend).

Same data, batches, model shapes and optimizer settings as the torch runner. Initial weights follow
torch's default initialisers (uniform in ``±1/sqrt(fan_in)`` for the LSTM and its head,
Xavier-uniform with bias 0.01 for the MLP), drawn from Keras' seeded generator.

The adaptive optimizers are Keras' ``Adam``, ``RMSprop`` and ``Adagrad`` with torch's
hyper-parameters and torch's update (:data:`gradclip.experiments._tasks.OPTIMIZERS`): Keras adds
epsilon to ``sqrt(v)`` before Adam's bias correction and inside the square root in RMSprop and
Adagrad, so the three subclasses below override ``update_step`` with torch's formula.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np

from gradclip.experiments._loop import train
from gradclip.experiments._results import RunResult
from gradclip.experiments._tasks import Data, Task, optimizer_params
from gradclip.keras import clipped

ops = keras.ops


class TorchAdam(keras.optimizers.Adam):
    """Keras Adam with torch's update: ``w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)``."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        dtype = variable.dtype
        lr, g = ops.cast(learning_rate, dtype), ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        correction1 = 1 - ops.power(ops.cast(self.beta_1, dtype), t)
        correction2 = 1 - ops.power(ops.cast(self.beta_2, dtype), t)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, (g - m) * (1 - self.beta_1))
        self.assign_add(v, (ops.square(g) - v) * (1 - self.beta_2))
        denominator = ops.sqrt(v) / ops.sqrt(correction2) + self.epsilon
        self.assign_sub(variable, (lr / correction1) * m / denominator)


class TorchRMSprop(keras.optimizers.RMSprop):
    """Keras RMSprop (no momentum, not centred) with torch's update: ``w -= lr * g / (sqrt(v) + eps)``."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr, g = ops.cast(learning_rate, variable.dtype), ops.cast(gradient, variable.dtype)
        v = self._velocities[self._get_variable_index(variable)]
        self.assign(v, self.rho * v + (1 - self.rho) * ops.square(g))
        self.assign_sub(variable, lr * g / (ops.sqrt(v) + self.epsilon))


class TorchAdagrad(keras.optimizers.Adagrad):
    """Keras Adagrad with torch's update: ``s += g^2; w -= lr * g / (sqrt(s) + eps)``."""

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr, g = ops.cast(learning_rate, variable.dtype), ops.cast(gradient, variable.dtype)
        s = self._accumulators[self._get_variable_index(variable)]
        self.assign_add(s, ops.square(g))
        self.assign_sub(variable, lr * g / (ops.sqrt(s) + self.epsilon))


def make_optimizer(task: Task) -> keras.optimizers.Optimizer:
    """``task.optimizer`` as a Keras optimizer, every hyper-parameter set explicitly (torch's values).

    Raises:
        ConfigError: an unknown ``task.optimizer``.
    """
    hp = optimizer_params(task)
    if task.optimizer == "adam":
        return TorchAdam(task.lr, beta_1=hp["beta1"], beta_2=hp["beta2"], epsilon=hp["eps"])
    if task.optimizer == "rmsprop":
        return TorchRMSprop(task.lr, rho=hp["alpha"], epsilon=hp["eps"], momentum=0.0, centered=False)
    if task.optimizer == "adagrad":
        return TorchAdagrad(task.lr, initial_accumulator_value=hp["initial_accumulator"], epsilon=hp["eps"])
    return keras.optimizers.SGD(task.lr, momentum=task.momentum)  # sgd, momentum


def build_model(task: Task) -> keras.Model:
    """The task's model in Keras: the MLP (ReLU) or the row LSTM with a linear head."""
    if task.model == "lstm":
        features, hidden, classes = task.sizes
        k = 1.0 / math.sqrt(hidden)
        uniform = lambda: keras.initializers.RandomUniform(-k, k)  # noqa: E731
        return keras.Sequential([
            keras.Input((None, features)),
            keras.layers.LSTM(hidden, kernel_initializer=uniform(), recurrent_initializer=uniform(),
                              bias_initializer=uniform(), unit_forget_bias=False),
            keras.layers.Dense(classes, kernel_initializer=uniform(), bias_initializer=uniform()),
        ])
    widths = task.sizes
    layers = [keras.Input((widths[0],))]
    for i, b in enumerate(widths[1:]):
        last = i == len(widths) - 2
        layers.append(keras.layers.Dense(b, activation=None if last else "relu", kernel_initializer="glorot_uniform",
                                         bias_initializer=keras.initializers.Constant(0.01)))
    return keras.Sequential(layers)


def run(task: Task, method: str, seed: int, data: Data, log_path: Path | None = None) -> RunResult:
    """Train ``task``'s Keras model with clipping ``method`` (``model.train_on_batch`` per step)."""
    keras.utils.set_random_seed(seed)
    model = build_model(task)
    opt = clipped(make_optimizer(task), method)
    if task.loss == "mse":
        loss_fn = keras.losses.MeanSquaredError()
    else:
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=opt, loss=loss_fn)

    def step(rows: np.ndarray) -> tuple[float, Any]:
        loss = model.train_on_batch(data.X[rows], data.y[rows], return_dict=True)["loss"]
        return float(loss), opt.last_stats()

    def evaluate(x: np.ndarray, y: np.ndarray) -> tuple[float, float | None]:
        out = model.predict_on_batch(x)
        loss = float(keras.ops.convert_to_numpy(loss_fn(y, out)))
        accuracy = None
        if task.loss != "mse":
            accuracy = float(np.mean(np.argmax(keras.ops.convert_to_numpy(out), axis=1) == y))
        return loss, accuracy

    return train(task, method, seed, data, step, evaluate, log_path, framework='keras')
