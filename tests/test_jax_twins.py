"""optax twins (issue 13): GlobalNorm, AGC and BlockRMS with optax's semantics equal optax bit for bit in JAX.

``GlobalNorm(c, semantics="optax")``, ``AGC(λ, semantics="optax")`` (JAX layout) and ``BlockRMS(c)``
go through :mod:`gradclip.jax._exact` (optax's operations in optax's order and dtypes); ``Value(c)``
through the generic step, whose ``jnp.clip`` is already optax's. Every output is compared with
optax's on random pytrees (nested dicts and lists, float32 and bfloat16 leaves, ``None`` leaves,
zeros, NaN, Inf, a norm exactly at the threshold), eager and under ``jax.jit``, by bits. BlockRMS
is also checked in NumPy and torch against the float64 reference and optax (to a few ulp: they
multiply by a float32 factor), with hypothesis invariants; TensorFlow and Keras in their own test
files (importing TensorFlow costs more than this whole file).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp

import gradclip
from gradclip import _reference as ref
from gradclip import _step
from gradclip._errors import ConfigError
from gradclip._ops import NumpyOps
from gradclip._policies import Measurement
from gradclip._policies._agc import optax_unit_axes
from gradclip.jax import _exact
from gradclip.jax._ops import ops_for

BF16 = jnp.bfloat16
SEEDS = range(5)  # one of each KINDS


# -- random pytrees -------------------------------------------------------------------------------------------
F32 = jnp.float32
# (shape, dtype): one dtype per shape, so that seeds share JAX's compiled kernels (eager JAX compiles
# one per primitive, shape and dtype: most of this file's time)
NORM_SHAPES = [((), F32), ((5,), BF16), ((3, 4), F32), ((2, 3, 4), BF16), ((0,), F32)]
AGC_SHAPES = [((5,), F32), ((1, 6), BF16), ((4, 3), F32), ((3, 2, 4), BF16), ((2, 2, 3, 4), F32), ((), BF16)]
KINDS = ("normal", "zeros", "nan", "inf", "all_zero")


def _np_leaf(rng, shape, dtype, scale):
    return np.asarray(rng.normal(size=shape) * scale, dtype)  # cast on the host: no JAX kernel to compile


def _tree(seed, shapes, kind=None):
    """A nested dict/list pytree of float32 and bfloat16 leaves, with ``None`` leaves (equinox filters).

    ``kind``: "normal", one leaf of "zeros", one NaN, one -Inf, or "all_zero" (by seed when ``None``).
    """
    rng = np.random.default_rng(seed)
    kind = kind or KINDS[seed % len(KINDS)]
    scale = 10.0 ** rng.uniform(-2, 1.5)
    picks = [shapes[i] for i in rng.permutation(len(shapes))]
    leaves = [_np_leaf(rng, s, dtype, scale) for s, dtype in picks]
    sized = [i for i, x in enumerate(leaves) if x.size]
    hit = sized[int(rng.integers(len(sized)))]
    if kind in ("zeros", "all_zero"):
        for i in (range(len(leaves)) if kind == "all_zero" else [hit]):
            leaves[i][...] = 0
    elif kind in ("nan", "inf"):
        leaves[hit].reshape(-1)[int(rng.integers(leaves[hit].size))] = np.nan if kind == "nan" else -np.inf
    leaves = [jnp.asarray(x) for x in leaves]
    half = len(leaves) // 2
    return {"encoder": {"w": leaves[0], "frozen": None, "rest": leaves[1:half]},
            "decoder": [None, {"k": leaves[half]}, *leaves[half + 1:]]}


def _params_like(tree, seed):
    """Parameters for AGC: random, one leaf zero (eps floor), same dtypes and ``None`` leaves."""
    rng = np.random.default_rng(seed + 1000)
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    out = [_np_leaf(rng, x.shape, x.dtype, rng.uniform(0.01, 3.0)) for x in leaves]
    out[int(rng.integers(len(out)))][...] = 0
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in out])


def _bits(x):
    x = np.asarray(x)
    return x.view(np.uint16) if x.dtype == BF16 else x.view(np.uint32) if x.dtype == np.float32 else x


def assert_bitwise(got, want):
    """Same tree, dtypes and bits (NaN payloads included)."""
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(_bits(g), _bits(w))


def _exact_tree(policy, tree, params=None):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    names = tuple(str(i) for i in range(len(leaves)))
    p = None if params is None else jax.tree_util.tree_leaves(params)
    out, outcome = _exact.run(policy, leaves, p, names)
    return jax.tree_util.tree_unflatten(treedef, out), outcome


def _optax(tx, tree, params=None):
    return tx.update(tree, tx.init(tree), params)[0]


TWINS = [
    ("norm", lambda c: gradclip.GlobalNorm(c, semantics="optax"), optax.clip_by_global_norm, NORM_SHAPES),
    ("blockrms", gradclip.BlockRMS, optax.clip_by_block_rms, NORM_SHAPES),
    ("agc", lambda c: gradclip.AGC(c, semantics="optax"), optax.adaptive_grad_clip, AGC_SHAPES),
]


# -- the exact path, bit for bit --------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "make", "twin", "shapes"), TWINS, ids=[t[0] for t in TWINS])
@pytest.mark.parametrize("seed", SEEDS)
def test_exact_path_is_optax_bit_for_bit(name, make, twin, shapes, seed):
    tree = _tree(seed, shapes)
    params = _params_like(tree, seed) if name == "agc" else None
    c = [0.05, 0.5, 1.0, 3.0][seed % 4]
    got, outcome = _exact_tree(make(c), tree, params)
    assert_bitwise(got, _optax(twin(c), tree, params))
    assert outcome.norm.dtype == jnp.float32 and outcome.tensor_norms.shape == (len(jax.tree_util.tree_leaves(tree)),)


@pytest.mark.parametrize(("name", "make", "twin", "shapes"), TWINS, ids=[t[0] for t in TWINS])
@pytest.mark.parametrize("seed", [0, 3])  # normal, inf
def test_exact_path_is_optax_bit_for_bit_under_jit(name, make, twin, shapes, seed):
    tree = _tree(seed, shapes)
    params = _params_like(tree, seed) if name == "agc" else None
    got = jax.jit(lambda t, p: _exact_tree(make(0.5), t, p)[0])(tree, params)
    assert_bitwise(got, jax.jit(lambda t, p: _optax(twin(0.5), t, p))(tree, params))


@pytest.mark.parametrize("dtype", [jnp.float32, BF16])
def test_norm_exactly_at_max_norm_takes_optax_branch(dtype):
    # 3-4-5: the norm equals max_norm, so optax divides (norm < max_norm is False); so do we
    tree = {"a": jnp.array([3.0, 4.0, 0.0, 0.0, 0.0], dtype), "b": None, "c": [jnp.zeros((5,), dtype)]}
    policy = gradclip.GlobalNorm(5.0, semantics="optax")
    got, outcome = _exact_tree(policy, tree)
    assert_bitwise(got, _optax(optax.clip_by_global_norm(5.0), tree))
    assert float(outcome.norm) == 5.0 and float(outcome.coef) == 1.0 and not bool(outcome.clipped)
    # AGC at its limit: ||g|| == λ·||w|| exactly, and BlockRMS with rms == threshold
    g, w = {"k": jnp.array([3.0, 4.0, 0.0, 0.0, 0.0], dtype)}, {"k": jnp.array([6.0, 8.0, 0.0, 0.0, 0.0], dtype)}
    assert_bitwise(_exact_tree(gradclip.AGC(0.5, semantics="optax"), g, w)[0],
                   _optax(optax.adaptive_grad_clip(0.5), g, w))
    v = {"v": jnp.array([2.0, -2.0, 2.0, -2.0, 2.0], dtype)}
    assert_bitwise(_exact_tree(gradclip.BlockRMS(2.0), v)[0], _optax(optax.clip_by_block_rms(2.0), v))


def test_zero_threshold_and_zero_norm_give_optax_nan():
    tree = {"a": jnp.zeros((5,))}
    got, outcome = _exact_tree(gradclip.GlobalNorm(0.0, semantics="optax"), tree)
    assert_bitwise(got, _optax(optax.clip_by_global_norm(0.0), tree))
    assert np.isnan(np.asarray(got["a"])).all() and np.isnan(float(outcome.coef))


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_outcome_reports_what_happened(seed):
    tree = _tree(seed, NORM_SHAPES, kind="normal")
    leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]
    norm = ref.global_norm(leaves)
    _, o = _exact_tree(gradclip.GlobalNorm(0.5, semantics="optax"), tree)
    np.testing.assert_allclose(float(o.norm), norm, rtol=1e-2)  # bf16 leaves are summed in bf16, as optax does
    np.testing.assert_allclose(float(o.coef), min(1.0, 0.5 / float(o.norm)), rtol=1e-6)
    assert bool(o.clipped) == (norm > 0.5) and not bool(o.skipped) and o.threshold == 0.5
    np.testing.assert_allclose(np.asarray(o.tensor_norms), [ref.tensor_norm(x) for x in leaves], rtol=1e-2)
    out, rms = ref.block_rms(leaves, 0.1)
    _, o = _exact_tree(gradclip.BlockRMS(0.1), tree)
    np.testing.assert_allclose(np.asarray(o.tensor_norms), [ref.tensor_norm(x) for x in leaves], rtol=1e-2)
    np.testing.assert_allclose(float(o.clipped_norm), ref.global_norm(out), rtol=1e-2)
    assert o.coef is None and bool(o.clipped) == any(r > 0.1 for r in rms)


def test_exact_agc_outcome_and_exclusion():
    rng = np.random.default_rng(3)
    g = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "head": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}
    w = jax.tree_util.tree_map(lambda x: 0.5 * x, g)
    policy = gradclip.AGC(0.1, exclude=("head",), semantics="optax")
    leaves, names = [g["head"], g["w"]], ("head", "w")
    out, o = _exact.run(policy, leaves, [w["head"], w["w"]], names)
    assert _bits(out[0]).tolist() == _bits(g["head"]).tolist()  # excluded: passes through
    expected = ref.optax_agc(np.asarray(g["w"]), np.asarray(w["w"]), 0.1, 1e-3, (0,))
    np.testing.assert_allclose(np.asarray(out[1]), expected, rtol=1e-6)
    clipped_norm = math.hypot(ref.tensor_norm(np.asarray(g["head"])), ref.tensor_norm(expected))
    np.testing.assert_allclose(float(o.clipped_norm), clipped_norm, rtol=1e-5)
    assert bool(o.clipped) and o.threshold == 0.1


def test_handles_only_the_twins():
    assert _exact.handles(gradclip.GlobalNorm(1.0, semantics="optax"))
    assert not _exact.handles(gradclip.GlobalNorm(1.0))  # torch's epsilon: the generic path
    assert not _exact.handles(gradclip.GlobalNorm(1.0, norm_type=1.0, semantics="optax"))
    assert _exact.handles(gradclip.AGC(semantics="optax")) and not _exact.handles(gradclip.AGC())
    assert not _exact.handles(gradclip.AGC(semantics="optax"), layout="torch")
    assert _exact.handles(gradclip.BlockRMS()) and not _exact.handles(gradclip.BlockRMS(), axis_name="dp")
    assert not _exact.handles(gradclip.Value(1.0)) and not _exact.handles(gradclip.ZClip())
    with pytest.raises(ConfigError, match="no optax twin"):
        _exact.run(gradclip.ZClip(), [jnp.ones(2)], None, ("a",))


def test_value_generic_path_is_optax_clip_bit_for_bit():
    tree = _tree(2, NORM_SHAPES)  # with a NaN
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    names = tuple(map(str, range(len(leaves))))
    out = jax.jit(lambda x: _step.run(gradclip.Value(0.3), x, {}, ops_for(jnp.float32), names=names, layout="jax")[0])
    assert_bitwise(jax.tree_util.tree_unflatten(treedef, out(leaves)), jax.jit(lambda t: _optax(optax.clip(0.3), t))(tree))


def test_generic_global_norm_optax_coefficient_matches_optax():
    # the NumPy/torch/TF path multiplies by where(norm < c, 1, c / norm): optax's numbers to float32 rounding
    for tree, c in [(_tree(1, NORM_SHAPES, kind="normal"), 0.5), ({"a": jnp.array([3.0, 4.0, 0.0, 0.0, 0.0])}, 5.0)]:
        leaves = [np.asarray(x, np.float32) for x in jax.tree_util.tree_leaves(tree)]
        out, outcome, _ = _step.run(gradclip.GlobalNorm(c, semantics="optax"), leaves, {}, NumpyOps,
                                    names=tuple(map(str, range(len(leaves)))))
        twin = jax.tree_util.tree_leaves(jax.jit(lambda t, c=c: _optax(optax.clip_by_global_norm(c), t))(
            jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), tree)))
        _close(out, [np.asarray(x, np.float64) for x in twin], rtol=1e-6)
    assert float(outcome.coef) == 1.0 and not bool(outcome.clipped)  # norm == max_norm: factor 1


# -- through gradclip.jax.transform ----------------------------------------------------------------------------
def _transform():
    gjax = pytest.importorskip("gradclip.jax")
    if not hasattr(gjax, "transform"):
        pytest.skip("gradclip.jax.transform is not there yet")
    return gjax.transform


@pytest.mark.parametrize(("name", "make", "twin", "shapes"),
                         [*TWINS, ("value", gradclip.Value, optax.clip, NORM_SHAPES)],
                         ids=[t[0] for t in TWINS] + ["value"])
@pytest.mark.parametrize("seed", [0])  # bf16, zeros, None leaves (NaN and Inf: the tests above)
def test_transform_is_optax_bit_for_bit(name, make, twin, shapes, seed):
    transform = _transform()
    tree = _tree(seed, shapes)
    params = _params_like(tree, seed) if name == "agc" else tree
    tx, ox = transform(make(0.5)), twin(0.5)
    got = jax.jit(tx.update)(tree, tx.init(params), params)[0]
    assert_bitwise(got, jax.jit(ox.update)(tree, ox.init(params), params)[0])
    if seed == 0 and name == "norm":  # and eager (each primitive compiled alone: slow, so once)
        assert_bitwise(tx.update(tree, tx.init(params), params)[0], ox.update(tree, ox.init(params), params)[0])


# -- AGC(semantics="optax") ------------------------------------------------------------------------------------
def test_optax_unit_axes_follow_optax():
    assert optax_unit_axes((5,)) is None and optax_unit_axes(()) is None and optax_unit_axes((1, 6)) is None
    assert optax_unit_axes((4, 3)) == (0,) and optax_unit_axes((3, 2, 4)) == (0,)
    assert optax_unit_axes((2, 2, 3, 4)) == (0, 1, 2) and optax_unit_axes((2, 2, 2, 3, 4)) == (0, 1, 2, 3)
    assert optax_unit_axes((5,), axis=0) == (0,) and optax_unit_axes((2, 3), axis=-1) == (1,)
    with pytest.raises(ConfigError, match="ranks 1 to 5"):
        optax_unit_axes((2,) * 6)
    with pytest.raises(ConfigError, match="does not fit"):
        optax_unit_axes((5,), axis=(0, 1))
    # the default semantics keep the layout rule: rank 3 reduces all but the last axis
    assert gradclip.AGC().axes_for((3, 2, 4), "jax") == (0, 1)
    assert gradclip.AGC(semantics="optax").axes_for((3, 2, 4), "torch") == (1, 2)


@pytest.mark.parametrize("axis", [None, 1, (0, 1)])
def test_agc_optax_with_axis_is_bit_for_bit(axis):
    rng = np.random.default_rng(7)
    g = {"a": jnp.asarray(rng.normal(size=(3, 2, 4)), BF16), "b": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    w = jax.tree_util.tree_map(lambda x: x * 0.2, g)
    got = _exact_tree(gradclip.AGC(0.05, axis=axis, semantics="optax"), g, w)[0]
    assert_bitwise(got, _optax(optax.adaptive_grad_clip(0.05, axis=axis), g, w))


@pytest.mark.parametrize("shape", [(5,), (1, 6), (4, 3), (3, 2, 4), (2, 2, 3, 4)])
def test_agc_optax_generic_paths_match_the_reference(shape):
    # NumPy (and so Keras/TF, which share the step) in the JAX layout: within float32 rounding of optax
    rng = np.random.default_rng(len(shape))
    g = rng.normal(size=shape).astype(np.float32)
    w = (rng.normal(size=shape) * 0.3).astype(np.float32)
    policy = gradclip.AGC(0.05, semantics="optax")
    out, _, _ = _step.run(policy, [g], {}, NumpyOps, names=("k",), params=[w], layout="jax")
    expected = ref.optax_agc(g, w, 0.05, 1e-3, optax_unit_axes(shape))
    np.testing.assert_allclose(out[0], expected, rtol=2e-6, atol=1e-30)
    twin = _optax(optax.adaptive_grad_clip(0.05), jnp.asarray(g), jnp.asarray(w))
    np.testing.assert_allclose(out[0], np.asarray(twin), rtol=2e-6, atol=1e-30)


def test_agc_optax_trigger_in_torch_layout():
    torch = pytest.importorskip("torch")
    import gradclip.torch as gct

    rng = np.random.default_rng(5)
    g, w = rng.normal(size=(4, 3)).astype(np.float32), (0.2 * rng.normal(size=(4, 3))).astype(np.float32)
    p = torch.nn.Parameter(torch.tensor(w))
    p.grad = torch.tensor(g)
    gct.Clipper(gradclip.AGC(0.05, semantics="optax")).step([p])
    np.testing.assert_allclose(p.grad.numpy(), ref.optax_agc(g, w, 0.05, 1e-3, (1,)), rtol=2e-6)


def test_agc_semantics_is_validated_and_round_trips():
    with pytest.raises(ConfigError, match="semantics"):
        gradclip.AGC(semantics="tf")
    policy = gradclip.AGC(0.02, axis=1, semantics="optax")
    assert gradclip.parse_policy(policy.spec()) == policy and "semantics=optax" in policy.spec()
    assert gradclip.AGC().spec() == "agc:0.01"


# -- BlockRMS in every adapter ---------------------------------------------------------------------------------
RMS_CASES = [np.array([3.0, 4.0, 0.0, 12.0], np.float32), np.zeros((2, 3), np.float32),
             np.array([[0.1, -0.2], [0.05, 0.0]], np.float32), np.array([np.nan, 1.0], np.float32),
             np.array([np.inf, 1.0, 0.0], np.float32), np.array([], np.float32), np.float32(7.0).reshape(())]


def _rms_expected(grads, threshold):
    with np.errstate(invalid="ignore"):
        return ref.block_rms(grads, threshold)[0]


def _close(got, want, rtol=3e-7):
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=rtol, atol=1e-37)


def test_blockrms_numpy_matches_reference_and_optax():
    out, outcome, _ = _step.run(gradclip.BlockRMS(0.5), list(RMS_CASES), {}, NumpyOps, names=tuple("abcdefg"))
    _close(out, _rms_expected(RMS_CASES, 0.5))
    twin = _optax(optax.clip_by_block_rms(0.5), [jnp.asarray(x) for x in RMS_CASES])
    _close(out, [np.asarray(x, np.float64) for x in twin])
    assert outcome.coef is None and bool(outcome.clipped)


def test_blockrms_torch_matches_reference_and_optax():
    torch = pytest.importorskip("torch")
    import gradclip.torch as gct

    params = [torch.nn.Parameter(torch.zeros(x.shape)) for x in RMS_CASES]
    for p, x in zip(params, RMS_CASES):
        p.grad = torch.tensor(x)
    stats = gct.Clipper(gradclip.BlockRMS(0.5)).step(params)
    _close([p.grad.numpy() for p in params], _rms_expected(RMS_CASES, 0.5))
    twin = _optax(optax.clip_by_block_rms(0.5), [jnp.asarray(x) for x in RMS_CASES])
    _close([p.grad.numpy() for p in params], [np.asarray(x, np.float64) for x in twin])
    assert bool(stats.clipped)
    # bfloat16: one bf16 ulp (optax rounds the RMS to bf16, we keep it in float32)
    x = torch.tensor(np.random.default_rng(0).normal(size=(8, 8)) * 3).to(torch.bfloat16)
    p = torch.nn.Parameter(torch.zeros_like(x))
    p.grad = x.clone()
    gct.Clipper(gradclip.BlockRMS(1.0)).step([p])
    twin = optax.clip_by_block_rms(1.0).update(jnp.asarray(x.float().numpy(), BF16), None)[0]
    np.testing.assert_allclose(p.grad.float().numpy(), np.asarray(twin, np.float32), rtol=2 ** -7)


def test_blockrms_in_a_chain_and_as_a_spec():
    policy = gradclip.parse_policy("norm:100.0+blockrms:0.5")
    g = [RMS_CASES[0], RMS_CASES[2]]
    out, _, _ = _step.run(policy, g, {}, NumpyOps, names=("a", "b"))
    _close(out, _rms_expected(g, 0.5))  # the global norm (13) is under 100
    assert gradclip.parse_policy("blockrms:0.5") == gradclip.BlockRMS(0.5) and gradclip.BlockRMS().spec() == "blockrms:1.0"


def test_blockrms_errors_are_typed():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="threshold"):
            gradclip.BlockRMS(bad)
    m = Measurement(norm=np.float32(1.0), tensor_norms=np.ones(1, np.float32))
    with pytest.raises(ConfigError, match="sizes=None"):
        gradclip.BlockRMS().decide(m, {}, NumpyOps)


FINITE = st.floats(-1e6, 1e6, allow_nan=False, width=32)
SHAPES = st.lists(st.integers(0, 6), min_size=0, max_size=3).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), threshold=st.floats(1e-3, 1e3), n=st.integers(1, 4))
def test_blockrms_invariants(data, threshold, n):
    grads = [np.asarray(data.draw(st.lists(FINITE, min_size=math.prod(s), max_size=math.prod(s))), np.float32).reshape(s)
             for s in (data.draw(SHAPES) for _ in range(n))]
    policy = gradclip.BlockRMS(threshold)
    once, _, _ = _step.run(policy, grads, {}, NumpyOps, names=tuple(map(str, range(n))))
    twice, _, _ = _step.run(policy, once, {}, NumpyOps, names=tuple(map(str, range(n))))
    for g, o, t in zip(grads, once, twice):
        rms = ref.tensor_norm(o) / math.sqrt(max(o.size, 1))
        assert rms <= threshold * (1 + 1e-6)  # every tensor's RMS at most the threshold
        if g.size and ref.tensor_norm(g) > 0:  # direction kept: o = c·g with 0 < c <= 1
            c = ref.tensor_norm(o) / ref.tensor_norm(g)
            assert 0 < c <= 1 + 1e-7
            np.testing.assert_allclose(o, g * c, rtol=1e-5, atol=1e-30)
        np.testing.assert_allclose(t, o, rtol=1e-6, atol=1e-30)  # idempotent
