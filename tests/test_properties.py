"""Invariants of clipping, checked with hypothesis on random gradient lists."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip import _reference as ref  # noqa: E402
from conftest import assert_bitwise, to64  # noqa: E402

INF = float("inf")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(
    st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4
)
norm_types = st.sampled_from([1.0, 2.0, 3.0, INF])
max_norms = st.floats(0.1, 100.0)
scales = st.sampled_from([1e-3, 1.0, 10.0, 1e3])
TOL = {torch.float64: 1e-6, torch.float32: 1e-5}


@st.composite
def grad_lists(draw, dtype):
    """Parameters with random gradients, drawn as seeds (cheap) rather than element by element."""
    shape_list = draw(shapes)
    seed, scale = draw(st.integers(0, 2**31 - 1)), draw(scales)
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in shape_list:
        p = torch.nn.Parameter(torch.zeros(s, dtype=dtype))
        p.grad = (torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(dtype)
        params.append(p)
    return params


def _flat(params):
    return np.concatenate([g.ravel() for g in to64([p.grad for p in params])] + [np.zeros(0)])


def _global_norm(params, p):
    return ref.global_norm(to64([q.grad for q in params]), p)


def _clip_with(how, params, max_norm, p):
    if how == "function":
        gct.clip_grad_norm_(params, max_norm, norm_type=p)
    else:
        gct.Clipper(gradclip.GlobalNorm(max_norm, norm_type=p)).step(params)


def _skip_inf_of_empty(params, p):
    # torch's kernels refuse the inf-norm of an empty tensor; the drop-in refuses it like torch.
    return p == INF and any(q.grad.numel() == 0 for q in params)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("how", ["function", "clipper"])
@SETTINGS
@given(data=st.data(), max_norm=max_norms, p=norm_types)
def test_global_norm_bounded_direction_kept_and_idempotent(how, dtype, data, max_norm, p):
    params = data.draw(grad_lists(dtype))
    if how == "function" and _skip_inf_of_empty(params, p):
        return
    tol = TOL[dtype]
    before = _flat(params)
    _clip_with(how, params, max_norm, p)
    once = _flat(params)
    # bounded
    assert _global_norm(params, p) <= max_norm * (1 + tol)
    # direction kept
    nb, na = np.linalg.norm(before), np.linalg.norm(once)
    if nb > 0 and na > 0:
        assert float(before @ once) / (nb * na) == pytest.approx(1.0, abs=tol)
    # below the threshold nothing moves (the torch epsilon keeps the coefficient at exactly 1)
    if ref.global_norm([before], p) + 1e-6 <= max_norm * (1 - tol):
        np.testing.assert_array_equal(once, before)
    # idempotent: a second clip only moves by the epsilon's share, 1e-6 / max_norm
    _clip_with(how, params, max_norm, p)
    twice = _flat(params)
    scale = max(float(np.max(np.abs(once))), 1e-300) if once.size else 1.0
    assert np.max(np.abs(twice - once), initial=0.0) <= (tol + 2e-6 / max_norm) * scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@SETTINGS
@given(data=st.data(), max_norm=max_norms, p=norm_types, semantics=st.sampled_from(["torch", "tf", "optax"]))
def test_per_tensor_norm_bounds_each_tensor(dtype, data, max_norm, p, semantics):
    params = data.draw(grad_lists(dtype))
    before = to64([q.grad for q in params])
    gct.Clipper(gradclip.PerTensorNorm(max_norm, norm_type=p, semantics=semantics)).step(params)
    after = to64([q.grad for q in params])
    for b, a in zip(before, after):
        assert ref.tensor_norm(a, p) <= max_norm * (1 + TOL[dtype])
        nb, na = np.linalg.norm(b), np.linalg.norm(a)
        if nb > 0 and na > 0:  # each tensor keeps its own direction
            assert float(b.ravel() @ a.ravel()) / (nb * na) == pytest.approx(1.0, abs=TOL[dtype])


bounds = st.one_of(
    st.floats(0.0, 10.0).map(lambda c: {"clip_value": c}),
    st.tuples(st.floats(-10.0, 10.0), st.floats(-10.0, 10.0)).map(lambda t: {"min": min(t), "max": max(t)}),
    st.floats(-10.0, 10.0).map(lambda c: {"max": c}),
)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("how", ["function", "clipper"])
@SETTINGS
@given(data=st.data(), kwargs=bounds)
def test_value_within_bounds_and_idempotent_bitwise(how, dtype, data, kwargs):
    if how == "function" and "clip_value" not in kwargs:
        return  # clip_grad_value_ is symmetric only
    params = data.draw(grad_lists(dtype))
    before = to64([q.grad for q in params])
    policy = gradclip.Value(**kwargs)
    lo, hi = policy.bounds

    def clip():
        if how == "function":
            gct.clip_grad_value_(params, kwargs["clip_value"])
        else:
            gct.Clipper(policy).step(params)

    clip()
    once = [q.grad.clone() for q in params]
    for b, q in zip(before, params):
        a = q.grad.double().numpy()
        if lo is not None:
            assert (a >= np.float64(torch.tensor(lo, dtype=dtype))).all()
        if hi is not None:
            assert (a <= np.float64(torch.tensor(hi, dtype=dtype))).all()
        inside = (b >= (lo if lo is not None else -INF)) & (b <= (hi if hi is not None else INF))
        np.testing.assert_array_equal(a[inside], b[inside])  # values inside the bounds do not move
    clip()
    for o, q in zip(once, params):
        assert_bitwise(q.grad, o)


# Chains, through the torch Clipper: (spec, what the last member bounds). "{c}" is the drawn
# max_norm. The first two are the chains of issue 12 (an earlier member can skip, a per-tensor
# policy follows), which used to fail at the first step.
CHAINS = [
    ("spikeguard+adagc", "tensor"),
    ("zclip:skip=true+adagc", "tensor"),
    ("spikeguard:w=4,n=2,s=1,cap=none+adagc:warmup=2", "tensor"),
    ("zclip:w=2,z=1,skip=true,cap=none+adagc:warmup=2", "tensor"),
    ("spikeguard+norm:{c}", "global"),
    ("zclip:w=2+norm:{c},norm_type=inf", "global"),
    ("norm:{c}+pertensor:{c}", "tensor"),
    ("maxhist:2,window=3+pertensor:{c}", "tensor"),  # not AutoClip: its percentile counts the current norm
]


def _tensor_norms(params, p):
    return [ref.tensor_norm(g, p) for g in to64([q.grad for q in params])]


def _check_step(params, before, stats, kind, p, tol):
    """A skipped step is all zeros; otherwise bounded by the threshold, each tensor's direction kept."""
    after = to64([q.grad for q in params])
    if bool(stats.skipped):
        assert all(not a.any() for a in after)
        return
    limit = np.asarray(stats.threshold, np.float64)
    if kind == "global":
        assert ref.global_norm(after, p) <= float(limit) * (1 + tol)
    else:
        assert np.all(np.asarray(_tensor_norms(params, p)) <= limit * (1 + tol))
    for b, a in zip(before, after):
        nb, na = np.linalg.norm(b), np.linalg.norm(a)
        if nb > 0 and na > 0:
            assert float(b.ravel() @ a.ravel()) / (nb * na) == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("spec", "kind"), CHAINS)
