"""The float64 NumPy oracle itself, against hand-computed values and direct NumPy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gradclip import _reference as ref

NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------- norms, by hand
@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (2.0, 5.0),
        (1.0, 7.0),
        (INF, 4.0),
        (3.0, 91.0 ** (1 / 3)),
        (0.5, (math.sqrt(3.0) + 2.0) ** 2),
    ],
)
def test_tensor_norm_of_3_4_by_hand(p, expected):
    assert ref.tensor_norm(np.array([3.0, -4.0]), p) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize(("p", "expected"), [(2.0, 5.0), (1.0, 7.0), (INF, 4.0), (0.5, (math.sqrt(3.0) + 2.0) ** 2)])
def test_global_norm_of_3_4_split_over_tensors(p, expected):
    grads = [np.array([3.0]), np.array([[-4.0]]), np.zeros((0, 3))]
    assert ref.global_norm(grads, p) == pytest.approx(expected, rel=1e-15)


def test_tensor_norm_views_any_shape_as_a_vector():
    g = np.arange(24.0).reshape(2, 3, 4) - 11.5
    assert ref.tensor_norm(g, 2.0) == pytest.approx(math.sqrt(sum(x * x for x in g.ravel())), rel=1e-14)
    assert ref.tensor_norm(np.array(-2.5), INF) == 2.5  # 0-d array


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF, 0.5])
def test_empty_arrays_have_norm_zero(p):
    assert ref.tensor_norm(np.zeros((0,)), p) == 0.0
    assert ref.tensor_norm(np.zeros((3, 0)), p) == 0.0
    assert ref.global_norm([], p) == 0.0
    assert ref.global_norm([np.zeros((0,)), np.zeros((2, 0))], p) == 0.0


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF, 0.5])
def test_all_zero_arrays_have_norm_zero(p):
    assert ref.tensor_norm(np.zeros((4, 4)), p) == 0.0


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF])
def test_global_norm_matches_numpy_linalg(seed, p):
    rng = np.random.default_rng(seed)
    grads = [rng.normal(size=s) * rng.uniform(0.1, 10) for s in [(3, 4), (7,), (), (2, 2, 2)]]
    flat = np.concatenate([g.ravel() for g in grads])
    assert ref.global_norm(grads, p) == pytest.approx(np.linalg.norm(flat, ord=p), rel=1e-13)
    for g in grads:
        assert ref.tensor_norm(g, p) == pytest.approx(np.linalg.norm(g.ravel(), ord=p), rel=1e-13)


@pytest.mark.parametrize("seed", range(5))
def test_global_norm_p_half_matches_the_direct_formula(seed):
    rng = np.random.default_rng(seed)
    grads = [rng.normal(size=s) for s in [(5,), (2, 3)]]
    flat = np.abs(np.concatenate([g.ravel() for g in grads]))
    assert ref.global_norm(grads, 0.5) == pytest.approx(np.sum(flat**0.5) ** 2, rel=1e-13)


# ----------------------------------------------------------------------------- overflow / underflow
@pytest.mark.parametrize("big", [1e200, 1e300])
def test_huge_values_do_not_overflow(big):
    with np.errstate(over="ignore"):
        naive = float(np.sqrt(np.sum(np.array([big, big]) ** 2)))
    assert naive == INF  # the direct formula overflows...
    assert ref.tensor_norm(np.array([big, big])) == pytest.approx(math.sqrt(2.0) * big, rel=1e-15)  # ...the oracle not
    assert ref.global_norm([np.array([big]), np.array([big])]) == pytest.approx(math.sqrt(2.0) * big, rel=1e-15)
    assert ref.tensor_norm(np.array([big, -big, big]), 1.0) == pytest.approx(3 * big, rel=1e-15)


def test_tiny_values_do_not_underflow():
    tiny = 1e-200
    assert float(np.sqrt(np.sum(np.array([tiny, tiny]) ** 2))) == 0.0
    assert ref.tensor_norm(np.array([tiny, tiny])) == pytest.approx(math.sqrt(2.0) * tiny, rel=1e-15)


def test_clip_global_norm_of_huge_values_is_finite():
    out, norm = ref.clip_global_norm([np.array([3e200]), np.array([4e200])], max_norm=1.0, semantics="tf")
    assert norm == pytest.approx(5e200, rel=1e-15)
    assert [float(x[0]) for x in out] == pytest.approx([0.6, 0.8], rel=1e-15)


# ----------------------------------------------------------------------------- non-finite input
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF, 0.5])
def test_nan_gives_nan_norm(p):
    assert math.isnan(ref.tensor_norm(np.array([1.0, NAN]), p))
    assert math.isnan(ref.global_norm([np.array([1.0]), np.array([NAN])], p))


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, INF, 0.5])
def test_inf_gives_inf_norm(p):
    assert ref.tensor_norm(np.array([1.0, -INF]), p) == INF
    assert ref.global_norm([np.array([1.0]), np.array([INF])], p) == INF


# ----------------------------------------------------------------------------- coefficients
@pytest.mark.parametrize(
    ("norm", "max_norm", "semantics", "expected"),
    [
        (5.0, 1.0, "torch", 1.0 / (5.0 + 1e-6)),
        (0.5, 1.0, "torch", 1.0),
        (1.0, 1.0, "torch", 1.0 / (1.0 + 1e-6)),  # the epsilon clips a norm equal to the threshold
        (0.0, 0.0, "torch", 0.0),
        (3.0, 0.0, "torch", 0.0),
        (INF, 1.0, "torch", 0.0),
        (3.0, INF, "torch", 1.0),
        (5.0, 1.0, "tf", 0.2),
        (1.0, 1.0, "tf", 1.0),
        (0.5, 1.0, "tf", 1.0),
        (0.0, 0.0, "tf", 1.0),
        (3.0, 0.0, "tf", 0.0),
        (3.0, INF, "tf", 1.0),
        (5.0, 1.0, "keras", 0.2),
        (5.0, 1.0, "optax", 0.2),
        (1.0, 1.0, "optax", 1.0),
        (0.5, 1.0, "optax", 1.0),
        (INF, 1.0, "optax", 0.0),
        (3.0, 0.0, "optax", 0.0),
    ],
)
def test_coef_by_hand(norm, max_norm, semantics, expected):
    assert ref.coef(norm, max_norm, semantics) == pytest.approx(expected, rel=1e-15, abs=0)


@pytest.mark.parametrize(
    ("norm", "max_norm", "semantics"),
    [
        (NAN, 1.0, "torch"),
        (INF, INF, "torch"),  # torch: clamp(inf / inf) is NaN
        (NAN, 1.0, "tf"),
        (INF, 1.0, "tf"),  # tf/keras: NaN whenever the norm is not finite
        (INF, 1.0, "keras"),
        (NAN, 1.0, "optax"),
        (0.0, 0.0, "optax"),  # optax: 0 / 0
    ],
)
def test_coef_nan_cases(norm, max_norm, semantics):
    assert math.isnan(ref.coef(norm, max_norm, semantics))


def test_coef_unknown_semantics():
    with pytest.raises(ValueError, match="semantics"):
        ref.coef(1.0, 1.0, "jax")


# ----------------------------------------------------------------------------- clipping
def test_clip_global_norm_3_4_5():
    inputs = [np.array([3.0], dtype=np.float32), np.array([4])]
    out, norm = ref.clip_global_norm(inputs, max_norm=1.0)
    assert norm == 5.0
    c = 1.0 / (5.0 + 1e-6)
    assert [x.dtype for x in out] == [np.float64, np.float64]
    assert [float(x[0]) for x in out] == [3.0 * c, 4.0 * c]
    assert inputs[0][0] == 3.0 and inputs[1][0] == 4  # inputs untouched


def test_clip_global_norm_below_threshold_is_identity():
    g = [np.array([0.3, -0.4])]
    out, norm = ref.clip_global_norm(g, max_norm=1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(out[0], g[0])
    assert out[0] is not g[0]


@pytest.mark.parametrize("semantics", ["torch", "tf", "optax"])
def test_clip_global_norm_result_has_norm_max_norm(semantics):
    rng = np.random.default_rng(0)
    g = [rng.normal(size=(4, 5)) * 10, rng.normal(size=7) * 10]
    out, norm = ref.clip_global_norm(g, max_norm=2.0, p=2.0, semantics=semantics)
    flat_before = np.concatenate([x.ravel() for x in g])
    flat_after = np.concatenate([x.ravel() for x in out])
    assert norm == pytest.approx(np.linalg.norm(flat_before), rel=1e-14)
    assert np.linalg.norm(flat_after) == pytest.approx(2.0, rel=1e-6)
    np.testing.assert_allclose(flat_after * norm / 2.0, flat_before, rtol=1e-6)


def test_clip_tensor_norm_scales_each_tensor_separately():
    g = [np.array([3.0, 4.0]), np.array([0.1, 0.0]), np.array([0.0, 0.0])]
    out, norms = ref.clip_tensor_norm(g, max_norm=1.0, semantics="tf")
    assert norms == [5.0, 0.1, 0.0]
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-15)
    np.testing.assert_array_equal(out[1], [0.1, 0.0])
    np.testing.assert_array_equal(out[2], [0.0, 0.0])


def test_clip_tensor_norm_inf_order():
    out, norms = ref.clip_tensor_norm([np.array([-3.0, 1.5])], max_norm=1.5, p=INF, semantics="optax")
    assert norms == [3.0]
    np.testing.assert_array_equal(out[0], [-1.5, 0.75])


def test_clip_value_symmetric_and_one_sided():
    g = [np.array([-2.0, -0.5, 0.0, 0.5, 2.0, NAN])]
    np.testing.assert_array_equal(ref.clip_value(g, -1.0, 1.0)[0], [-1.0, -0.5, 0.0, 0.5, 1.0, NAN])
    np.testing.assert_array_equal(ref.clip_value(g, None, 0.25)[0], [-2.0, -0.5, 0.0, 0.25, 0.25, NAN])
    np.testing.assert_array_equal(ref.clip_value(g, -0.25, None)[0], [-0.25, -0.25, 0.0, 0.5, 2.0, NAN])
    assert g[0][0] == -2.0  # input untouched
