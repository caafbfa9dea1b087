"""AutoClip and MaxNormHistory against the float64 NumPy oracle, numpy.percentile, and the Clipper."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip import _reference as ref  # noqa: E402
from gradclip._ops import NumpyOps  # noqa: E402
from gradclip._policies._base import Measurement  # noqa: E402
from gradclip._policies._history import AutoClip, MaxNormHistory  # noqa: E402
from gradclip.torch._ops import TorchOps  # noqa: E402
from conftest import assert_bitwise, grads_of  # noqa: E402

NAN, INF = float("nan"), float("inf")


def _norms(n=1000, seed=0):
    rng = np.random.default_rng(seed)
    norms = np.exp(rng.normal(0.0, 1.0, n))
    norms[rng.integers(0, n, 20)] *= 50.0  # spikes
    norms[rng.integers(0, n, 10)] = norms[3]  # ties
    return norms


def _run_numpy(policy, norms):
    state = policy.init_state(np.float64(0.0), NumpyOps)
    thresholds, coefs = [], []
    for n in norms:
        d, state = policy.decide(Measurement(norm=np.float64(n), finite=np.isfinite(n)), state, NumpyOps)
        thresholds.append(float(d.threshold))
        coefs.append(float(d.coef))
    return thresholds, coefs, state


# ----------------------------------------------------------------------------- AutoClip, NumPy ops
@pytest.mark.parametrize("window", [None, 1, 7, 100])
@pytest.mark.parametrize("percentile", [10.0, 0.0, 37.5, 50.0, 99.9, 100.0])
def test_autoclip_numpy_equals_numpy_percentile_every_step(percentile, window):
    norms = _norms()
    thresholds, coefs, _ = _run_numpy(AutoClip(percentile, window=window, max_norm=None), norms)
    for t in range(len(norms)):
        hist = norms[: t + 1] if window is None else norms[max(0, t + 1 - window): t + 1]
        assert thresholds[t] == np.percentile(hist, percentile), t  # same arithmetic: bitwise
    exp_thr, exp_coef = ref.autoclip(norms, percentile, window, max_norm=None)
    assert thresholds == exp_thr
    np.testing.assert_allclose(coefs, exp_coef, rtol=1e-15)


def test_autoclip_percentile_100_never_clips_and_0_is_running_minimum():
    norms = _norms(300, seed=1)
    thr, coefs, _ = _run_numpy(AutoClip(100.0, max_norm=None), norms)
    assert coefs == [1.0] * len(norms)
    assert thr == list(np.maximum.accumulate(norms))
    thr, coefs, _ = _run_numpy(AutoClip(0.0, max_norm=None), norms)
    assert thr == list(np.minimum.accumulate(norms))
    running_min = np.minimum.accumulate(norms)
    np.testing.assert_allclose(np.asarray(coefs) * norms, running_min, rtol=1e-15)


def test_autoclip_scripted_spike_constant_and_zero():
    thr, coefs, _ = _run_numpy(AutoClip(50.0, max_norm=None), [1.0, 1.0, 1.0, 1.0, 100.0, 1.0])
    assert thr == [1.0] * 6  # the spike enters the history but not the median
    assert coefs == [1.0, 1.0, 1.0, 1.0, 0.01, 1.0]
    thr, coefs, _ = _run_numpy(AutoClip(10.0, max_norm=None), [3.0] * 50)
    assert thr == [3.0] * 50 and coefs == [1.0] * 50  # equal to the threshold: untouched
    thr, coefs, _ = _run_numpy(AutoClip(0.0, max_norm=None), [2.0, 0.0, 5.0, 0.0])
    assert thr == [2.0, 0.0, 0.0, 0.0] and coefs == [1.0, 1.0, 0.0, 1.0]  # zero gradients: 0/0 never


def test_autoclip_torch_semantics_is_the_authors_clip_grad_norm_factor():
    norms = _norms(200, seed=2)
    _, coefs, _ = _run_numpy(AutoClip(30.0, semantics="torch", max_norm=None), norms)
    thr, exp = ref.autoclip(norms, 30.0, semantics="torch", max_norm=None)
    np.testing.assert_allclose(coefs, exp, rtol=1e-15)
    assert coefs[0] == pytest.approx(1 - 1e-6 / norms[0], rel=1e-12)  # even norm == threshold is scaled


def test_autoclip_nonfinite_norms_not_recorded():
    policy = AutoClip(40.0, window=3, max_norm=None)
    norms = [1.0, 5.0, NAN, 2.0, INF, 4.0, 3.0]
    state = policy.init_state(np.float64(0.0), NumpyOps)
    for n in norms:
        before = {k: v.copy() for k, v in state.items()}
        with np.errstate(invalid="ignore"):
            d, state = policy.decide(Measurement(norm=np.float64(n), finite=np.isfinite(n)), state, NumpyOps)
        if not np.isfinite(n):
            assert np.isnan(d.coef)
            for k in state:
                np.testing.assert_array_equal(state[k], before[k])
    exp_thr, _ = ref.autoclip(norms, 40.0, window=3, max_norm=None)
    assert exp_thr[2] == np.percentile([1.0, 5.0], 40.0)
    assert _run_numpy_quiet(policy, norms) == exp_thr
    assert int(state["count"]) == 3 and sorted(state["sorted"][0].tolist()) == [2.0, 3.0, 4.0]


def _run_numpy_quiet(policy, norms):
    with np.errstate(invalid="ignore"):
        return _run_numpy(policy, norms)[0]


def test_autoclip_unbounded_buffer_grows_one_slot_per_call():
    policy = AutoClip(10.0, max_norm=None)
    state = policy.init_state(np.float64(0.0), NumpyOps)
    for i, n in enumerate([3.0, 1.0, NAN, 2.0]):
        with np.errstate(invalid="ignore"):
            _, state = policy.decide(Measurement(norm=np.float64(n), finite=np.isfinite(n)), state, NumpyOps)
        assert state["sorted"].shape == (1, i + 1)
    assert state["sorted"][0].tolist() == [1.0, 2.0, 3.0, INF] and int(state["count"]) == 3


@pytest.mark.parametrize("window", [None, 5])
def test_autoclip_per_tensor_scope(window):
    rng = np.random.default_rng(3)
    tn = np.exp(rng.normal(size=(60, 4)))
    policy = AutoClip(25.0, window=window, scope="tensor", max_norm=None)
    assert policy.needs_tensor_norms and not AutoClip().needs_tensor_norms
    state = policy.init_state(np.float64(0.0), NumpyOps)
    for t in range(len(tn)):
        m = Measurement(norm=np.float64(np.linalg.norm(tn[t])), tensor_norms=tn[t])
        d, state = policy.decide(m, state, NumpyOps)
        lo = 0 if window is None else max(0, t + 1 - window)
        thr = np.array([np.percentile(tn[lo: t + 1, k], 25.0) for k in range(4)])
        np.testing.assert_array_equal(d.coefs, np.where(tn[t] > thr, thr / tn[t], 1.0))
    with pytest.raises(gradclip.ConfigError, match="started with 4 tensors, but this step has 3"):
        policy.decide(Measurement(norm=np.float64(1.0), tensor_norms=tn[0, :3]), state, NumpyOps)


# ----------------------------------------------------------------------------- MaxNormHistory
@pytest.mark.parametrize("stat", ["mean", "max"])
@pytest.mark.parametrize(("factor", "window"), [(5.0, 100), (2.0, 1), (1.5, 13)])
def test_maxhist_numpy_matches_reference(factor, window, stat):
    norms = _norms(1000, seed=4)
    thr, coefs, _ = _run_numpy(MaxNormHistory(factor, window=window, stat=stat, max_norm=None), norms)
    exp_thr, exp_coef = ref.max_norm_history(norms, factor, window, stat, max_norm=None)
    assert thr[0] == INF and coefs[0] == 1.0  # nothing recorded yet: no clipping
    np.testing.assert_allclose(thr, exp_thr, rtol=1e-13)
    np.testing.assert_allclose(coefs, exp_coef, rtol=1e-13)
    assert thr[5] == pytest.approx(factor * getattr(np, stat)(norms[max(0, 5 - window):5]), rel=1e-13)


def test_maxhist_scripted_and_nonfinite():
    norms = [1.0, 1.0, NAN, 1.0, 20.0, 1.0]
    with np.errstate(invalid="ignore"):
        thr, coefs, state = _run_numpy(MaxNormHistory(5.0, window=3, max_norm=None), norms)
    assert thr == [INF, 5.0, 5.0, 5.0, 5.0, pytest.approx(5.0 * 22.0 / 3.0)]
    assert coefs[:2] == [1.0, 1.0] and np.isnan(coefs[2]) and coefs[4] == 0.25
    assert float(state["count"]) == 3.0  # NaN not recorded
    assert thr == pytest.approx(ref.max_norm_history(norms, 5.0, 3, max_norm=None)[0])


# ----------------------------------------------------------------------------- the max_norm cap
@pytest.mark.parametrize("max_norm", [1.0, 0.5, 4.0, 0.0, INF])
@pytest.mark.parametrize("policy_of", [lambda c: AutoClip(10.0, max_norm=c), lambda c: AutoClip(60.0, window=9, max_norm=c),
                                       lambda c: AutoClip(25.0, semantics="torch", max_norm=c),
                                       lambda c: MaxNormHistory(5.0, max_norm=c),
                                       lambda c: MaxNormHistory(2.0, window=7, stat="max", max_norm=c)],
                         ids=["autoclip", "autoclip-window", "autoclip-torch", "maxhist", "maxhist-max"])
def test_cap_matches_reference(policy_of, max_norm):
    policy = policy_of(max_norm)
    norms = _norms(300, seed=4) * np.repeat([10.0, 0.01], 150)  # large norms, then small ones
    if policy.semantics == "exact":
        norms[[5, 177]] = [NAN, INF]  # not recorded; their factor is NaN
    with np.errstate(invalid="ignore"):
        thresholds, coefs, _ = _run_numpy(policy, norms)
    if isinstance(policy, AutoClip):
        exp_thr, exp_coef = ref.autoclip(norms, policy.percentile, policy.window, policy.semantics, max_norm)
    else:
        exp_thr, exp_coef = ref.max_norm_history(norms, policy.factor, policy.window, policy.stat, max_norm=max_norm)
    if isinstance(policy, AutoClip):
        assert thresholds == exp_thr  # min() of numpy.percentile's numbers: bitwise
    np.testing.assert_allclose(thresholds, exp_thr, rtol=1e-14)  # the mean sums in another order
    np.testing.assert_allclose(coefs, exp_coef, rtol=1e-15)  # NaN where the reference has NaN
    assert max(thresholds) <= max_norm
    if 0 < max_norm < INF:  # both regimes exercised: the cap binds, then the rule does
        capped = [t == max_norm for t in thresholds]
        assert any(capped[:150]) and not all(capped[150:]), capped


@pytest.mark.parametrize("policy", [AutoClip(), AutoClip(10.0, window=50), MaxNormHistory()], ids=lambda p: p.spec())
def test_default_cap_protects_the_first_steps(policy):
    """No history yet: the published rules leave the first step unclipped; the default cap clips it."""
    thresholds, coefs, _ = _run_numpy(policy, [300.0, 350.0, 0.4, 280.0])
    assert policy.max_norm == 1.0
    assert thresholds == [1.0] * 4
    assert coefs == [1.0 / 300.0, 1.0 / 350.0, 1.0, 1.0 / 280.0]
    uncapped = dataclasses.replace(policy, max_norm=None)
    assert _run_numpy(uncapped, [300.0])[1] == [1.0]  # the paper's rule: the first step passes


def test_cap_never_feeds_the_history():
    capped, _, state = _run_numpy(AutoClip(50.0, max_norm=0.5), [3.0, 1.0, 2.0])
    _, _, free = _run_numpy(AutoClip(50.0, max_norm=None), [3.0, 1.0, 2.0])
    assert capped == [0.5] * 3
    for k in state:
        np.testing.assert_array_equal(state[k], free[k])  # the raw norms are recorded
    _, _, state = _run_numpy(MaxNormHistory(5.0, window=3, max_norm=0.5), [3.0, 1.0, 2.0])
    assert state["ring"].tolist() == [3.0, 1.0, 2.0]


def test_cap_per_tensor_scope_caps_each_threshold():
    norms = np.array([[0.2, 5.0, 40.0], [0.3, 6.0, 50.0], [0.25, 4.0, 60.0]])
    policy = AutoClip(50.0, scope="tensor", max_norm=2.0)
    state = policy.init_state(np.float64(0.0), NumpyOps)
    for row in norms:
        tn = row.astype(np.float64)
        d, state = policy.decide(Measurement(norm=np.float64(np.linalg.norm(tn)), tensor_norms=tn), state, NumpyOps)
    want = np.minimum(np.percentile(norms, 50.0, axis=0), 2.0)
    np.testing.assert_array_equal(d.threshold, want)
    np.testing.assert_allclose(d.coefs, np.where(norms[-1] > want, want / norms[-1], 1.0), rtol=1e-15)


def test_clipper_default_cap_matches_reference_on_real_grads():
    """Through the torch Clipper on float32 gradients with norms well above 1: the cap binds."""
    model = _model(2)
    clipper = gct.Clipper(AutoClip(10.0))
    norms, coefs = [], []
    for step in range(100):
        _backward(model, step)
        for p in model.parameters():
            p.grad.mul_(30.0)
        stats = clipper.step(model)
        norms.append(float(stats.norm))
        coefs.append(float(stats.coef))
        assert float(stats.threshold) <= 1.0
    _, exp_coef = ref.autoclip(norms, 10.0)
    np.testing.assert_allclose(coefs, exp_coef, rtol=2e-6)
    assert sum(c < 1 for c in coefs) > 50


# ----------------------------------------------------------------------------- spec strings, errors
@pytest.mark.parametrize(
    ("spec", "policy"),
    [
        ("autoclip:p=10", AutoClip(10.0)),
        ("autoclip", AutoClip()),
        ("autoclip:percentile=25,window=50", AutoClip(25.0, window=50)),
        ("autoclip:5,scope=tensor", AutoClip(5.0, scope="tensor")),
        ("maxhist:5", MaxNormHistory(5.0)),
        ("maxhist:10,window=20,stat=max", MaxNormHistory(10.0, window=20, stat="max")),
        ("autoclip:10,cap=none", AutoClip(10.0, max_norm=None)),
        ("autoclip:p=10,max_norm=0.5", AutoClip(10.0, max_norm=0.5)),
        ("maxhist:5,cap=none", MaxNormHistory(5.0, max_norm=None)),
        ("maxhist:5,max_norm=inf", MaxNormHistory(5.0, max_norm=float("inf"))),
    ],
)
def test_spec_parsing_and_round_trip(spec, policy):
    parsed = gradclip.parse_policy(spec)
    assert parsed == policy and type(parsed) is type(policy)
    assert gradclip.parse_policy(parsed.spec()) == policy
    assert isinstance(parsed.window, (int, type(None))) and not isinstance(parsed.window, bool)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("autoclip:q=10", "Unknown key 'q'.*Valid keys for 'autoclip': percentile, window, scope, semantics, max_norm, p"),
        ("autoclip:101", r"percentile must be a number in \[0, 100\]. Received: 101"),
        ("autoclip:-1", r"percentile must be a number in \[0, 100\]"),
        ("autoclip:p=10,window=0", "window must be an int >= 1 or None. Received: 0"),
        ("autoclip:window=2.5", "window must be an int >= 1 or None. Received: 2.5"),
        ("autoclip:scope=layer", "scope must be one of 'global', 'tensor'. Received: 'layer'"),
        ("maxhist:0", "factor must be > 0"),
        ("maxhist:-2", "factor must be >= 0"),
        ("maxhist:5,stat=median", "stat must be one of 'mean', 'max'"),
        ("maxhist:5,window=none", "window must be an int >= 1. Received: None"),
        ("maxhist:5,semantics=tf", "semantics must be one of 'exact', 'torch'"),
        ("autoclip:10,max_norm=-1", "max_norm must be >= 0. Received: -1.0"),
        ("maxhist:5,cap=nan", "max_norm must be a real number >= 0. Received: nan"),
    ],
)
def test_spec_errors(spec, match):
    with pytest.raises(gradclip.ConfigError, match=match):
        gradclip.parse_policy(spec)


def test_constructor_errors():
    with pytest.raises(gradclip.ConfigError, match="Received: True"):
        AutoClip(True)
    with pytest.raises(gradclip.ConfigError, match="Received: nan"):
        AutoClip(NAN)
    with pytest.raises(gradclip.ConfigError, match="window must be an int >= 1"):
        MaxNormHistory(window=True)


# ----------------------------------------------------------------------------- Clipper on torch grads
def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _backward(model, step, poison=False):
    gen = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(16, 6, generator=gen) * float(np.exp(torch.randn(1, generator=gen).item()))
    model.zero_grad()
    loss = (model(x) ** 2).mean()
    loss.backward()
    if poison:
        model[0].weight.grad[0, 0] = NAN


@pytest.mark.parametrize("policy", [AutoClip(10.0, max_norm=None), AutoClip(60.0, window=25, max_norm=0.5),
                                    MaxNormHistory(2.0, window=30, max_norm=None), MaxNormHistory(2.0, window=30)],
                         ids=lambda p: p.spec())
def test_clipper_1000_steps_matches_oracle_on_real_grads(policy):
    model = _model()
    clipper = gct.Clipper(policy)
    norms, thresholds, coefs = [], [], []
    for step in range(1000):
        _backward(model, step)
        before = grads_of(model.parameters())
        stats = clipper.step(model)
        norms.append(float(stats.norm))
        thresholds.append(float(stats.threshold))
        coefs.append(float(stats.coef))
        for p, b in zip(model.parameters(), before):
            assert_bitwise(p.grad, b * stats.coef)
    if isinstance(policy, AutoClip):
        exp_thr, exp_coef = ref.autoclip(norms, policy.percentile, policy.window, max_norm=policy.max_norm)
        # float32 norms, float64 interpolation rounded once to float32: numpy's value to the last bit
        assert thresholds == [float(np.float32(t)) for t in exp_thr]
    else:
        exp_thr, exp_coef = ref.max_norm_history(norms, policy.factor, policy.window, policy.stat,
                                                 max_norm=policy.max_norm)
        np.testing.assert_allclose(thresholds, exp_thr, rtol=2e-6)
    np.testing.assert_allclose(coefs, exp_coef, rtol=2e-6)
    assert 0 < sum(c < 1 for c in coefs) < 1000


def test_clipper_percentile_100_is_identity():
    model = _model(1)
    clipper = gct.Clipper("autoclip:100,cap=none")
    for step in range(200):
        _backward(model, step)
        before = grads_of(model.parameters())
        stats = clipper.step(model)
        assert not bool(stats.clipped) and float(stats.coef) == 1.0
        for p, b in zip(model.parameters(), before):
            assert_bitwise(p.grad, b)


def test_clipper_per_tensor_scope():
    model = _model(2)
    clipper = gct.Clipper(AutoClip(20.0, scope="tensor", max_norm=None))
    hist = []
    for step in range(50):
        _backward(model, step)
        before = grads_of(model.parameters())
        hist.append([float(torch.linalg.vector_norm(g)) for g in before])
        clipper.step(model)
        h = np.asarray(hist, dtype=np.float64)
        for k, (p, b) in enumerate(zip(model.parameters(), before)):
            thr = np.float32(np.percentile(h[:, k], 20.0))
            expected = b * (float(thr) / h[-1, k]) if h[-1, k] > thr else b
            torch.testing.assert_close(p.grad, expected, rtol=2e-6, atol=0)


@pytest.mark.parametrize("mode", ["skip", "propagate"])
@pytest.mark.parametrize("policy", [AutoClip(30.0, max_norm=None), MaxNormHistory(3.0, window=4, max_norm=None)],
                         ids=lambda p: p.spec())
def test_clipper_nan_step_not_recorded(policy, mode):
    model = _model(3)
    clipper = gct.Clipper(policy, nonfinite=mode)
    norms, thresholds = [], []
    for step in range(12):
        _backward(model, step, poison=step in (4, 7))
        stats = clipper.step(model)
        norms.append(float(stats.norm))
        thresholds.append(None if stats.threshold is None else float(stats.threshold))
        if step in (4, 7):
            assert bool(stats.nonfinite)
            if mode == "skip":
                assert bool(stats.skipped) and stats.threshold is None
            else:
                assert all(torch.isnan(p.grad).all() for p in model.parameters())  # NaN spreads
    assert np.isnan(norms[4]) and np.isnan(norms[7])
    count = clipper.state_dict()["state"]["count"]
    assert float(count) == (10 if isinstance(policy, AutoClip) else 4)
    exp = (ref.autoclip(norms, 30.0, max_norm=None) if isinstance(policy, AutoClip)
           else ref.max_norm_history(norms, 3.0, 4, max_norm=None))[0]
    for t in range(12):
        if thresholds[t] is not None:
            assert thresholds[t] == pytest.approx(exp[t], rel=2e-6)


# ----------------------------------------------------------------------------- resume
def _train(policy, steps, model=None, opt=None, clipper=None, start=0):
    model = model or _model(7)
    opt = opt or torch.optim.Adam(model.parameters(), lr=1e-2)
    clipper = clipper or gct.Clipper(policy)
    for step in range(start, start + steps):
        _backward(model, step)
        clipper.step(model)
        opt.step()
    return model, opt, clipper


@pytest.mark.parametrize(
    "policy", [AutoClip(10.0), AutoClip(50.0, window=8, max_norm=None), AutoClip(25.0, scope="tensor", max_norm=None),
               MaxNormHistory(1.5, window=6, max_norm=None)],
    ids=lambda p: p.spec(),
)
def test_resume_is_bitwise_identical(policy):
    full_model, _, full_clipper = _train(policy, 40)

    model, opt, clipper = _train(policy, 17)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "clipper": clipper.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    model2 = _model(99)
    model2.load_state_dict(saved["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-2)
    opt2.load_state_dict(saved["opt"])
    clipper2 = gct.Clipper(policy.spec())
    clipper2.load_state_dict(saved["clipper"])
    _train(policy, 23, model2, opt2, clipper2, start=17)

    for a, b in zip(full_model.parameters(), model2.parameters()):
        assert_bitwise(a.detach(), b.detach())
    s1, s2 = full_clipper.state_dict(), clipper2.state_dict()
    assert s1["steps"] == s2["steps"] == 40 and s1["state"].keys() == s2["state"].keys()
    for k in s1["state"]:
        assert_bitwise(s1["state"][k], s2["state"][k])


# ----------------------------------------------------------------------------- ops parity, device
def test_searchsorted_left_numpy_and_torch_agree():
    rows = np.sort(np.random.default_rng(5).integers(0, 5, size=(3, 9)).astype(np.float64), axis=-1)
    rows[:, -2:] = INF
    values = np.array([2.0, 0.0, INF])
    want = np.array([np.searchsorted(r, v, side="left") for r, v in zip(rows, values)])
    np.testing.assert_array_equal(NumpyOps.searchsorted_left(rows, values), want)
    got = TorchOps.searchsorted_left(torch.from_numpy(rows), torch.from_numpy(values))
    assert got.dtype == torch.int64 and got.tolist() == want.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "policy", [AutoClip(10.0), AutoClip(50.0, window=16, scope="tensor"), MaxNormHistory(5.0, window=10)],
    ids=lambda p: p.spec(),
)
def test_cuda_100_steps_without_host_sync(policy):
    model = _model(4).cuda()
    cpu_model = _model(4)
    clipper, cpu_clipper = gct.Clipper(policy), gct.Clipper(policy)
    xs = [torch.randn(16, 6, generator=torch.Generator().manual_seed(s)) * (1 + s % 7) for s in range(100)]
    xs_cuda = [x.cuda() for x in xs]
    coefs = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x in xs_cuda:
            model.zero_grad()
            (model(x) ** 2).mean().backward()
            stats = clipper.step(model)
            coefs.append(stats.coef if stats.coef is not None else stats.norm)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for x in xs:
        cpu_model.zero_grad()
        (cpu_model(x) ** 2).mean().backward()
        cpu_clipper.step(cpu_model)
    for k, v in clipper.state_dict()["state"].items():
        assert v.device.type == "cuda", k
        torch.testing.assert_close(v.cpu(), cpu_clipper.state_dict()["state"][k], rtol=1e-5, atol=1e-6)
    assert len(coefs) == 100
