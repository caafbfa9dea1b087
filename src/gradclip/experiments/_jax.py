"""The JAX runner of ``gradclip compare --framework jax``: plain JAX models, optax SGD, one jit.

The models are pytrees of ``jax.numpy`` arrays (no Flax): the MLP (Xavier-uniform kernels
``[in, out]``, bias 0.01, ReLU) or the row LSTM (``jax.lax.scan`` over the 8 rows, gates in
torch's order i, f, g, o, one bias vector as in Keras and the TensorFlow runner) with a linear
head, every LSTM and head weight uniform in ``±1/sqrt(hidden)`` as torch draws them, from
``jax.random.key(seed)``. The optimizer is ``gradclip.jax.guard(optax.sgd(lr, momentum), policy)``:
optax's momentum is torch's (``v = momentum * v + g; w -= lr * v``), and a step whose gradients
are non-finite leaves the weights and the momentum untouched, as the shared loop requires. Same
data, batches, shapes and settings as the torch runner.

Compile time is most of a demo-sized run (XLA:CPU takes seconds for the LSTM's step), so the
jitted step is built once per (task, method) and shared by its seeds, the jitted evaluation once
per task, and the last, shorter batch of an epoch is padded to the full batch size with
zero-weight rows (the weighted mean is the batch's mean loss, and its gradients, up to float
rounding): one step shape serves the whole run, one compilation per (task, method).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradclip.jax as gcj
from gradclip._spec import parse_policy
from gradclip._stats import ClipStats
from gradclip.experiments._loop import train
from gradclip.experiments._results import RunResult
from gradclip.experiments._tasks import Data, Task

Params = dict[str, dict[str, jax.Array]]


def init_params(task: Task, seed: int) -> Params:
    """The task's initial weights: ``{"dense0": {"kernel", "bias"}, ...}`` or ``{"lstm": ..., "head": ...}``."""
    key = jax.random.key(seed)
    if task.model == "lstm":
        f, h, c = task.sizes
        k = 1.0 / math.sqrt(h)
        keys = jax.random.split(key, 5)
        u = lambda i, shape: jax.random.uniform(keys[i], shape, jnp.float32, -k, k)
        return {"lstm": {"kernel": u(0, (f, 4 * h)), "recurrent": u(1, (h, 4 * h)), "bias": u(2, (4 * h,))},
                "head": {"kernel": u(3, (h, c)), "bias": u(4, (c,))}}
    glorot = jax.nn.initializers.glorot_uniform()
    pairs = list(zip(task.sizes[:-1], task.sizes[1:]))
    keys = jax.random.split(key, len(pairs))
    return {f"dense{i}": {"kernel": glorot(keys[i], (a, b), jnp.float32), "bias": jnp.full((b,), 0.01, jnp.float32)}
            for i, (a, b) in enumerate(pairs)}


