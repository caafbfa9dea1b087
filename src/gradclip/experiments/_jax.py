"""The JAX runner of ``gradclip compare --framework jax``: plain JAX models, optax SGD, one jit.

The models are pytrees of ``jax.numpy`` arrays (no Flax): the MLP (Xavier-uniform kernels
``[in, out]``, bias 0.01, ReLU) or the row LSTM (``jax.lax.scan`` over the 8 rows, gates in
torch's order i, f, g, o, one bias vector as in Keras and the TensorFlow runner) with a linear
head, every LSTM and head weight uniform in ``±1/sqrt(hidden)`` as torch draws them, from
``jax.random.key(seed)``. The optimizer is ``gradclip.jax.guard(tx, policy)`` with ``tx`` from
:func:`make_optimizer`: ``optax.sgd(lr, momentum)`` (optax's momentum is torch's, ``v = momentum *
v + g; w -= lr * v``), ``optax.adam`` (``eps_root=0``: torch's form), ``optax.rmsprop`` with
``decay=0.99, eps_in_sqrt=False`` (torch's), or torch's Adagrad (:func:`torch_adagrad`: optax's
puts ``eps`` inside the square root and starts the sum at 0.1). A step whose gradients are
non-finite leaves the weights and the optimizer state untouched, as the shared loop requires. Same
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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradclip.jax as gcj
from gradclip._spec import parse_policy
from gradclip._stats import ClipStats
from gradclip.experiments._loop import train
from gradclip.experiments._results import RunResult
from gradclip.experiments._tasks import Data, Task, optimizer_params

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
    return (task.model, task.sizes, task.loss, task.optimizer, task.lr, task.momentum)


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


class AdagradState(NamedTuple):
    """The sum of squared gradients of :func:`torch_adagrad`."""

    sum_of_squares: Any


def torch_adagrad(learning_rate: float, eps: float = 1e-10, initial_accumulator: float = 0.0) -> optax.GradientTransformation:
    """PyTorch's Adagrad as an optax transformation: ``s += g^2; w -= lr * g / (sqrt(s) + eps)``.

    Example:
        >>> import jax.numpy as jnp
        >>> tx = torch_adagrad(0.1)
        >>> updates, _ = tx.update({"w": jnp.array([2.0, -0.5, 0.0])}, tx.init({"w": jnp.zeros(3)}))
        >>> [round(float(u), 6) for u in updates["w"]]  # the first step is -lr * sign(g)
        [-0.1, 0.1, -0.0]
    """

    def init(params: Any) -> AdagradState:
        return AdagradState(jax.tree.map(lambda p: jnp.full_like(p, initial_accumulator), params))

    def update(updates: Any, state: AdagradState, params: Any = None) -> tuple[Any, AdagradState]:
        del params
        total = jax.tree.map(lambda g, s: s + jnp.square(g), updates, state.sum_of_squares)
        steps = jax.tree.map(lambda g, s: -learning_rate * g / (jnp.sqrt(s) + eps), updates, total)
        return steps, AdagradState(total)

    return optax.GradientTransformation(init, update)


def make_optimizer(task: Task) -> optax.GradientTransformation:
    """``task.optimizer`` as an optax transformation, every hyper-parameter set explicitly (torch's values).

    Raises:
        ConfigError: an unknown ``task.optimizer``.
    """
    hp = optimizer_params(task)
    if task.optimizer == "adam":
        return optax.adam(task.lr, b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"], eps_root=0.0)
    if task.optimizer == "rmsprop":
        return optax.rmsprop(task.lr, decay=hp["alpha"], eps=hp["eps"], initial_scale=0.0, eps_in_sqrt=False,
                             centered=False, momentum=None, bias_correction=False)
    if task.optimizer == "adagrad":
        return torch_adagrad(task.lr, eps=hp["eps"], initial_accumulator=hp["initial_accumulator"])
    return optax.sgd(task.lr, momentum=task.momentum or None)  # without momentum optax keeps no trace


def _build_step(task: Task, method: str) -> tuple[optax.GradientTransformation, Callable]:
    tx = gcj.guard(make_optimizer(task), parse_policy(method), nonfinite="skip")
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
