"""The Keras 3 runner of ``gradclip compare --framework keras`` (any Keras backend).

Same data, batches, model shapes and SGD settings as the torch runner. Initial weights follow
torch's default initialisers (uniform in ``±1/sqrt(fan_in)`` for the LSTM and its head,
Xavier-uniform with bias 0.01 for the MLP), drawn from Keras' seeded generator.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np

from gradclip.experiments._loop import train
from gradclip.experiments._results import RunResult
from gradclip.experiments._tasks import Data, Task
from gradclip.keras import clipped


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
    opt = clipped(keras.optimizers.SGD(task.lr, momentum=task.momentum), method)
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