def forward(params: Params, x: jax.Array) -> jax.Array:
    """The model's output (regression values or class logits) for a batch ``x``."""
    if "lstm" not in params:
        n = len(params)
        for i in range(n):
            layer = params[f"dense{i}"]
            x = x @ layer["kernel"] + layer["bias"]
            x = jax.nn.relu(x) if i < n - 1 else x
        return x
    lstm, head = params["lstm"], params["head"]
    hidden = lstm["recurrent"].shape[0]
    inputs = jnp.einsum("btf,fg->tbg", x, lstm["kernel"]) + lstm["bias"]  # all rows' input part at once

    def cell(carry: tuple[jax.Array, jax.Array], z_x: jax.Array) -> tuple[tuple[jax.Array, jax.Array], None]:
        h, c = carry
        i, f, g, o = jnp.split(z_x + h @ lstm["recurrent"], 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return (jax.nn.sigmoid(o) * jnp.tanh(c), c), None

    zeros = jnp.zeros((x.shape[0], hidden), x.dtype)
    (h, _), _ = jax.lax.scan(cell, (zeros, zeros), inputs)
    return h @ head["kernel"] + head["bias"]


def _losses(task: Task) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Per-example losses (MSE, or cross-entropy on logits with integer labels)."""
    if task.loss == "mse":
        return lambda out, y: jnp.mean(jnp.square(out - y), axis=-1)
    return optax.losses.softmax_cross_entropy_with_integer_labels


#: Jitted functions per (task settings[, method]): they keep their compilations, so in a
#: ``compare`` only the first seed of a method compiles its step, and only the first run its evaluation.
_CACHE: dict[tuple[Any, ...], Any] = {}


def _cached(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def _key(task: Task) -> tuple[Any, ...]:
    return (task.model, task.sizes, task.loss, task.lr, task.momentum)


def _program(task: Task, method: str) -> tuple[optax.GradientTransformation, Callable]:
    """``(optimizer, jitted step)`` of a (task, method), built once and shared by every seed."""
    return _cached((*_key(task), method), lambda: _build_step(task, method))


def _evaluator(task: Task) -> Callable:
    """The jitted ``(params, x, y) -> (mean loss, outputs)`` of a task, shared by every run."""
    per_example = _losses(task)

    def evaluate(params: Params, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = forward(params, x)
        return jnp.mean(per_example(out, y)), out

    return _cached(_key(task), lambda: jax.jit(evaluate))


def _build_step(task: Task, method: str) -> tuple[optax.GradientTransformation, Callable]:
    momentum = task.momentum or None  # optax.sgd without momentum keeps no trace
    tx = gcj.guard(optax.sgd(task.lr, momentum=momentum), parse_policy(method), nonfinite="skip")
    per_example = _losses(task)

    def loss_of(params: Params, x: jax.Array, y: jax.Array, weight: jax.Array) -> jax.Array:
        return jnp.sum(weight * per_example(forward(params, x), y)) / jnp.sum(weight)

    @jax.jit
    def step(params: Params, opt_state: Any, x: jax.Array, y: jax.Array, weight: jax.Array) -> tuple:
        loss, grads = jax.value_and_grad(loss_of)(params, x, y, weight)
        updates, opt_state = tx.update(grads, opt_state, params)
        new = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss)  # a NaN loss with finite gradients must not move the weights either
        params = jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, params)
        return params, opt_state, loss

    return tx, step


def run(task: Task, method: str, seed: int, data: Data, log_path: Path | None = None) -> RunResult:
    """Train ``task``'s JAX model with clipping ``method``: a jitted optax step per batch.

    Args:
        task: The task (data, model and optimizer settings).
        method: A method spec string (``"none"``, ``"norm:1.0"``, ...).
        seed: Seeds the initial weights (``jax.random.key(seed)``) and the batch order.
        data: The task's arrays from ``task.load()``.
        log_path: When given, the run's JSONL log is written there (see :mod:`._loop`).

    Returns:
        The :class:`RunResult`. A run stops at the first non-finite loss or gradient.
    """
    tx, jit_step = _program(task, method)
    jit_evaluate = _evaluator(task)
    y_all = data.y if task.loss == "mse" else data.y.astype(np.int32)
    batch = task.batch_size
    state = {"params": init_params(task, seed)}
    state["opt"] = tx.init(state["params"])

    def step(rows: np.ndarray) -> tuple[float, ClipStats]:
        n = len(rows)
        weight = np.ones(batch, np.float32)
        if n < batch:  # pad the epoch's last batch: one shape, one compilation
            rows = np.concatenate([rows, np.zeros(batch - n, rows.dtype)])
            weight[n:] = 0.0
        params, opt_state, loss = jit_step(state["params"], state["opt"], data.X[rows], y_all[rows], weight)
        state["params"], state["opt"] = params, opt_state
        return float(loss), gcj.stats(opt_state)

    def evaluate(x: np.ndarray, y: np.ndarray) -> tuple[float, float | None]:
        target = y if task.loss == "mse" else y.astype(np.int32)
        loss, out = jit_evaluate(state["params"], x, target)
        accuracy = None if task.loss == "mse" else float(np.mean(np.argmax(np.asarray(out), axis=1) == y))
        return float(loss), accuracy

    return train(task, method, seed, data, step, evaluate, log_path, framework="jax")
