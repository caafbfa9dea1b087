"""``gradclip.torch.Clipper`` against the float64 NumPy oracle, torch, and its own contract."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip import _reference as ref  # noqa: E402
from conftest import (  # noqa: E402
    assert_bitwise,
    assert_close_np,
    assert_same_grads,
    clone_params,
    grads_of,
    make_params,
    tiny_model,
    to64,
)

TU = torch.nn.utils
INF, NAN = float("inf"), float("nan")
SHAPES = [(), (7,), (3, 5), (2, 3, 4, 5), (0,), (40,)]
TOL = {torch.float32: 2e-6, torch.float64: 1e-12}


def _oracle(policy, grads64):
    """What the reference says the clipped grads, norm, coef and clipped norm are."""
    if isinstance(policy, gradclip.GlobalNorm):
        out, norm = ref.clip_global_norm(grads64, policy.max_norm, policy.norm_type, policy.semantics)
        return out, norm, ref.coef(norm, policy.max_norm, policy.semantics), policy.norm_type
    if isinstance(policy, gradclip.PerTensorNorm):
        out, _ = ref.clip_tensor_norm(grads64, policy.max_norm, policy.norm_type, policy.semantics)
        return out, ref.global_norm(grads64, policy.norm_type), None, policy.norm_type
    if isinstance(policy, gradclip.Value):
        lo, hi = policy.bounds
        return ref.clip_value(grads64, lo, hi), ref.global_norm(grads64, 2.0), None, 2.0
    assert isinstance(policy, gradclip.NoClip)
    return [g.copy() for g in grads64], ref.global_norm(grads64, policy.norm_type), None, policy.norm_type


POLICIES = [
    gradclip.GlobalNorm(1.0),
    gradclip.GlobalNorm(0.3, norm_type=1.0),
    gradclip.GlobalNorm(0.5, norm_type=INF),
    gradclip.GlobalNorm(2.0, norm_type=3.0, semantics="tf"),
    gradclip.GlobalNorm(1.0, semantics="optax"),
    gradclip.GlobalNorm(1e6),  # not clipped
    gradclip.GlobalNorm(0.0),
    gradclip.GlobalNorm(0.0, semantics="tf"),
    gradclip.GlobalNorm(INF, semantics="tf"),
    gradclip.PerTensorNorm(1.0),
    gradclip.PerTensorNorm(0.7, norm_type=1.0, semantics="tf"),
    gradclip.PerTensorNorm(0.7, norm_type=INF, semantics="optax"),
    gradclip.PerTensorNorm(0.0, semantics="tf"),
    gradclip.Value(0.5),
    gradclip.Value(min=-0.25, max=1.0),
    gradclip.Value(max=0.1),
    gradclip.NoClip(),
    gradclip.NoClip(norm_type=1.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.spec())
def test_clipper_matches_reference(policy, dtype):
    params = make_params(SHAPES, dtype, seed=len(policy.spec()), scale=2.0)
    grads64 = to64([p.grad for p in params])
    expected, norm, coef, p = _oracle(policy, grads64)
    stats = gct.Clipper(policy).step(params)
    tol = TOL[dtype]
    for q, e in zip(params, expected):
        assert q.grad.dtype == dtype
        assert_close_np(q.grad.numpy(), e, tol)
    assert isinstance(stats.norm, torch.Tensor) and stats.norm.dtype == dtype and stats.norm.ndim == 0
    assert float(stats.norm) == pytest.approx(norm, rel=tol)
    assert stats.norm_type == p
    assert float(stats.clipped_norm) == pytest.approx(ref.global_norm(expected, p), rel=tol * 10, abs=1e-30)
    if coef is None:
        assert stats.coef is None
    else:
        assert float(stats.coef) == pytest.approx(coef, rel=tol)
    changed = any(not np.array_equal(e, g) for e, g in zip(expected, grads64))
    assert bool(stats.clipped) == changed
    assert not bool(stats.nonfinite) and not bool(stats.skipped) and stats.offenders == ()


def test_clip_stats_fields_global_norm():
    params = make_params([(3,), (4,)], torch.float64)
    params[0].grad = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    params[1].grad = torch.tensor([0.0, 4.0, 0.0, 0.0], dtype=torch.float64)
    stats = gct.Clipper(gradclip.GlobalNorm(1.0, semantics="tf")).step(params)
    assert float(stats.norm) == 5.0 and float(stats.coef) == pytest.approx(0.2, rel=1e-15)
    assert float(stats.clipped_norm) == pytest.approx(1.0, rel=1e-15)
    assert bool(stats.clipped) and not bool(stats.nonfinite) and not bool(stats.skipped)
    assert stats.threshold == 1.0 and stats.norm_type == 2.0 and stats.offenders == ()
    assert params[0].grad.tolist() == pytest.approx([0.6, 0, 0], rel=1e-15)
    d = stats.to_dict()
    assert d == {
        "norm": 5.0, "clipped_norm": pytest.approx(1.0, rel=1e-15), "coef": pytest.approx(0.2, rel=1e-15),
        "clipped": True, "nonfinite": False, "skipped": False, "threshold": 1.0, "norm_type": 2.0, "offenders": [],
    }
    assert all(type(v) in (float, bool, list) for v in d.values())
    assert "ClipStats(norm=5.0" in repr(stats)


def test_clip_stats_fields_value_and_noclip():
    params = make_params([(5,)], torch.float32)
    params[0].grad = torch.tensor([-2.0, -0.1, 0.0, 0.3, 1.5])
    stats = gct.Clipper(gradclip.Value(0.5)).step(params)
    assert params[0].grad.tolist() == pytest.approx([-0.5, -0.1, 0.0, 0.3, 0.5])
    assert stats.threshold == 0.5 and stats.coef is None and bool(stats.clipped)
    assert float(stats.norm) == pytest.approx(math.sqrt(4 + 0.01 + 0.09 + 2.25), rel=1e-6)
    assert float(stats.clipped_norm) == pytest.approx(math.sqrt(0.25 + 0.01 + 0.09 + 0.25), rel=1e-6)

    stats = gct.Clipper(gradclip.Value(min=-1.0, max=2.0)).step(params)
    assert stats.threshold == (-1.0, 2.0) and not bool(stats.clipped)
    assert stats.to_dict()["threshold"] == (-1.0, 2.0) and "threshold=(-1.0, 2.0)" in repr(stats)
    assert gct.Clipper(gradclip.Value(max=0.1)).step(params).to_dict()["threshold"] == (None, 0.1)

    before = grads_of(params)
    stats = gct.Clipper(gradclip.NoClip()).step(params)
    assert_bitwise(params[0].grad, before[0])
    assert stats.threshold is None and stats.coef is None and not bool(stats.clipped)
    assert_bitwise(stats.clipped_norm, stats.norm)


def test_clip_stats_per_tensor_clipped_flag():
    params = make_params([(2,), (2,)], torch.float64)
    params[0].grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    params[1].grad = torch.tensor([0.3, 0.4], dtype=torch.float64)
    stats = gct.Clipper(gradclip.PerTensorNorm(1.0, semantics="optax")).step(params)
    assert bool(stats.clipped) and stats.coef is None and stats.threshold == 1.0
    assert params[0].grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-15)
    assert params[1].grad.tolist() == [0.3, 0.4]
    assert float(stats.clipped_norm) == pytest.approx(math.sqrt(1.0 + 0.25), rel=1e-15)
    stats = gct.Clipper(gradclip.PerTensorNorm(1.0, semantics="optax")).step(params)
    assert not bool(stats.clipped)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_grads_norm_in_float32(dtype):
    params = make_params([(300,), (20, 10)], dtype, seed=4)
    exact = ref.global_norm(to64([p.grad for p in params]))
    stats = gct.Clipper(gradclip.GlobalNorm(1.0)).step(params)
    assert stats.norm.dtype == torch.float32
    assert float(stats.norm) == pytest.approx(exact, rel=2e-6)
    assert all(p.grad.dtype == dtype for p in params)
    assert ref.global_norm(to64([p.grad for p in params])) == pytest.approx(1.0, rel=1e-2)


def test_norm_dtype_override_and_mixed_dtypes():
    params = make_params(SHAPES, [torch.float32, torch.float64, torch.bfloat16], seed=9, scale=3.0)
    grads64 = to64([p.grad for p in params])
    expected, norm = ref.clip_global_norm(grads64, 1.0)
    stats = gct.Clipper(gradclip.GlobalNorm(1.0)).step(params)
    assert stats.norm.dtype == torch.float64  # float64 when any gradient is float64
    assert float(stats.norm) == pytest.approx(norm, rel=1e-12)
    for q, e in zip(params, expected):
        tol = {torch.float32: 2e-7, torch.float64: 1e-12, torch.bfloat16: 8e-3}[q.grad.dtype]
        assert_close_np(q.grad.double().numpy(), e, tol)

    params = make_params([(10,)], torch.float32, seed=1)
    stats = gct.Clipper(gradclip.GlobalNorm(1.0), norm_dtype=torch.float64).step(params)
    assert stats.norm.dtype == torch.float64


# ----------------------------------------------------------------------------- torch parity
@pytest.mark.parametrize("foreach", [None, True, False])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, INF, 3.0])
@pytest.mark.parametrize("max_norm", [1.0, 0.0, 1e5])
def test_global_norm_clipper_is_bitwise_torch_for_float32(max_norm, norm_type, foreach):
    # The Clipper accumulates float32 grads in float32 with the same kernels, so for a single
    # dtype its numbers are exactly torch's (for mixed dtypes it accumulates wider, see above).
    shapes = [s for s in SHAPES if norm_type != INF or 0 not in s]
    ours = make_params(shapes, torch.float32, seed=2, scale=2.0)
    theirs = clone_params(ours)
    stats = gct.Clipper(gradclip.GlobalNorm(max_norm, norm_type=norm_type), foreach=foreach).step(ours)
    norm = TU.clip_grad_norm_(theirs, max_norm, norm_type=norm_type, foreach=foreach)
    assert_bitwise(stats.norm, norm)
    assert_same_grads(ours, theirs)


@pytest.mark.parametrize("container", ["model", "parameters", "named_parameters", "param_groups", "list"])
def test_clipper_accepts_every_container(container):
    model, theirs = tiny_model(), tiny_model()
    given = {
        "model": lambda: model,
        "parameters": lambda: model.parameters(),
        "named_parameters": lambda: model.named_parameters(),
        "param_groups": lambda: torch.optim.Adam(model.parameters()).param_groups,
        "list": lambda: list(model.parameters()),
    }[container]()
    stats = gct.Clipper("norm:0.1").step(given)
    norm = TU.clip_grad_norm_(theirs.parameters(), 0.1)
    assert_bitwise(stats.norm, norm)
    assert_same_grads(list(model.parameters()), list(theirs.parameters()))


def test_clipper_single_tensor_and_none_grads_and_empty():
    (w,) = make_params([(4, 4)], torch.float32, scale=3.0)
    (v,) = clone_params([w])
    stats = gct.Clipper("norm:1.0").step(w)
    assert_bitwise(stats.norm, TU.clip_grad_norm_(v, 1.0))
    assert_bitwise(w.grad, v.grad)

    params = make_params([(3,), (4,), (5,)], torch.float32, none_at=(1,), scale=3.0)
    theirs = clone_params(params)
    assert_bitwise(gct.Clipper("norm:1.0").step(params).norm, TU.clip_grad_norm_(theirs, 1.0))
    assert params[1].grad is None
    assert_same_grads(params, theirs)

    for empty in ([], make_params([(3,)], torch.float32, none_at=(0,))):
        stats = gct.Clipper("norm:1.0").step(empty)
        assert float(stats.norm) == 0.0 and not bool(stats.clipped) and not bool(stats.skipped)
        assert stats.coef is None and stats.offenders == ()


# ----------------------------------------------------------------------------- non-finite
def _poisoned(kind="nan"):
    model = tiny_model()
    named = dict(model.named_parameters())
    bad = NAN if kind == "nan" else INF
    named["2.weight"].grad[0, 1] = bad
    named["0.bias"].grad[2] = bad
    named["0.bias"].grad[0] = bad
    return model


@pytest.mark.parametrize("policy", ["norm:1.0", "value:0.1", "pertensor:0.5", "none"])
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nonfinite_error(policy, kind):
    model = _poisoned(kind)
    before = grads_of(model.parameters())
    with pytest.raises(gradclip.NonFiniteError) as info:
        gct.Clipper(policy, nonfinite="error").step(model)
    assert isinstance(info.value, RuntimeError)
    assert [o.name for o in info.value.offenders] == ["0.bias", "2.weight"]  # parameter order
    n_i = "nan=2 inf=0" if kind == "nan" else "nan=0 inf=2"
    assert f"0.bias shape=(3,) {n_i}" in str(info.value)
    assert info.value.offenders[1].shape == (2, 3) and info.value.offenders[1].index == 2
    for p, b in zip(model.parameters(), before):
        assert_bitwise(p.grad, b)


@pytest.mark.parametrize("policy", ["norm:1.0", "value:0.1", "pertensor:0.5"])
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nonfinite_skip(policy, kind):
    model = _poisoned(kind)
    before = grads_of(model.parameters())
    clipper = gct.Clipper(policy, nonfinite="skip")
    stats = clipper.step(model)
    for p, b in zip(model.parameters(), before):
        assert_bitwise(p.grad, b)
    assert bool(stats.skipped) and bool(stats.nonfinite) and not bool(stats.clipped)
    assert stats.offender_names == ("0.bias", "2.weight")
    assert [(o.nan_count, o.inf_count) for o in stats.offenders] == ([(2, 0), (1, 0)] if kind == "nan" else [(0, 2), (0, 1)])
    assert not math.isfinite(float(stats.norm)) and stats.coef is None
    assert stats.to_dict()["offenders"] == ["0.bias", "2.weight"] and stats.to_dict()["skipped"] is True
    assert clipper.steps == 1


@pytest.mark.parametrize("policy", ["norm:1.0", "value:0.1", "pertensor:0.5"])
def test_nonfinite_zero(policy):
    model = _poisoned()
    stats = gct.Clipper(policy, nonfinite="zero").step(model.named_parameters())
    for p in model.parameters():
        assert_bitwise(p.grad, torch.zeros_like(p))
    assert bool(stats.clipped) and bool(stats.nonfinite) and not bool(stats.skipped)
    assert float(stats.coef) == 0.0 and float(stats.clipped_norm) == 0.0
    assert stats.offender_names == ("0.bias", "2.weight")


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nonfinite_propagate_equals_torch(kind):
    ours, theirs = _poisoned(kind), _poisoned(kind)
    stats = gct.Clipper("norm:1.0").step(ours)
    assert_bitwise(stats.norm, TU.clip_grad_norm_(theirs.parameters(), 1.0))
    assert_same_grads(list(ours.parameters()), list(theirs.parameters()))
    assert bool(stats.nonfinite) and not bool(stats.skipped)
    assert stats.offender_names == ("0.bias", "2.weight")


def test_nonfinite_propagate_value_equals_torch():
    ours, theirs = _poisoned("nan"), _poisoned("nan")
    stats = gct.Clipper("value:0.1").step(ours)
    TU.clip_grad_value_(theirs.parameters(), 0.1)
    assert_same_grads(list(ours.parameters()), list(theirs.parameters()))
    assert bool(stats.nonfinite) and stats.offender_names == ("0.bias", "2.weight")


def test_unnamed_offenders_are_param_i():
    params = make_params([(2,), (3,), (4,)], torch.float32, none_at=(0,))
    params[2].grad[1] = NAN
    stats = gct.Clipper("norm:1.0", nonfinite="skip").step(params)
    assert stats.offender_names == ("param[2]",) and stats.offenders[0].index == 2


def test_bad_nonfinite_mode_and_bad_spec():
    with pytest.raises(gradclip.ConfigError, match="nonfinite must be one of"):
        gct.Clipper("norm:1.0", nonfinite="ignore")
    with pytest.raises(gradclip.ConfigError, match="Valid methods"):
        gct.Clipper("clipnorm:1.0")
    with pytest.raises(gradclip.InputTypeError, match=r"parameters\[1\]"):
        gct.Clipper("norm:1.0").step([torch.zeros(2), 5])


# ----------------------------------------------------------------------------- spec strings, state
@pytest.mark.parametrize(
    ("spec", "policy"),
    [("norm:1.0", gradclip.GlobalNorm(1.0)), ("value:0.5", gradclip.Value(0.5)),
     ("pertensor:2,norm_type=inf", gradclip.PerTensorNorm(2.0, norm_type=INF)), ("none", gradclip.NoClip())],
)
def test_spec_strings_are_accepted(spec, policy):
    clipper = gct.Clipper(spec)
    assert clipper.policy == policy
    assert "Clipper(" in repr(clipper)
    a = make_params(SHAPES[:4], torch.float64, scale=3.0)
    b = clone_params(a)
    sa, sb = clipper.step(a), gct.Clipper(policy).step(b)
    assert_bitwise(sa.norm, sb.norm)
    assert_same_grads(a, b)


def test_state_dict_round_trip():
    clipper = gct.Clipper(gradclip.GlobalNorm(0.5, norm_type=INF), nonfinite="skip")
    for seed in range(3):
        clipper.step(make_params([(4,)], torch.float32, seed=seed))
    sd = clipper.state_dict()
    assert sd == {"version": 1, "policy": "norm:0.5,norm_type=inf", "steps": 3, "state": {}}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    restored = gct.Clipper("norm:0.5,norm_type=inf")
    restored.load_state_dict(torch.load(buf))
    assert restored.steps == 3 and restored.state_dict() == sd


@pytest.mark.parametrize(
    ("state_dict", "match"),
    [
        ({"policy": "norm:2.0", "steps": 1, "state": {}}, "saved with policy 'norm:2.0'"),
        ({"policy": "value:1.0", "steps": 1, "state": {}}, "Build the Clipper with the same policy"),
        ({"policy": "norm:1.0", "steps": 1}, "keys 'policy', 'steps' and 'state'"),
        ({}, "keys"),
        ([("policy", "norm:1.0")], "list"),
        (None, "NoneType"),
        ({"policy": "norm:1.0", "steps": "3", "state": {}}, "int 'steps'"),
        ({"policy": "norm:1.0", "steps": -1, "state": {}}, "int 'steps'"),
        ({"policy": "norm:1.0", "steps": 1, "state": [1, 2]}, "dict 'state'"),
    ],
)
def test_load_state_dict_refuses_mismatch_and_malformed(state_dict, match):
    clipper = gct.Clipper("norm:1.0")
    with pytest.raises(gradclip.StateDictError, match=match) as info:
        clipper.load_state_dict(state_dict)
    assert isinstance(info.value, ValueError)
    assert clipper.steps == 0


@pytest.mark.parametrize("foreach", [None, False])
def test_inf_norm_with_an_empty_tensor(foreach):
    # torch.nn.utils refuses the inf-norm of an empty tensor; the Clipper counts it as 0 (the oracle's value).
    params = make_params([(0,), (5,), (2, 0)], torch.float32, scale=4.0)
    expected, norm = ref.clip_global_norm(to64([p.grad for p in params]), 1.0, INF)
    stats = gct.Clipper(gradclip.GlobalNorm(1.0, norm_type=INF), foreach=foreach).step(params)
    assert float(stats.norm) == pytest.approx(norm, rel=1e-7)
    assert_close_np(params[1].grad.numpy(), expected[1], 2e-7)
