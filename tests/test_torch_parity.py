"""``gradclip.torch`` drop-ins against ``torch.nn.utils``: same return values, same gradients, bitwise.

On the CPU torch is deterministic, so "the same numbers" means bit for bit (``assert_bitwise``
compares dtype, device, shape and bits). The few places where gradclip differs from torch on
purpose (refusing negative thresholds and non-norm orders, naming non-finite parameters, the
``nonfinite=``/``norm_dtype=`` extensions) are tested at the end.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip import _reference as ref  # noqa: E402
from conftest import assert_bitwise, assert_same_grads, clone_params, grads_of, make_params, tiny_model, to64  # noqa: E402

TU = torch.nn.utils
INF, NAN = float("inf"), float("nan")

SHAPE_SETS = {
    "0d": [()],
    "1d": [(1,), (17,), (130,)],
    "mixed": [(), (7,), (3, 5), (2, 3, 4, 5)],
    "empty": [(0,), (3, 0), (4,), (2, 0, 2)],
    "only_empty": [(0,), (0, 3)],
    "conv": [(8, 4, 3, 3), (8,), (16, 72)],
}
DTYPES = {
    "f32": torch.float32,
    "f64": torch.float64,
    "bf16": torch.bfloat16,
    "f16": torch.float16,
    "mixed": [torch.float32, torch.bfloat16, torch.float64, torch.float16],
}
NORM_TYPES = [1.0, 2.0, 3.0, INF, 0.5]
FOREACH = [None, True, False]


def _inf_of_empty(shapes, norm_type) -> bool:
    """torch refuses the inf-norm of an empty tensor (max has no identity); so must the drop-ins."""
    return norm_type == INF and any(0 in s for s in shapes)


def _pair(shapes, dtype, seed=0, scale=1.0, none_at=()):
    a = make_params(shapes, DTYPES[dtype] if isinstance(dtype, str) else dtype, seed=seed, scale=scale, none_at=none_at)
    return a, clone_params(a)


# ----------------------------------------------------------------------------- clip_grad_norm_
@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shapes", list(SHAPE_SETS))
def test_clip_grad_norm_matches_torch(shapes, dtype, norm_type, foreach):
    seed = hash((shapes, dtype)) % 1000
    for max_norm, scale in [(1.0, 3.0), (1e4, 1.0)]:  # clipped, and left alone
        ours, theirs = _pair(SHAPE_SETS[shapes], dtype, seed=seed, scale=scale)
        if _inf_of_empty(SHAPE_SETS[shapes], norm_type):
            with pytest.raises(RuntimeError, match="empty tensor"):
                TU.clip_grad_norm_(theirs, max_norm, norm_type=norm_type, foreach=foreach)
            with pytest.raises(RuntimeError, match="empty tensor"):
                gct.clip_grad_norm_(ours, max_norm, norm_type=norm_type, foreach=foreach)
            assert_same_grads(ours, theirs)
            continue
        n_ours = gct.clip_grad_norm_(ours, max_norm, norm_type=norm_type, foreach=foreach)
        n_theirs = TU.clip_grad_norm_(theirs, max_norm, norm_type=norm_type, foreach=foreach)
        assert_bitwise(n_ours, n_theirs)
        assert_same_grads(ours, theirs)


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_clip_grad_norm_positional_arguments_match_torch(dtype, norm_type):
    ours, theirs = _pair(SHAPE_SETS["mixed"], dtype, seed=3, scale=5.0)
    assert_bitwise(gct.clip_grad_norm_(ours, 0.5, norm_type, False, None), TU.clip_grad_norm_(theirs, 0.5, norm_type, False, None))
    assert_same_grads(ours, theirs)


def test_clip_grad_norm_actually_clips():
    # Guards the parity tests against comparing two no-ops.
    ours, _ = _pair(SHAPE_SETS["mixed"], "f64", scale=10.0)
    before = grads_of(ours)
    norm = gct.clip_grad_norm_(ours, 1.0)
    expected, ref_norm = ref.clip_global_norm(to64(before), 1.0)
    assert float(norm) == pytest.approx(ref_norm, rel=1e-12)
    for p, e in zip(ours, expected):
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=1e-12, atol=0)
    assert float(gct.get_total_norm([p.grad for p in ours])) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("max_norm", [0.0, 0, INF, 1e-30, 2])
@pytest.mark.parametrize("dtype", ["f32", "bf16", "mixed"])
def test_clip_grad_norm_extreme_thresholds_match_torch(max_norm, dtype):
    ours, theirs = _pair(SHAPE_SETS["mixed"], dtype, seed=1, scale=2.0)
    assert_bitwise(gct.clip_grad_norm_(ours, max_norm), TU.clip_grad_norm_(theirs, max_norm))
    assert_same_grads(ours, theirs)
    if max_norm == 0:
        assert all(not p.grad.any() for p in ours)


@pytest.mark.parametrize("dtype", ["f32", "f64", "bf16"])
def test_clip_grad_norm_single_tensor(dtype):
    (ours,), (theirs,) = _pair([(4, 5)], dtype, scale=3.0)
    assert_bitwise(gct.clip_grad_norm_(ours, 1.0), TU.clip_grad_norm_(theirs, 1.0))
    assert_bitwise(ours.grad, theirs.grad)


def test_clip_grad_norm_generator():
    ours, theirs = _pair(SHAPE_SETS["conv"], "f32", scale=3.0)
    assert_bitwise(gct.clip_grad_norm_((p for p in ours), 1.0), TU.clip_grad_norm_((p for p in theirs), 1.0))
    assert_same_grads(ours, theirs)


def test_clip_grad_norm_module_parameters():
    m_ours, m_theirs = tiny_model(), tiny_model()
    assert_bitwise(gct.clip_grad_norm_(m_ours.parameters(), 0.1), TU.clip_grad_norm_(m_theirs.parameters(), 0.1))
    assert_same_grads(list(m_ours.parameters()), list(m_theirs.parameters()))


@pytest.mark.parametrize("container", ["module", "named_parameters", "param_groups"])
def test_clip_grad_norm_extra_containers_match_torch_on_the_parameter_list(container):
    m_ours, m_theirs = tiny_model(), tiny_model()
    given = {
        "module": lambda: m_ours,
        "named_parameters": lambda: m_ours.named_parameters(),
        "param_groups": lambda: torch.optim.SGD(m_ours.parameters(), lr=0.1).param_groups,
    }[container]()
    assert_bitwise(gct.clip_grad_norm_(given, 0.1), TU.clip_grad_norm_(list(m_theirs.parameters()), 0.1))
    assert_same_grads(list(m_ours.parameters()), list(m_theirs.parameters()))


def test_clip_grad_norm_empty_list():
    n_ours, n_theirs = gct.clip_grad_norm_([], 1.0), TU.clip_grad_norm_([], 1.0)
    assert_bitwise(n_ours, n_theirs)
    assert float(n_ours) == 0.0


def test_clip_grad_norm_empty_generator_warns_like_torch():
    with pytest.warns(UserWarning, match="empty generator"):
        n_theirs = TU.clip_grad_norm_((p for p in []), 1.0)
    with pytest.warns(UserWarning, match="empty generator"):
        n_ours = gct.clip_grad_norm_((p for p in []), 1.0)
    assert_bitwise(n_ours, n_theirs)


def test_clip_grad_norm_empty_list_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gct.clip_grad_norm_([], 1.0)


@pytest.mark.parametrize("none_at", [(0,), (1, 3), (0, 1, 2, 3)])
def test_clip_grad_norm_parameters_without_grads(none_at):
    ours, theirs = _pair(SHAPE_SETS["mixed"], "f32", scale=4.0, none_at=none_at)
    assert_bitwise(gct.clip_grad_norm_(ours, 1.0), TU.clip_grad_norm_(theirs, 1.0))
    assert_same_grads(ours, theirs)
    assert all(ours[i].grad is None for i in none_at)


def test_clip_grad_norm_all_zero_grads():
    ours, theirs = _pair(SHAPE_SETS["mixed"], "f32", scale=0.0)
    assert_bitwise(gct.clip_grad_norm_(ours, 1.0), TU.clip_grad_norm_(theirs, 1.0))
    assert_same_grads(ours, theirs)


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("dtype", ["f32", "bf16", "mixed"])
def test_clip_grad_norm_nonfinite_propagates_like_torch(bad, dtype):
    ours, theirs = _pair(SHAPE_SETS["mixed"], dtype, scale=2.0)
    for params in (ours, theirs):
        params[2].grad[1, 2] = bad
    n_ours, n_theirs = gct.clip_grad_norm_(ours, 1.0), TU.clip_grad_norm_(theirs, 1.0)
    assert_bitwise(n_ours, n_theirs)
    assert not bool(torch.isfinite(n_ours))
    assert_same_grads(ours, theirs)


# ----------------------------------------------------------------------------- error_if_nonfinite
@pytest.mark.parametrize("bad", [NAN, INF])
def test_error_if_nonfinite_raises_like_torch_and_names_the_parameter(bad):
    ours, theirs = _pair(SHAPE_SETS["mixed"], "f32", scale=2.0)
    for params in (ours, theirs):
        params[2].grad[0, 1] = bad
    before = grads_of(ours)
    with pytest.raises(RuntimeError):
        TU.clip_grad_norm_(theirs, 1.0, error_if_nonfinite=True)
    with pytest.raises(gradclip.NonFiniteError) as info:
        gct.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    assert isinstance(info.value, RuntimeError)
    counts = "nan=1 inf=0" if math.isnan(bad) else "nan=0 inf=1"
    assert f"param[2] shape=(3, 5) {counts}" in str(info.value)
    assert [o.name for o in info.value.offenders] == ["param[2]"]
    assert (info.value.offenders[0].index, info.value.offenders[0].shape) == (2, (3, 5))
    assert_same_grads(ours, theirs)  # both untouched
    for p, b in zip(ours, before):
        assert_bitwise(p.grad, b)


def test_error_if_nonfinite_with_finite_grads_matches_torch():
    ours, theirs = _pair(SHAPE_SETS["conv"], "f32", scale=2.0)
    n1 = gct.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    n2 = TU.clip_grad_norm_(theirs, 1.0, error_if_nonfinite=True)
    assert_bitwise(n1, n2)
    assert_same_grads(ours, theirs)


def test_error_index_counts_parameters_without_grads():
    ours, _ = _pair(SHAPE_SETS["mixed"], "f32", none_at=(0, 1))
    ours[3].grad[0, 0, 0, 0] = NAN
    with pytest.raises(gradclip.NonFiniteError, match=r"param\[3\] shape=\(2, 3, 4, 5\) nan=1 inf=0"):
        gct.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)


def test_overflowing_norm_with_finite_grads_explains_itself():
    (ours,), (theirs,) = _pair([(64,)], "f16")
    ours.grad.fill_(60000.0)
    theirs.grad.fill_(60000.0)
    with pytest.raises(RuntimeError):
        TU.clip_grad_norm_([theirs], 1.0, error_if_nonfinite=True)
    with pytest.raises(gradclip.NonFiniteError, match="overflowed.*norm_dtype") as info:
        gct.clip_grad_norm_([ours], 1.0, error_if_nonfinite=True)
    assert info.value.offenders == ()
    assert torch.equal(ours.grad, theirs.grad)
    # ...and the suggested fix works: the fp32 norm is finite and correct.
    norm = gct.clip_grad_norm_([ours], 1.0, norm_dtype=torch.float32, error_if_nonfinite=True)
    assert norm.dtype == torch.float32 and float(norm) == pytest.approx(60000.0 * 8, rel=1e-6)


# ----------------------------------------------------------------------------- nonfinite= modes
def _poisoned_model(kind: str):
    model = tiny_model()
    g = dict(model.named_parameters())["2.weight"].grad
    if kind == "nan":
        g[0, 0] = NAN
        g[1, 2] = NAN
    else:
        g[1, 1] = -INF
    return model


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nonfinite_error_names_parameter_with_shape_and_counts(kind):
    model = _poisoned_model(kind)
    before = grads_of(model.parameters())
    with pytest.raises(gradclip.NonFiniteError) as info:
        gct.clip_grad_norm_(model.named_parameters(), 1.0, nonfinite="error")
    counts = "nan=2 inf=0" if kind == "nan" else "nan=0 inf=1"
    assert f"2.weight shape=(2, 3) {counts}" in str(info.value)
    assert [o.name for o in info.value.offenders] == ["2.weight"]
    assert info.value.offenders[0].index == 2
    assert math.isnan(info.value.norm) if kind == "nan" else info.value.norm == INF
    for p, b in zip(model.parameters(), before):
        assert_bitwise(p.grad, b)


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nonfinite_skip_leaves_grads_bitwise_unchanged(kind):
    model = _poisoned_model(kind)
    before = grads_of(model.parameters())
    norm = gct.clip_grad_norm_(model.named_parameters(), 1e-3, nonfinite="skip")
    assert not bool(torch.isfinite(norm))
    for p, b in zip(model.parameters(), before):
        assert_bitwise(p.grad, b)


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nonfinite_zero_zeroes_all_grads(kind):
    model = _poisoned_model(kind)
    norm = gct.clip_grad_norm_(model.named_parameters(), 1.0, nonfinite="zero")
    assert not bool(torch.isfinite(norm))
    for p in model.parameters():
        assert_bitwise(p.grad, torch.zeros_like(p))


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nonfinite_propagate_equals_torch(kind):
    ours, theirs = _poisoned_model(kind), _poisoned_model(kind)
    n1 = gct.clip_grad_norm_(ours.named_parameters(), 1.0, nonfinite="propagate")
    n2 = TU.clip_grad_norm_(theirs.parameters(), 1.0)
    assert_bitwise(n1, n2)
    assert_same_grads(list(ours.parameters()), list(theirs.parameters()))
    assert torch.isnan(dict(ours.named_parameters())["2.weight"].grad).any()


@pytest.mark.parametrize("mode", ["error", "skip", "zero", "propagate"])
def test_nonfinite_modes_with_finite_grads_match_torch(mode):
    ours, theirs = tiny_model(), tiny_model()
    n1 = gct.clip_grad_norm_(ours.named_parameters(), 0.1, nonfinite=mode)
    n2 = TU.clip_grad_norm_(theirs.parameters(), 0.1)
    assert_bitwise(n1, n2)
    assert_same_grads(list(ours.parameters()), list(theirs.parameters()))


def test_nonfinite_option_conflicts():
    ours, _ = _pair([(3,)], "f32")
    with pytest.raises(gradclip.ConfigError, match="conflicts"):
        gct.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True, nonfinite="skip")
    with pytest.raises(gradclip.ConfigError, match="nonfinite must be one of"):
        gct.clip_grad_norm_(ours, 1.0, nonfinite="ignore")
    gct.clip_grad_norm_(ours, 1.0, error_if_nonfinite=True, nonfinite="error")  # consistent: fine


# ----------------------------------------------------------------------------- norm_dtype
def test_norm_dtype_float32_for_bf16_grads_is_closer_to_the_float64_reference():
    ours, theirs = _pair([(1000,), (37, 11), (5,)], "bf16", seed=7, scale=0.3)
    grads64 = to64([p.grad for p in ours])
    exact = ref.global_norm(grads64, 2.0)
    n_wide = gct.get_total_norm([p.grad for p in ours], norm_dtype=torch.float32)
    n_torch = TU.get_total_norm([p.grad for p in theirs])
    assert n_wide.dtype == torch.float32 and n_torch.dtype == torch.bfloat16
    assert float(n_wide) == pytest.approx(exact, rel=1e-6)
    assert abs(float(n_torch) - exact) > abs(float(n_wide) - exact)
    assert abs(float(n_torch) - exact) > 1e-5 * exact
    # the same through clip_grad_norm_: float32 norm returned, bf16 grads clipped
    n_clip = gct.clip_grad_norm_(ours, 1.0, norm_dtype=torch.float32)
    assert n_clip.dtype == torch.float32 and float(n_clip) == pytest.approx(exact, rel=1e-6)
    assert all(p.grad.dtype == torch.bfloat16 for p in ours)
    assert float(ref.global_norm(to64([p.grad for p in ours]))) == pytest.approx(1.0, rel=1e-2)


@pytest.mark.parametrize("p", [1.0, INF, 0.5])
def test_norm_dtype_float64_for_float32_grads(p):
    ours, _ = _pair(SHAPE_SETS["conv"], "f32", seed=2)
    n = gct.get_total_norm([q.grad for q in ours], p, norm_dtype=torch.float64)
    assert n.dtype == torch.float64
    assert float(n) == pytest.approx(ref.global_norm(to64([q.grad for q in ours]), p), rel=1e-12)


def test_norm_dtype_on_empty_input():
    assert_bitwise(gct.get_total_norm([], norm_dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    assert_bitwise(gct.clip_grad_norm_([], 1.0, norm_dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))


# ----------------------------------------------------------------------------- get_total_norm / clip_grads_with_norm_
@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shapes", ["0d", "mixed", "empty", "conv"])
def test_get_total_norm_and_clip_grads_with_norm_match_torch(shapes, dtype, norm_type, foreach):
    ours, theirs = _pair(SHAPE_SETS[shapes], dtype, seed=11, scale=3.0)
    if _inf_of_empty(SHAPE_SETS[shapes], norm_type):
        with pytest.raises(RuntimeError, match="empty tensor"):
            TU.get_total_norm([p.grad for p in theirs], norm_type, False, foreach)
        with pytest.raises(RuntimeError, match="empty tensor"):
            gct.get_total_norm([p.grad for p in ours], norm_type, False, foreach)
        return
    n_ours = gct.get_total_norm([p.grad for p in ours], norm_type, False, foreach)
    n_theirs = TU.get_total_norm([p.grad for p in theirs], norm_type, False, foreach)
    assert_bitwise(n_ours, n_theirs)
    gct.clip_grads_with_norm_(ours, 1.0, n_ours, foreach)
    TU.clip_grads_with_norm_(theirs, 1.0, n_theirs, foreach)
    assert_same_grads(ours, theirs)


def test_get_total_norm_single_tensor_generator_and_empty():
    t = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    assert_bitwise(gct.get_total_norm(t), TU.get_total_norm(t))
    assert_bitwise(gct.get_total_norm(x for x in [t, t * 2]), TU.get_total_norm(x for x in [t, t * 2]))
    assert_bitwise(gct.get_total_norm([]), TU.get_total_norm([]))
    assert_bitwise(gct.get_total_norm([torch.tensor([3.0]), torch.tensor([4.0])]), torch.tensor(5.0))


def test_get_total_norm_error_if_nonfinite():
    ts = [torch.ones(3), torch.tensor([1.0, NAN])]
    with pytest.raises(RuntimeError):
        TU.get_total_norm(ts, error_if_nonfinite=True)
    with pytest.raises(gradclip.NonFiniteError, match=r"tensors\[1\] shape=\(2,\) nan=1 inf=0"):
        gct.get_total_norm(ts, error_if_nonfinite=True)
    assert torch.isnan(gct.get_total_norm(ts))


@pytest.mark.parametrize("total", [0.0, 0.5, 7.0, INF, NAN])
def test_clip_grads_with_norm_given_norm_matches_torch(total):
    ours, theirs = _pair(SHAPE_SETS["mixed"], "mixed", seed=5)
    gct.clip_grads_with_norm_(ours, 1.0, torch.tensor(total))
    TU.clip_grads_with_norm_(theirs, 1.0, torch.tensor(total))
    assert_same_grads(ours, theirs)


def test_clip_grads_with_norm_single_tensor_and_no_grads():
    (ours,), (theirs,) = _pair([(6,)], "f32", scale=5.0)
    gct.clip_grads_with_norm_(ours, 1.0, gct.get_total_norm(ours.grad))
    TU.clip_grads_with_norm_(theirs, 1.0, TU.get_total_norm(theirs.grad))
    assert_bitwise(ours.grad, theirs.grad)
    ours, _ = _pair([(3,)], "f32", none_at=(0,))
    gct.clip_grads_with_norm_(ours, 1.0, torch.tensor(3.0))  # nothing to do, no error
    assert ours[0].grad is None


# ----------------------------------------------------------------------------- clip_grad_value_
@pytest.mark.parametrize("foreach", FOREACH)
@pytest.mark.parametrize("clip_value", [0.0, 0.3, 1, INF])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shapes", ["0d", "mixed", "empty", "conv"])
def test_clip_grad_value_matches_torch(shapes, dtype, clip_value, foreach):
    ours, theirs = _pair(SHAPE_SETS[shapes], dtype, seed=13)
    assert gct.clip_grad_value_(ours, clip_value, foreach) is None
    TU.clip_grad_value_(theirs, clip_value, foreach)
    assert_same_grads(ours, theirs)


def test_clip_grad_value_actually_clamps():
    ours, _ = _pair(SHAPE_SETS["mixed"], "f64", scale=3.0)
    expected = ref.clip_value(to64([p.grad for p in ours]), -0.5, 0.5)
    gct.clip_grad_value_(ours, 0.5)
    for p, e in zip(ours, expected):
        np.testing.assert_array_equal(p.grad.numpy(), e)


def test_clip_grad_value_single_tensor_generator_none_grads_and_nan():
    (ours,), (theirs,) = _pair([(4, 4)], "f32", scale=2.0)
    gct.clip_grad_value_(ours, 0.5)
    TU.clip_grad_value_(theirs, 0.5)
    assert_bitwise(ours.grad, theirs.grad)

    ours, theirs = _pair(SHAPE_SETS["mixed"], "mixed", none_at=(1,), scale=2.0)
    for params in (ours, theirs):
        params[2].grad[0, 0] = NAN
        params[3].grad[0, 0, 0, 0] = -INF
    gct.clip_grad_value_((p for p in ours), 0.5)
    TU.clip_grad_value_((p for p in theirs), 0.5)
    assert_same_grads(ours, theirs)
    assert torch.isnan(ours[2].grad[0, 0]) and ours[3].grad[0, 0, 0, 0] == -0.5



def test_clip_grad_value_without_any_grad_is_a_no_op():
    # torch.nn.utils.clip_grad_value_ raises an internal RuntimeError here ("Expected
    # !nested_tensorlist[0].empty()"); the drop-in ignores parameters without grads, as documented.
    with pytest.raises(RuntimeError):
        TU.clip_grad_value_([], 0.5)
    gct.clip_grad_value_([], 0.5)
    ours, _ = _pair([(3,), (2, 2)], "f32", none_at=(0, 1))
    gct.clip_grad_value_(ours, 0.5)
    gct.clip_grad_value_((p for p in ours), 0.5, nonfinite="error")
    assert all(p.grad is None for p in ours)


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_clip_grad_value_nonfinite_modes(kind):
    model = _poisoned_model(kind)
    before = grads_of(model.parameters())
    with pytest.raises(gradclip.NonFiniteError, match=r"2\.weight shape=\(2, 3\)"):
        gct.clip_grad_value_(model.named_parameters(), 0.01, nonfinite="error")
    gct.clip_grad_value_(model.named_parameters(), 0.01, nonfinite="skip")
    for p, b in zip(model.parameters(), before):
        assert_bitwise(p.grad, b)
    theirs = _poisoned_model(kind)
    gct.clip_grad_value_(model.named_parameters(), 0.01, nonfinite="propagate")
    TU.clip_grad_value_(theirs.parameters(), 0.01)
    assert_same_grads(list(model.parameters()), list(theirs.parameters()))
    model = _poisoned_model(kind)
    gct.clip_grad_value_(model.named_parameters(), 0.01, nonfinite="zero")
    assert all(not p.grad.any() for p in model.parameters())


@pytest.mark.parametrize("mode", ["error", "skip", "zero"])
def test_clip_grad_value_nonfinite_modes_with_finite_grads_match_torch(mode):
    ours, theirs = tiny_model(), tiny_model()
    gct.clip_grad_value_(ours.named_parameters(), 0.05, nonfinite=mode)
    TU.clip_grad_value_(theirs.parameters(), 0.05)
    assert_same_grads(list(ours.parameters()), list(theirs.parameters()))


# ----------------------------------------------------------------------------- refusals (on purpose)
BAD_THRESHOLDS = [-1.0, -1e-9, NAN, -INF, "abc", True, None]
BAD_NORM_TYPES = [0, 0.0, -1, -1.0, -INF, "abc", True, NAN]


def _assert_refused(call, params):
    before = grads_of(params)
    with pytest.raises(gradclip.ConfigError) as info:
        call()
    assert isinstance(info.value, ValueError) and "Received" in str(info.value)
    for p, b in zip(params, before):
        assert_bitwise(p.grad, b)


@pytest.mark.parametrize("bad", BAD_THRESHOLDS)
def test_bad_max_norm_is_refused(bad):
    ours, _ = _pair(SHAPE_SETS["mixed"], "f32", scale=3.0)
    _assert_refused(lambda: gct.clip_grad_norm_(ours, bad), ours)
    _assert_refused(lambda: gct.clip_grads_with_norm_(ours, bad, torch.tensor(10.0)), ours)


@pytest.mark.parametrize("bad", BAD_THRESHOLDS)
def test_bad_clip_value_is_refused(bad):
    ours, _ = _pair(SHAPE_SETS["mixed"], "f32", scale=3.0)
    _assert_refused(lambda: gct.clip_grad_value_(ours, bad), ours)


def test_torch_accepts_what_we_refuse():
    # Documents why the refusals exist: torch silently flips signs with a negative threshold.
    (_, theirs) = _pair([(3,)], "f32", scale=3.0)
    g = theirs[0].grad.clone()
    TU.clip_grad_norm_(theirs, -1.0)
    assert (torch.sign(theirs[0].grad) == -torch.sign(g)).all()


@pytest.mark.parametrize("bad", BAD_NORM_TYPES)
def test_bad_norm_type_is_refused(bad):
    ours, _ = _pair(SHAPE_SETS["mixed"], "f32", scale=3.0)
    _assert_refused(lambda: gct.clip_grad_norm_(ours, 1.0, norm_type=bad), ours)
    with pytest.raises(gradclip.ConfigError, match="norm_type"):
        gct.get_total_norm([p.grad for p in ours], bad)


@pytest.mark.parametrize(
    ("parameters", "index", "received"),
    [
        ([{"foo": 1}], 0, "dict"),
        (lambda ps: [ps[0], 3], 1, "int"),
        (lambda ps: [ps[0], ps[1], "w"], 2, "str"),
        (lambda ps: [("a", ps[0]), ("b", 2.0)], 1, "tuple"),
        ({"weight": 1}, 0, "str"),
    ],
)
def test_bad_containers_name_the_index(parameters, index, received):
    ours, _ = _pair(SHAPE_SETS["mixed"], "f32", scale=3.0)
    given = parameters(ours) if callable(parameters) else parameters
    before = grads_of(ours)
    for fn in (lambda: gct.clip_grad_norm_(given, 1.0), lambda: gct.clip_grad_value_(given, 1.0)):
        with pytest.raises(gradclip.InputTypeError, match=re.escape(f"parameters[{index}]") + ".*" + received) as info:
            fn()
        assert isinstance(info.value, TypeError)
    for p, b in zip(ours, before):
        assert_bitwise(p.grad, b)


@pytest.mark.parametrize("given", [3, 1.5, None, "weights"])
def test_non_iterable_parameters(given):
    with pytest.raises(gradclip.InputTypeError, match="parameters must be"):
        gct.clip_grad_norm_(given, 1.0)


def test_get_total_norm_bad_element_names_index():
    with pytest.raises(gradclip.InputTypeError, match=r"tensors\[1\].*float"):
        gct.get_total_norm([torch.ones(2), 2.0])
    with pytest.raises(gradclip.InputTypeError, match="tensors must be"):
        gct.get_total_norm(7)
