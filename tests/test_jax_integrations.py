"""gradclip.jax inside the JAX training stacks people use: Flax nnx, Flax TrainState, Equinox.

Each test trains a few jitted steps, checks that the loss goes down, that ``gradclip.jax.stats``
reads the step's numbers, and that a small ``max_norm`` really bounds the update (with plain SGD
the weights move by exactly ``lr * clipped_norm``). The last test runs the README's JAX example,
extracted from README.md, so that it cannot rot.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy

import gradclip
import gradclip.jax as gcj

LR, MAX_NORM = 0.05, 0.5
README = Path(__file__).resolve().parents[1] / "README.md"


def _data(n: int = 64, features: int = 4):
    x = jax.random.normal(jax.random.key(0), (n, features))
    return x, 3.0 * x.sum(axis=1, keepdims=True) + 1.0


def _host(tree) -> list[np.ndarray]:
    """The tree's array leaves as NumPy copies (host arithmetic: no compilation per leaf shape)."""
    return [np.array(leaf, dtype=np.float64) for leaf in jax.tree.leaves(tree)]


def _moved(before, after) -> float:
    """Global L2 norm of ``after - before`` (both lists from :func:`_host`)."""
    return math.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(after, before)))


def _check(losses, stats, moved, names):
    assert losses[-1] < losses[0], losses
    assert stats.names == names
    assert float(stats.norm) > MAX_NORM and bool(stats.clipped) and not bool(stats.nonfinite)
    assert float(stats.clipped_norm) == pytest.approx(MAX_NORM, rel=1e-5)
    assert float(stats.coef) == pytest.approx(MAX_NORM / float(stats.norm), rel=1e-4)
    assert float(stats.threshold) == pytest.approx(MAX_NORM)
    per_leaf = np.asarray(stats.tensor_norms)
    assert per_leaf.shape == (len(names),) and math.sqrt(float(np.sum(per_leaf**2))) == pytest.approx(float(stats.norm), rel=1e-5)
    assert moved == pytest.approx(LR * MAX_NORM, rel=1e-4)  # plain SGD: the step is lr * the clipped update


def test_flax_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Sequential(nnx.Linear(4, 16, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(16, 1, rngs=nnx.Rngs(1)))
    tx = optax.chain(gcj.transform(gradclip.GlobalNorm(MAX_NORM)), optax.sgd(LR))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x, y = _data()

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = []
    for _ in range(5):
        before = _host(nnx.state(model, nnx.Param))
        losses.append(float(step(model, optimizer, x, y)))
    moved = _moved(before, _host(nnx.state(model, nnx.Param)))
    names = ("layers.0.bias", "layers.0.kernel", "layers.2.bias", "layers.2.kernel")
    _check(losses, gcj.stats(optimizer.opt_state), moved, names)


def test_flax_train_state_with_guard():
    pytest.importorskip("flax")
    import flax.linen as nn
    from flax.training import train_state

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1)(nn.relu(nn.Dense(16)(x)))

    x, y = _data()
    model = MLP()
    params = model.init(jax.random.key(0), x)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                          tx=gcj.guard(optax.sgd(LR), gradclip.GlobalNorm(MAX_NORM)))

    @jax.jit
    def step(state, x, y):
        loss_fn = lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for _ in range(5):
        before = state.params
        state, loss = step(state, x, y)
        losses.append(float(loss))
    names = ("Dense_0.bias", "Dense_0.kernel", "Dense_1.bias", "Dense_1.kernel")
    stats = gcj.stats(state.opt_state)
    _check(losses, stats, _moved(_host(before), _host(state.params)), names)
    assert stats.total_skips == 0 and not bool(stats.skipped)

    bad_x = x.at[0, 0].set(jnp.nan)  # a NaN step is skipped: weights untouched, counted
    skipped, loss = step(state, bad_x, y)
    assert not math.isfinite(float(loss))
    assert _moved(_host(state.params), _host(skipped.params)) == 0.0
    stats = gcj.stats(skipped.opt_state)
    assert bool(stats.skipped) and bool(stats.nonfinite) and stats.total_skips == 1
    assert "Dense_0.kernel" in stats.offender_names  # the NaN input's own weights are named first


def test_equinox_filtered_loop_with_none_leaves():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(4, 1, width_size=16, depth=1, key=jax.random.key(0))
    tx = optax.chain(gcj.transform(gradclip.GlobalNorm(MAX_NORM)), optax.sgd(LR))
    opt_state = tx.init(eqx.filter(model, eqx.is_array))
    x, y = _data()

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        loss, grads = eqx.filter_value_and_grad(lambda m: jnp.mean((jax.vmap(m)(x) - y) ** 2))(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    grads = eqx.filter_eval_shape(eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(x))), model)  # nothing compiles
    assert any(leaf is None for leaf in jax.tree.leaves(grads, is_leaf=lambda v: v is None))  # the case under test
    losses = []
    for _ in range(5):
        before = _host(eqx.filter(model, eqx.is_array))
        model, opt_state, loss = step(model, opt_state, x, y)
        losses.append(float(loss))
    moved = _moved(before, _host(eqx.filter(model, eqx.is_array)))
    names = ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias")
    _check(losses, gcj.stats(opt_state), moved, names)


def readme_snippet(name: str = "jax-example") -> str:
    """The ```python block between ``<!-- name:start -->`` and ``<!-- name:end -->`` in README.md."""
    text = README.read_text()
    found = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", text, re.DOTALL)
    assert found, f"README.md has no {name} markers"
    code = re.search(r"```python\n(.*?)```", found.group(1), re.DOTALL)
    assert code, f"no python block between the {name} markers"
    return code.group(1)


def test_readme_jax_example_runs():
    pytest.importorskip("flax.nnx")
    namespace: dict = {}
    exec(compile(readme_snippet(), "README.md (jax-example)", "exec"), namespace)  # noqa: S102 - our own README
    stats = namespace["stats"]
    assert isinstance(stats, gradclip.ClipStats) and math.isfinite(float(stats.norm))
    assert math.isfinite(float(namespace["loss"]))
