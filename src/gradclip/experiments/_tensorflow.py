"""The TensorFlow runner of ``gradclip compare --framework tensorflow``: a ``GradientTape`` loop.

The model is written with ``tf.Variable``\\ s (no Keras), the step is one ``tf.function`` with
``gradclip.tensorflow.Clipper`` inside, and the optimizer is written out as torch does it
(:class:`Optimizer`; SGD with momentum is ``v = momentum * v + g; w -= lr * v``). Same data,
batches, shapes and settings as the torch runner.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from gradclip.experiments._loop import train
from gradclip.experiments._results import RunResult
from gradclip.experiments._tasks import Data, Task, optimizer_params
from gradclip.tensorflow import Clipper


class _Model(tf.Module):
    """The MLP (Xavier-uniform, bias 0.01, ReLU) or the row LSTM + linear head (torch's uniform init)."""

    def __init__(self, task: Task, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.lstm = task.model == "lstm"
        var = lambda shape, bound, name: tf.Variable(  # noqa: E731
            rng.uniform(-bound, bound, shape).astype(np.float32), name=name)
        if self.lstm:
            f, h, c = task.sizes
            k = 1.0 / math.sqrt(h)
            self.kernel = var((f, 4 * h), k, "lstm_kernel")
            self.recurrent = var((h, 4 * h), k, "lstm_recurrent")
            self.bias = var((4 * h,), k, "lstm_bias")
            self.head = var((h, c), k, "head_kernel")
            self.head_bias = var((c,), k, "head_bias")
        else:
            self.layers = []
            for i, (a, b) in enumerate(zip(task.sizes[:-1], task.sizes[1:])):
                w = var((a, b), math.sqrt(6.0 / (a + b)), f"dense{i}_kernel")
                self.layers.append((w, tf.Variable(np.full(b, 0.01, np.float32), name=f"dense{i}_bias")))

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if not self.lstm:
            for i, (w, b) in enumerate(self.layers):
                x = x @ w + b
                x = tf.nn.relu(x) if i < len(self.layers) - 1 else x
            return x
        h_size = self.recurrent.shape[0]
        h = tf.zeros((tf.shape(x)[0], h_size))
        c = tf.zeros_like(h)
        for t in range(x.shape[1]):
            z = x[:, t] @ self.kernel + h @ self.recurrent + self.bias
            i, f, g, o = tf.split(z, 4, axis=1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
        return h @ self.head + self.head_bias


class Optimizer(tf.Module):
    """``task.optimizer`` over ``variables``, written out in TensorFlow with torch's update and values.

    See :data:`gradclip.experiments._tasks.OPTIMIZERS` for the formulas; ``apply(grads)`` is one
    step (inside a ``tf.function`` or eagerly).

    Raises:
        ConfigError: an unknown ``task.optimizer``.
    """

    def __init__(self, task: Task, variables: list[tf.Variable]) -> None:
        super().__init__()
        self.kind, self.lr, self.momentum, self.hp = task.optimizer, task.lr, task.momentum, optimizer_params(task)
        self.variables_ = list(variables)
        slots = {"adam": 2, "rmsprop": 1, "adagrad": 1}.get(self.kind, 1 if self.momentum else 0)
        self.slots = [[tf.Variable(tf.zeros_like(v), trainable=False) for v in self.variables_] for _ in range(slots)]
        self.t = tf.Variable(0.0, trainable=False)

    def apply(self, grads: list[tf.Tensor]) -> None:
        """One step: every variable moves by ``grads`` (in the order of ``variables``)."""
        self.t.assign_add(1.0)
        hp = self.hp
        for i, (w, g) in enumerate(zip(self.variables_, grads)):
            if self.kind == "adam":
                m, v = self.slots[0][i], self.slots[1][i]
                m.assign(hp["beta1"] * m + (1.0 - hp["beta1"]) * g)
                v.assign(hp["beta2"] * v + (1.0 - hp["beta2"]) * tf.square(g))
                c1, c2 = 1.0 - hp["beta1"] ** self.t, 1.0 - hp["beta2"] ** self.t
                w.assign_sub(self.lr / c1 * m / (tf.sqrt(v) / tf.sqrt(c2) + hp["eps"]))
            elif self.kind == "rmsprop":
                v = self.slots[0][i]
                v.assign(hp["alpha"] * v + (1.0 - hp["alpha"]) * tf.square(g))
                w.assign_sub(self.lr * g / (tf.sqrt(v) + hp["eps"]))
            elif self.kind == "adagrad":
                s = self.slots[0][i]
                s.assign_add(tf.square(g))
                w.assign_sub(self.lr * g / (tf.sqrt(s) + hp["eps"]))
            elif self.slots:  # sgd/momentum with momentum
                m = self.slots[0][i]
                m.assign(self.momentum * m + g)
                w.assign_sub(self.lr * m)
            else:
                w.assign_sub(self.lr * g)


def run(task: Task, method: str, seed: int, data: Data, log_path: Path | None = None) -> RunResult:
    """Train ``task``'s TensorFlow model with clipping ``method`` in a ``GradientTape`` loop."""
    tf.random.set_seed(seed)
    model = _Model(task, seed)
    variables = list(model.trainable_variables)
    optimizer = Optimizer(task, variables)
    clipper = Clipper(method)
    mse = task.loss == "mse"

    def loss_of(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        out = model(x)
        if mse:
            return tf.reduce_mean(tf.square(out - y)), out
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, out)), out

    @tf.function
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss, _ = loss_of(x, y)
        grads, _ = clipper(tape.gradient(loss, variables), variables)
        optimizer.apply(grads)
        return loss

    def step(rows: np.ndarray) -> tuple[float, Any]:
        loss = float(train_step(tf.constant(data.X[rows]), tf.constant(data.y[rows])))
        return loss, clipper.last_stats()

    def evaluate(x: np.ndarray, y: np.ndarray) -> tuple[float, float | None]:
        loss, out = loss_of(tf.constant(x), tf.constant(y))
        accuracy = None if mse else float(np.mean(np.argmax(out.numpy(), axis=1) == y))
        return float(loss), accuracy

    return train(task, method, seed, data, step, evaluate, log_path, framework='tensorflow')
