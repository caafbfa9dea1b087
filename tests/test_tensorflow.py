"""gradclip.tensorflow: parity with tf.clip_by_*, the float64 oracle, tf.function, state, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import gradclip  # noqa: E402
import gradclip.tensorflow as gtf  # noqa: E402
from gradclip import _reference as ref  # noqa: E402

RNG = np.random.default_rng(0)
SHAPES = [(3, 4), (5,), (2, 3, 2), ()]


def _grads(scale=10.0, dtype=np.float32):
    return [tf.constant((RNG.standard_normal(s) * scale).astype(dtype)) for s in SHAPES]


def _np(xs):
    return [None if x is None else tf.convert_to_tensor(x).numpy() for x in xs]


@pytest.mark.parametrize("c", [0.5, 1.0, 100.0])
def test_global_norm_matches_tf(c):
    grads = _grads()
    want, want_norm = tf.clip_by_global_norm(grads, c)
    got, stats = gtf.clip(grads, gradclip.GlobalNorm(c, semantics="tf"))
    np.testing.assert_allclose(float(stats.norm), float(want_norm), rtol=1e-6)
    for a, b in zip(_np(got), _np(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("c", [0.5, 2.0])
def test_per_tensor_norm_matches_tf(c):
    grads = _grads()
    got, _ = gtf.clip(grads, gradclip.PerTensorNorm(c, semantics="tf"))
    for g, a in zip(grads, _np(got)):
        np.testing.assert_allclose(a, tf.clip_by_norm(g, c).numpy(), rtol=1e-6, atol=1e-7)


def test_value_matches_tf():
    grads = _grads()
    got, stats = gtf.clip(grads, gradclip.Value(0.7))
    for g, a in zip(grads, _np(got)):
        np.testing.assert_array_equal(a, tf.clip_by_value(g, -0.7, 0.7).numpy())
    assert bool(stats.clipped) and stats.coef is None


def test_none_entries_and_indexed_slices_match_tf():
    dense = tf.constant(RNG.standard_normal((6, 3)).astype(np.float32) * 5)
    sl = tf.IndexedSlices(tf.constant(RNG.standard_normal((4, 3)).astype(np.float32) * 5),
                          tf.constant([0, 2, 2, 5], tf.int64), tf.constant([6, 3], tf.int64))
    grads = [dense, None, sl]
    want, want_norm = tf.clip_by_global_norm(grads, 1.0)
    got, stats = gtf.clip(grads, gradclip.GlobalNorm(1.0, semantics="tf"))
    assert got[1] is None and isinstance(got[2], tf.IndexedSlices)
    np.testing.assert_allclose(float(stats.norm), float(want_norm), rtol=1e-6)
    np.testing.assert_allclose(got[0].numpy(), want[0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(got[2].values.numpy(), want[2].values.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(got[2].indices.numpy(), want[2].indices.numpy())
    # clip_by_norm and clip_by_value on IndexedSlices, stored rows as they are
    got_n, _ = gtf.clip([sl], gradclip.PerTensorNorm(1.0, semantics="tf"))
    np.testing.assert_allclose(got_n[0].values.numpy(), tf.clip_by_norm(sl, 1.0).values.numpy(), rtol=1e-6)
    got_v, _ = gtf.clip([sl], gradclip.Value(0.3), sparse="values")
    np.testing.assert_array_equal(got_v[0].values.numpy(), tf.clip_by_value(sl, -0.3, 0.3).values.numpy())


def test_default_semantics_measure_the_dense_sum_of_indexed_slices():
    values = np.array([[3.0, 0.0], [1.0, 0.0]], np.float32)
    sl = tf.IndexedSlices(tf.constant(values), tf.constant([1, 1], tf.int64), tf.constant([3, 2], tf.int64))
    got, stats = gtf.clip([sl], gradclip.GlobalNorm(100.0))
    assert float(stats.norm) == pytest.approx(4.0)  # the dense row is [4, 0]; TF would say sqrt(10)
    np.testing.assert_allclose(tf.convert_to_tensor(got[0]).numpy(), tf.convert_to_tensor(sl).numpy())
    _, tf_stats = gtf.clip([sl], gradclip.GlobalNorm(100.0, semantics="tf"))
    assert float(tf_stats.norm) == pytest.approx(np.sqrt(10.0))


@pytest.mark.parametrize("p", [1.0, 2.0, float("inf")])
def test_torch_semantics_against_float64_oracle(p):
    grads = _grads(dtype=np.float64)
    got, stats = gtf.clip(grads, gradclip.GlobalNorm(1.0, norm_type=p))
    arrays = _np(grads)
    want, _ = ref.clip_global_norm(arrays, 1.0, p)
    np.testing.assert_allclose(float(stats.norm), ref.global_norm(arrays, p), rtol=1e-12)
    for a, b in zip(_np(got), want):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_agc_needs_variables_and_matches_oracle():
    with pytest.raises(gradclip.ConfigError, match="variables"):
        gtf.clip(_grads(), gradclip.AGC(0.01))
    ws = [tf.Variable(RNG.standard_normal((4, 3)).astype(np.float64), name="k")]
    gs = [tf.constant(RNG.standard_normal((4, 3)).astype(np.float64))]
    got, _ = gtf.clip(gs, gradclip.AGC(0.01), variables=ws)
    want = ref.agc(gs[0].numpy(), ws[0].numpy(), 0.01, 1e-3, axes=(0,))  # Keras/TF kernels: [in, out]
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-12)


def test_inside_tf_function_matches_eager():
    grads = _grads()
    fn = tf.function(lambda gs: gtf.clip(gs, gradclip.GlobalNorm(1.0))[0])
    for a, b in zip(_np(fn(grads)), _np(gtf.clip(grads, gradclip.GlobalNorm(1.0))[0])):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_stateful_policy_needs_clipper():
    with pytest.raises(gradclip.ConfigError, match="Clipper"):
        gtf.clip(_grads(), gradclip.ZClip())


@pytest.mark.parametrize("spec", ["zclip", "autoclip:p=25", "maxhist:2,window=5", "adagc:warmup_steps=3",
                                  "spikeguard+norm:1.0", "autoclip:p=50,scope=tensor,window=4"])
def test_clipper_in_tf_function_matches_numpy_step(spec):
    """The TF Clipper, traced once, follows the NumPy run of the same policy step by step."""
    from gradclip import _step
    from gradclip._ops import NumpyOps

    policy = _step.fixed_shape(gradclip.parse_policy(spec), 100)
    clipper = gtf.Clipper(spec, history=100)
    variables = [tf.Variable(np.zeros(s, np.float32), name=f"v{i}") for i, s in enumerate(SHAPES)]
    names = tuple(v.name for v in variables)
    state = None
    step = tf.function(lambda gs: clipper(gs, variables)[0])
    for t in range(12):
        grads = _grads(scale=1.0 + 5 * (t % 4 == 3))
        got = step(grads)
        arrays = _np(grads)
        if state is None:
            state, _ = _step.initial_state(policy, [a.shape for a in arrays], names, np.float32)
        want, outcome, state = _step.run(policy, arrays, state, NumpyOps, names=names)
        for a, b in zip(_np(got), want):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    last = clipper.last_stats()
    assert last.norm == pytest.approx(float(outcome.norm), rel=1e-5)
    assert step.experimental_get_tracing_count() <= 2  # TF traces twice when the first call creates variables


def test_clipper_checkpoint_resume_is_identical(tmp_path):
    def run(clipper, steps, seed):
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(steps):
            gs = [tf.constant(rng.standard_normal((3, 2)).astype(np.float32) * rng.uniform(0.5, 5))]
            out.append(float(clipper(gs)[1].clipped_norm))
        return out

    full = gtf.Clipper("zclip:warmup_steps=3")
    run(full, 5, 0)
    ckpt = tf.train.Checkpoint(clipper=full)
    path = ckpt.save(str(tmp_path / "c"))
    tail = run(full, 5, 1)
    fresh = gtf.Clipper("zclip:warmup_steps=3")
    tf.train.Checkpoint(clipper=fresh).restore(path)  # restored when the variables are created
    assert run(fresh, 5, 1) == tail


@pytest.mark.parametrize("mode", ["skip", "zero", "propagate"])
def test_nonfinite_modes(mode):
    grads = [tf.constant([1.0, np.nan]), tf.constant([2.0])]
    clipper = gtf.Clipper("zclip", nonfinite=mode)
    out, stats = clipper(grads, [tf.Variable([0.0, 0.0], name="a"), tf.Variable([0.0], name="b")])
    assert bool(stats.nonfinite)
    assert [o.name for o in stats.offenders] == ["a:0"]
    if mode == "skip":
        assert bool(stats.skipped)
        np.testing.assert_array_equal(out[1].numpy(), [2.0])
    if mode == "zero":
        assert not np.any(out[0].numpy()) and not bool(stats.skipped)
    assert int(clipper.state["count"].numpy()) == 0  # a non-finite step never changes the state


def test_nonfinite_error_eager_and_graph():
    grads = [tf.constant([1.0, np.inf])]
    with pytest.raises(gradclip.NonFiniteError, match="grads\\[0\\]") as info:
        gtf.clip(grads, "norm:1.0", nonfinite="error")
    assert info.value.offenders[0].inf_count == 1
    fn = tf.function(lambda gs: gtf.clip(gs, "norm:1.0", nonfinite="error")[0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="grads\\[0\\]"):
        fn(grads)


def test_bad_input_is_typed():
    with pytest.raises(gradclip.InputTypeError, match="list of gradients"):
        gtf.clip(tf.constant([1.0]), "norm:1.0")
    with pytest.raises(gradclip.InputTypeError, match="Received: str"):
        gtf.clip(["x"], "norm:1.0")
    with pytest.raises(gradclip.ConfigError, match="one to one"):
        gtf.clip([tf.constant([1.0])], "norm:1.0", variables=[])
    with pytest.raises(gradclip.ConfigError, match="sparse"):
        gtf.clip([tf.constant([1.0])], "norm:1.0", sparse="dense")


def test_empty_and_all_none():
    out, stats = gtf.clip([None, None], "norm:1.0")
    assert out == [None, None] and float(stats.norm) == 0.0


def test_compare_framework_tensorflow_shows_the_before_after_picture(tmp_path):
    from gradclip.experiments import compare

    out = compare("regression", ["none", "norm:1.0"], [1], framework="tensorflow", log_dir=tmp_path)
    assert out["framework"] == "tensorflow"
    none, norm = out["runs"]
    assert none["diverged"] and none["first_nonfinite_step"] is not None
    assert not norm["diverged"] and norm["final_loss"] < 5.0
    start, first = map(json.loads, open(norm["log"]).readlines()[:2])
    assert start["event"] == "start" and start["framework"] == "tensorflow"
    assert first["clipped"] and first["clipped_norm"] == pytest.approx(1.0, rel=1e-5)


def test_clipper_refuses_a_call_with_another_number_of_gradients():
    a, b = tf.Variable([3.0, 4.0]), tf.Variable([1.0])
    clipper = gtf.Clipper("norm:1.0")
    clipper([tf.constant([3.0, 4.0]), tf.constant([1.0])], [a, b])
    before = clipper.last_stats()
    with pytest.raises(gradclip.InputTypeError, match="built on 2 gradient"):
        clipper([tf.constant([3.0, 4.0])], [a])
    with pytest.raises(gradclip.InputTypeError, match="received 1"):
        clipper([tf.constant([3.0, 4.0]), None], [a, b])
    assert float(clipper.last_stats().norm) == float(before.norm)  # nothing was recorded


def test_agc_exclusion_by_module_type_is_refused_not_ignored():
    agc = gradclip.AGC(exclude=(tf.keras.layers.Dense,))
    with pytest.raises(gradclip.ConfigError, match="exclude"):
        gtf.Clipper(agc)
    with pytest.raises(gradclip.ConfigError, match="exclude"):
        gtf.clip([tf.constant([1.0])], agc)


def test_blockrms_matches_reference_and_optax_semantics():
    # BlockRMS (optax.clip_by_block_rms) through the generic step: within float32 rounding
    grads = [np.array([3.0, 4.0, 0.0, 12.0], np.float32), np.zeros((2, 3), np.float32),
             np.array([np.nan, 1.0], np.float32), np.array([np.inf, 1.0, 0.0], np.float32), np.array([], np.float32)]
    out, stats = gtf.clip([tf.constant(g) for g in grads], gradclip.BlockRMS(0.5))
    with np.errstate(invalid="ignore"):
        expected = ref.block_rms(grads, 0.5)[0]
    for o, e in zip(out, expected):
        np.testing.assert_allclose(o.numpy(), e, rtol=3e-7, atol=1e-37)
    assert bool(stats.clipped) and stats.coef is None


def test_blockrms_measures_a_sparse_gradient_as_the_dense_tensor():
    # the RMS is over the whole variable: rows an IndexedSlices does not store count as zeros
    values = np.array([[3.0, 4.0], [6.0, 8.0]], np.float32)
    sl = tf.IndexedSlices(tf.constant(values), tf.constant([0, 2], tf.int64), tf.constant([4, 2], tf.int64))
    dense = np.zeros((4, 2), np.float32)
    dense[[0, 2]] = values
    out, _ = gtf.clip([sl], gradclip.BlockRMS(1.0))
    np.testing.assert_allclose(tf.convert_to_tensor(out[0]).numpy(), ref.block_rms([dense], 1.0)[0][0], rtol=3e-7)