@SETTINGS
@given(data=st.data(), max_norm=max_norms, steps=st.lists(scales, min_size=1, max_size=6))
def test_chains_bounded_direction_kept_and_idempotent(spec, kind, dtype, data, max_norm, steps):
    policy = gradclip.parse_policy(spec.format(c=max_norm))
    assert gradclip.parse_policy(policy.spec()) == policy
    p, tol = policy.measure_norm_type, TOL[dtype]
    params = data.draw(grad_lists(dtype))
    direction = [q.grad.clone() for q in params]
    clipper = gct.Clipper(policy)
    for t, scale in enumerate(steps):  # a run of steps, so that the stateful members move
        for q, d in zip(params, direction):
            q.grad = d * scale if t % 2 == 0 else d.flip(tuple(range(d.ndim))) * scale
        before = to64([q.grad for q in params])
        saved = clipper.state_dict()
        _check_step(params, before, clipper.step(params), kind, p, tol)
    # idempotent: the same step again (the state it started from, on the gradients it left) moves
    # them by the epsilon's share at most
    once = _flat(params)
    again = gct.Clipper(policy)
    again.load_state_dict(saved)
    threshold = float(np.min(np.asarray(again.step(params).threshold, np.float64), initial=INF))
    twice = _flat(params)
    scale = max(float(np.max(np.abs(once))), 1e-300) if once.size else 1.0
    assert np.max(np.abs(twice - once), initial=0.0) <= (tol + 2e-6 / max(threshold, 1e-300)) * scale
