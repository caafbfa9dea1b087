"""gradclip.jax.per_example_clip / private_aggregate: bit-identical to optax's per-example clipping and DP aggregate."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp
from optax import contrib

from gradclip._errors import ConfigError, InputTypeError
from gradclip.jax import PrivateAggregateState, per_example_clip, private_aggregate

B = 9


def same_bits(a, b) -> bool:
    """Equal trees, leaf by leaf: same structure, dtype, shape and bytes (NaN payloads included)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb or len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            return False
    return True


def tree(seed: int, dtype=jnp.float32, special: bool = True, c: float = 1.5):
    """Per-example gradients with B examples; rows 0-4 are special: zeros, NaN, +Inf, norm == c, tiny.

    Built in NumPy (no per-edit XLA compile), then moved to JAX.
    """
    rng = np.random.default_rng(seed)
    g = {"a": rng.standard_normal((B, 3, 4), np.float32) * 2,
         "b": [rng.standard_normal((B, 5), np.float32), rng.standard_normal((B, 2, 2, 2), np.float32) * 0.1]}
    leaves = jax.tree.leaves(g)
    if special:
        for x in leaves:
            x[0] = 0.0
            x[3] = 0.0
            x[4] *= 1e-30
        g["a"][1, 0, 0] = np.nan
        g["b"][0][2, 1] = np.inf
        g["b"][0][3, 0] = c  # this example's flat norm is exactly c
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), g)


def ours_flat(g, c):
    return per_example_clip(g, c)


def ours_layer(g, c, uniform=True):
    return per_example_clip(g, c, mode="per_layer", uniform=uniform)


def test_optax_documented_example():
    grads = [jnp.array([[0, 0, 0], [0, 3, 4], [4, 0, 3], [3, 4, 0]])]
    summed, n = per_example_clip(grads, 1.25)
    np.testing.assert_array_equal(np.asarray(summed[0]), np.float32([1.75, 1.75, 1.75]))
    assert int(n) == 3
    for c in (jnp.inf, 0.0, 1.25, 5.0):
        assert same_bits(per_example_clip(grads, c), optax.per_example_global_norm_clip(grads, c))
        assert same_bits(per_example_clip(grads, c, mode="per_layer"), optax.per_example_layer_norm_clip(grads, c))


@pytest.mark.parametrize("seed,dtype", [(0, jnp.float32), (1, jnp.float32), (2, jnp.bfloat16)])
@pytest.mark.parametrize("c", [0.0, 0.7, 1.5, 4.0, float("inf")])
def test_flat_bitwise(seed, c, dtype):
    g = tree(seed, dtype)
    assert same_bits(ours_flat(g, c), optax.per_example_global_norm_clip(g, c))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("c", [0.0, 0.7, 1.5, 4.0, float("inf")])
@pytest.mark.parametrize("uniform", [True, False])
def test_per_layer_bitwise(seed, c, uniform):
    g = tree(seed)
    assert same_bits(ours_layer(g, c, uniform), optax.per_example_layer_norm_clip(g, c, uniform))


def test_norm_exactly_c_is_not_clipped_and_special_rows():
    g = {"w": jnp.array([[3.0, 4.0], [0.0, 0.0], [jnp.nan, 1.0], [jnp.inf, 0.0], [6.0, 8.0]])}
    summed, n = per_example_clip(g, 5.0)  # row 0 at the bound; NaN row kept (multiplier 1); Inf row zeroed
    assert int(n) == 2  # the Inf row and the (6, 8) row
    ref = optax.per_example_global_norm_clip(g, 5.0)
    assert same_bits((summed, n), ref)
    assert np.isnan(np.asarray(summed["w"])[0])


@pytest.mark.parametrize("c", [1.5, 3.0])
def test_jit_bitwise_and_traced_max_norm(c):
    g = tree(7)
    ours = jax.jit(lambda g, c: per_example_clip(g, c))(g, jnp.float32(c))
    ref = jax.jit(optax.per_example_global_norm_clip)(g, jnp.float32(c))
    assert same_bits(ours, ref)
    ours = jax.jit(lambda g, c: per_example_clip(g, c, mode="per_layer"))(g, jnp.float32(c))
    ref = jax.jit(optax.per_example_layer_norm_clip)(g, jnp.float32(c))
    assert same_bits(ours, ref)


@pytest.mark.parametrize("noise,jit", [(0.0, False), (1.1, False), (1.1, True)])
def test_private_aggregate_bitwise_over_steps(noise, jit):
    ours = private_aggregate(1.5, noise, key=jax.random.key(42))
    ref = contrib.differentially_private_aggregate(1.5, noise, key=jax.random.key(42))
    s_ours, s_ref = ours.init(None), ref.init(None)
    assert isinstance(s_ours, PrivateAggregateState)
    upd_ours, upd_ref = (jax.jit(ours.update), jax.jit(ref.update)) if jit else (ours.update, ref.update)
    for step in range(2):
        g = tree(step, special=step == 0)
        u_ours, s_ours = upd_ours(g, s_ours)
        u_ref, s_ref = upd_ref(g, s_ref)
        assert same_bits(u_ours, u_ref)
        assert same_bits(jax.random.key_data(s_ours.rng_key), jax.random.key_data(s_ref.rng_key))


def test_private_aggregate_key_forms_agree():
    g = tree(1, special=False)
    ref = contrib.differentially_private_aggregate(1.0, 1.0, key=3)
    expected, _ = ref.update(g, ref.init(None))
    for key in (3, jax.random.key(3), jax.random.PRNGKey(3)):
        tx = private_aggregate(1.0, 1.0, key=key)
        assert same_bits(tx.update(g, tx.init(None))[0], expected)


def test_private_aggregate_in_chain_under_jit():
    params = {"w": jnp.ones((3,))}
    tx = optax.chain(private_aggregate(1.0, 0.5, key=0), optax.sgd(0.1))
    state = tx.init(params)

    @jax.jit
    def step(params, state, per_example):
        updates, state = tx.update(per_example, state, params)
        return optax.apply_updates(params, updates), state

    params, state = step(params, state, {"w": jnp.arange(12.0).reshape(4, 3)})
    assert np.isfinite(np.asarray(params["w"])).all()


def test_errors():
    g = {"w": jnp.ones((4, 2))}
    with pytest.raises(ConfigError, match="mode"):
        per_example_clip(g, 1.0, mode="layer")
    with pytest.raises(ConfigError, match=">= 0"):
        per_example_clip(g, -1.0)
    with pytest.raises(ConfigError, match="batch axis"):
        per_example_clip({"w": jnp.ones((4, 2)), "b": jnp.ones((3,))}, 1.0)
    with pytest.raises(ConfigError, match="batch axis"):
        per_example_clip({"w": jnp.float32(1.0)}, 1.0)
    with pytest.raises(ConfigError, match="empty"):
        per_example_clip({}, 1.0)
    with pytest.raises(ConfigError, match="key is required"):
        private_aggregate(1.0, 1.0, key=None)
    with pytest.raises(InputTypeError, match="key"):
        private_aggregate(1.0, 1.0, key="seed")
    with pytest.raises(ConfigError):
        private_aggregate(1.0, -0.5, key=0)
