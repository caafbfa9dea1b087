"""ZClip (Kumar et al. 2025): the policy against the float64 oracle, by hand, through the torch
Clipper, across a save/resume, and its spec and validation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

import gradclip
from gradclip import _reference as ref
from gradclip._ops import NumpyOps
from gradclip._policies import Measurement
from gradclip._policies._zclip import ZClip

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # no NumPy overflow/NaN warnings
INF, NAN = math.inf, math.nan
EPS = 1e-6  # the fixed epsilon of the clip coefficient
MODES = ["reciprocal", "max", "mean"]
CASES = [(mode, cap, skip) for mode in MODES for cap in (None, 1.5) for skip in (False, True)]


def _hyper(policy: ZClip) -> dict:
    return {k: getattr(policy, k) for k in ("alpha", "z_thresh", "warmup_steps", "mode", "max_norm", "skip_on_spike", "eps")}


def _norm_sequence(seed: int, n: int = 500) -> np.ndarray:
    """Slowly drifting log-normal norms around 1 with ~5% spikes of 3x to 30x."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    base = np.exp(rng.normal(0.0, 0.25, n)) * (1.0 + 0.4 * np.sin(t / 40.0))
    spikes = rng.random(n) < 0.05
    return np.where(spikes, base * rng.uniform(3.0, 30.0, n), base)


def _run_numpy(policy: ZClip, norms, finite=None) -> dict[str, np.ndarray]:
    """The policy step by step on NumPy float64 norms; coef is the effective one (0 when skipped)."""
    state = policy.init_state(np.float64(0), NumpyOps)
    out: dict[str, list] = {k: [] for k in ("threshold", "coef", "skipped", "mu", "var", "count")}
    for i, g in enumerate(norms):
        ok = np.isfinite(g) if finite is None else finite[i]
        d, state = policy.decide(Measurement(norm=np.float64(g), finite=np.bool_(ok)), state, NumpyOps)
        skipped = bool(d.skip) if d.skip is not None else False
        out["threshold"].append(float(d.threshold))
        out["coef"].append(0.0 if skipped else float(d.coef))
        out["skipped"].append(skipped)
        for k in ("mu", "var", "count"):
            out[k].append(float(state[k]))
    return {k: np.array(v) for k, v in out.items()}


def _assert_same_trajectory(got: dict, want: dict, rtol: float, warmup: int) -> None:
    np.testing.assert_array_equal(got["skipped"], want["skipped"])
    np.testing.assert_allclose(got["threshold"], want["threshold"], rtol=rtol, atol=0)
    np.testing.assert_allclose(got["coef"], want["coef"], rtol=rtol, atol=0)
    if "mu" in got:
        np.testing.assert_allclose(got["mu"][warmup - 1:], want["mu"][warmup - 1:], rtol=rtol)
        np.testing.assert_allclose(got["var"][warmup - 1:], want["var"][warmup - 1:], rtol=1e3 * rtol)


# -- NumPy policy against the float64 oracle ----------------------------------------------------


@pytest.mark.parametrize("mode,cap,skip", CASES)
def test_numpy_policy_matches_oracle(mode, cap, skip):
    policy = ZClip(mode=mode, max_norm=cap, skip_on_spike=skip)
    norms = _norm_sequence(seed=MODES.index(mode))
    want = ref.zclip_trajectory(norms, **_hyper(policy))
    got = _run_numpy(policy, norms)
    _assert_same_trajectory(got, want, rtol=1e-12, warmup=policy.warmup_steps)
    # the sequence exercises what it claims to: spikes after warm-up, and the cap binding
    assert want["spike"].sum() >= 10 and not want["spike"][: policy.warmup_steps].any()
    assert bool(want["skipped"].any()) == skip
    assert (want["coef"][~want["spike"]] < 1).any() == (cap is not None)


def test_numpy_policy_matches_oracle_with_nonfinite_and_small_warmup():
    norms = _norm_sequence(seed=7, n=200)
    norms[[1, 3, 50, 51, 120]] = [NAN, INF, NAN, INF, NAN]
    policy = ZClip(alpha=0.8, z_thresh=1.5, warmup_steps=4, max_norm=2.0)
    want = ref.zclip_trajectory(norms, **_hyper(policy))
    got = _run_numpy(policy, norms)
    _assert_same_trajectory(got, want, rtol=1e-12, warmup=6)
    assert np.isnan(want["mu"][4]) and not np.isnan(want["mu"][5])  # two non-finite steps delayed warm-up
    assert got["count"][:6].tolist() == [1, 1, 2, 2, 3, 4]


def test_default_cap_protects_the_warmup_and_stays_like_the_official_code():
    """Defaults: max_norm=1.0 (the package's max_grad_norm) clips the warm-up steps, which the
    z-score cannot, and every later step; the oracle with its defaults agrees."""
    policy = ZClip()
    assert policy.max_norm == 1.0 and policy.spec() == "zclip"
    norms = _norm_sequence(seed=3, n=200) * 300.0  # norms of hundreds, as on the regression demo
    want = ref.zclip_trajectory(norms)
    got = _run_numpy(policy, norms)
    _assert_same_trajectory(got, want, rtol=1e-12, warmup=policy.warmup_steps)
    assert got["threshold"].tolist() == [1.0] * 200  # min(g*, 1) on spikes, 1 otherwise
    np.testing.assert_allclose(got["coef"], 1.0 / (norms + EPS), rtol=1e-15)
    # without the cap the 25 warm-up steps, and every step that is no spike, pass unclipped
    free = _run_numpy(ZClip(max_norm=None), norms)
    assert (free["coef"][:25] == 1.0).all() and (free["threshold"][:25] == INF).all()
    np.testing.assert_array_equal(free["mu"], got["mu"])  # the cap never feeds the statistics


# -- by hand ------------------------------------------------------------------------------------

# warm-up [1, 3] -> mu = 2, var = 1 (population); alpha = 0.5, z_thresh = 2, eps = 0.
# step 3: g = 6, z = 4 > 2, a spike. g* = 2 + 4/4*1 = 3 (reciprocal), 2 + 2*1 = 4 (max), 2 (mean);
#         mu = (2 + g*)/2, var = 1/2 + (g* - mu)**2/2.
# step 4: g = 2.5, not a spike in any mode; the EMA takes g = 2.5.
HAND = {
    "reciprocal": (3.0, [2.0, 2.5, 2.5], [1.0, 0.625, 0.3125]),
    "max": (4.0, [2.0, 3.0, 2.75], [1.0, 1.0, 0.53125]),
    "mean": (2.0, [2.0, 2.0, 2.25], [1.0, 0.5, 0.28125]),
}


@pytest.mark.parametrize("mode", MODES)
def test_hand_computed_trajectory(mode):
    gstar, mus, variances = HAND[mode]
    policy = ZClip(alpha=0.5, z_thresh=2.0, warmup_steps=2, mode=mode, max_norm=None, eps=0.0)
    got = _run_numpy(policy, [1.0, 3.0, 6.0, 2.5])
    assert got["threshold"].tolist() == [INF, INF, gstar, INF]
    assert got["coef"].tolist() == [1.0, 1.0, gstar / (6.0 + EPS), 1.0]
    assert got["mu"][1:].tolist() == mus and got["var"][1:].tolist() == variances
    assert got["count"].tolist() == [1.0, 2.0, 2.0, 2.0]
    assert (got["mu"][0], got["var"][0]) == (0.0, 0.0)  # statistics start only when the warm-up is full


def test_hand_computed_max_norm_caps_but_does_not_feed_the_ema():
    policy = ZClip(alpha=0.5, z_thresh=2.0, warmup_steps=2, eps=0.0, max_norm=2.5)
    got = _run_numpy(policy, [1.0, 3.0, 6.0, 2.5])
    assert got["threshold"].tolist() == [2.5, 2.5, 2.5, 2.5]  # min(g* = 3, 2.5) at the spike
    assert got["coef"].tolist() == [1.0, 2.5 / (3.0 + EPS), 2.5 / (6.0 + EPS), 1.0]
    assert got["mu"][1:].tolist() == [2.0, 2.5, 2.5]  # fed with g* = 3, not 2.5


def test_hand_computed_skip_on_spike_freezes_statistics():
    policy = ZClip(alpha=0.5, z_thresh=2.0, warmup_steps=2, eps=0.0, max_norm=None, skip_on_spike=True)
    state = policy.init_state(np.float64(0), NumpyOps)
    decisions = []
    for g in [1.0, 3.0, 6.0, 2.5]:
        d, state = policy.decide(Measurement(norm=np.float64(g)), state, NumpyOps)
        decisions.append(d)
    assert [bool(d.skip) for d in decisions] == [False, False, True, False]
    got = _run_numpy(policy, [1.0, 3.0, 6.0, 2.5])
    assert got["coef"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert got["mu"][1:].tolist() == [2.0, 2.0, 2.25]  # frozen at the spike, then 2/2 + 2.5/2
    assert got["var"][1:].tolist() == [1.0, 1.0, 0.53125]  # 1/2 + 0.25**2/2


def test_constant_warmup_sigma_zero():
    """Warm-up [2, 2, 2]: mu = 2, sigma = 0, so z = (g - 2) / 1e-6 and spikes clip to mu = 2."""
    policy = ZClip(warmup_steps=3, max_norm=None)  # alpha 0.97, z_thresh 2.5, eps 1e-6
    got = _run_numpy(policy, [2.0, 2.0, 2.0, 2.1, 5.0, 2.0, 1.5])
    assert got["threshold"].tolist() == [INF, INF, INF, 2.0, 2.0, INF, INF]
    assert got["coef"].tolist() == [1.0, 1.0, 1.0, 2.0 / (2.1 + EPS), 2.0 / (5.0 + EPS), 1.0, 1.0]
    assert got["mu"][2:6].tolist() == [2.0] * 4 and got["var"][2:6].tolist() == [0.0] * 4
    mu = 0.97 * 2.0 + 0.03 * 1.5
    assert got["mu"][6] == pytest.approx(1.985, rel=1e-15) and got["mu"][6] == mu
    assert got["var"][6] == pytest.approx(0.03 * (1.5 - 1.985) ** 2, rel=1e-12)
    # right at the boundary: z = 2 is no spike, z = 3 is one
    _, state = None, policy.init_state(np.float64(0), NumpyOps)
    for g in (2.0, 2.0, 2.0):
        _, state = policy.decide(Measurement(norm=np.float64(g)), state, NumpyOps)
    below, _ = policy.decide(Measurement(norm=np.float64(2.0 + 2e-6)), state, NumpyOps)
    above, _ = policy.decide(Measurement(norm=np.float64(2.0 + 3e-6)), state, NumpyOps)
    assert float(below.threshold) == INF and float(below.coef) == 1.0
    assert float(above.threshold) == 2.0 and float(above.coef) < 1.0


def test_nonfinite_norms_leave_state_unchanged_numpy():
    policy = ZClip(warmup_steps=2, max_norm=1.0)
    state = policy.init_state(np.float64(0), NumpyOps)
    for g in [NAN, INF, 0.5, NAN, 0.7, INF, NAN, 0.6]:
        before = {k: v.copy() for k, v in state.items()}
        d, state = policy.decide(Measurement(norm=np.float64(g), finite=np.bool_(np.isfinite(g))), state, NumpyOps)
        if not np.isfinite(g):
            for k in state:
                np.testing.assert_array_equal(state[k], before[k])
            assert float(d.threshold) == 1.0 and not bool(np.asarray(d.skip is not None and d.skip))
            assert (np.isnan(d.coef) or float(d.coef) == 1.0) if np.isnan(g) else float(d.coef) == 0.0
    # finite but flagged non-finite (an element overflowed): also ignored
    before = {k: v.copy() for k, v in state.items()}
    _, state = policy.decide(Measurement(norm=np.float64(3.0), finite=np.bool_(False)), state, NumpyOps)
    for k in state:
        np.testing.assert_array_equal(state[k], before[k])
    assert float(state["count"]) == 2 and float(state["mu"]) == pytest.approx(0.6)


# -- through gradclip.torch.Clipper on real gradients -------------------------------------------


def _linear(seed: int = 0, dtype=None):
    torch.manual_seed(seed)
    return torch.nn.Linear(6, 3, dtype=dtype or torch.float64)


@needs_torch
@pytest.mark.parametrize("mode,cap,skip", CASES)
def test_clipper_matches_oracle_on_real_gradients(mode, cap, skip):
    import gradclip.torch as gct

    policy = ZClip(mode=mode, max_norm=cap, skip_on_spike=skip, warmup_steps=20)
    model = _linear(1)
    clipper = gct.Clipper(policy)
    scales = _norm_sequence(seed=11 + MODES.index(mode))
    gen = torch.Generator().manual_seed(5)
    norms, rows = [], []
    for s in scales:
        model.zero_grad()
        x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
        (model(x).pow(2).mean() * float(s)).backward()
        before = [p.grad.clone() for p in model.parameters()]
        stats = clipper.step(model)
        norms.append(float(stats.norm))
        rows.append((stats, before, [p.grad.clone() for p in model.parameters()]))
    want = ref.zclip_trajectory(norms, **_hyper(policy))
    assert want["spike"].sum() >= 10
    for i, (stats, before, after) in enumerate(rows):
        assert bool(stats.skipped) == want["skipped"][i]
        assert float(stats.threshold) == pytest.approx(want["threshold"][i], rel=1e-12)
        assert float(stats.coef) == pytest.approx(want["coef"][i], rel=1e-12)
        assert bool(stats.clipped) == (want["coef"][i] < 1)
        for b, a in zip(before, after):
            np.testing.assert_allclose(a.numpy(), b.numpy() * want["coef"][i], rtol=1e-12, atol=0)
    state = clipper.state_dict()["state"]
    assert state["mu"].item() == pytest.approx(want["mu"][-1], rel=1e-12)
    assert state["var"].item() == pytest.approx(want["var"][-1], rel=1e-9)


@needs_torch
def test_clipper_state_takes_the_norm_dtype():
    import gradclip.torch as gct

    model = _linear(dtype=torch.float32)
    model(torch.ones(2, 6)).sum().backward()
    clipper = gct.Clipper(ZClip(warmup_steps=7))
    clipper.step(model)
    state = clipper.state_dict()["state"]
    assert {k: (v.dtype, tuple(v.shape)) for k, v in state.items()} == {
        "warm": (torch.float32, (7,)), "count": (torch.float32, ()), "mu": (torch.float32, ()),
        "var": (torch.float32, ()),
    }


def _set_grads(model, value):
    for p in model.parameters():
        p.grad = torch.full_like(p, value)


@needs_torch
def test_clipper_zero_gradients():
    """Zero gradients are norm-0 steps: never NaN. After an all-zero warm-up mu = sigma = 0, so any
    later non-zero norm is a spike clipped to mu = 0 (documented; as in the official code)."""
    import gradclip.torch as gct

    model = _linear()
    clipper = gct.Clipper(ZClip(warmup_steps=2, max_norm=None))
    for _ in range(3):
        _set_grads(model, 0.0)
        stats = clipper.step(model)
        assert float(stats.norm) == 0.0 and float(stats.coef) == 1.0 and not bool(stats.clipped)
        assert float(stats.threshold) == INF
        assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
    _set_grads(model, 0.1)
    stats = clipper.step(model)
    assert float(stats.threshold) == 0.0 and float(stats.coef) == 0.0 and bool(stats.clipped)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())


@needs_torch
@pytest.mark.parametrize("nonfinite", ["skip", "propagate"])
def test_clipper_nan_step_leaves_state_unchanged(nonfinite):
    import gradclip.torch as gct

    model = _linear()
    clipper = gct.Clipper(ZClip(alpha=0.5, z_thresh=2.0, warmup_steps=2, max_norm=None, eps=0.0),
                          nonfinite=nonfinite)
    w = model.weight.numel() + model.bias.numel()  # all-equal grads c: norm = c * sqrt(w)

    def step(c, nan=False):
        _set_grads(model, c / math.sqrt(w))
        if nan:
            model.weight.grad[0, 0] = NAN
        return clipper.step(model)

    step(1.0)
    before = clipper.state_dict()
    stats = step(1.0, nan=True)
    after = clipper.state_dict()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    assert after["state"]["count"].item() == 1.0 and after["steps"] == 2
    assert bool(stats.nonfinite)
    if nonfinite == "skip":
        assert bool(stats.skipped) and stats.threshold is None
        assert model.bias.grad.tolist() == pytest.approx([1 / math.sqrt(w)] * 3, rel=1e-15)
    else:
        assert not bool(stats.skipped) and float(stats.threshold) == INF and float(stats.coef) == 1.0
        assert math.isnan(model.weight.grad[0, 0].item())
    # the warm-up finishes with the next finite norm: [1, 3] -> mu 2, var 1, then 6 is a spike
    step(3.0)
    stats = step(6.0)
    assert float(stats.threshold) == pytest.approx(3.0, rel=1e-12)
    assert float(stats.coef) == pytest.approx(3.0 / (6.0 + EPS), rel=1e-12)
    assert clipper.state_dict()["state"]["mu"].item() == pytest.approx(2.5, rel=1e-12)


# -- save and resume ----------------------------------------------------------------------------


def _train(model, opt, clipper, start: int, stop: int) -> int:
    spikes = 0
    for t in range(start, stop):
        gen = torch.Generator().manual_seed(1000 + t)
        x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        (model(x).pow(2).mean() * (30.0 if t % 7 == 5 else 1.0)).backward()
        stats = clipper.step(model)
        spikes += int(float(stats.coef) < 1)
        if not bool(stats.skipped):
            opt.step()
    return spikes


def _fresh(policy):
    import gradclip.torch as gct

    model = _linear(seed=99)  # different init: everything must come from the checkpoint
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, opt, gct.Clipper(policy)


@needs_torch
@pytest.mark.parametrize("k", [3, 12])  # mid-warm-up and after it
@pytest.mark.parametrize("policy", [ZClip(warmup_steps=5, alpha=0.9, z_thresh=2.0, max_norm=5.0),
                                    ZClip(warmup_steps=5, mode="max", skip_on_spike=True)], ids=lambda p: p.spec())
def test_resume_is_bitwise_identical(policy, k):
    total = 30
    model, opt, clipper = _fresh(policy)
    model.load_state_dict(_linear(seed=0).state_dict())
    assert _train(model, opt, clipper, 0, total) >= 3

    model2, opt2, clipper2 = _fresh(policy)
    model2.load_state_dict(_linear(seed=0).state_dict())
    _train(model2, opt2, clipper2, 0, k)
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "clip": clipper2.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    model3, opt3, clipper3 = _fresh(policy)
    model3.load_state_dict(ckpt["model"])
    opt3.load_state_dict(ckpt["opt"])
    clipper3.load_state_dict(ckpt["clip"])
    _train(model3, opt3, clipper3, k, total)
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)
    for key, v in clipper.state_dict()["state"].items():
        assert torch.equal(v, clipper3.state_dict()["state"][key]), key
    assert clipper3.steps == total

    # without the clipper state the continuation differs: the test can see a lost state
    model4, opt4, clipper4 = _fresh(policy)
    model4.load_state_dict(ckpt["model"])
    opt4.load_state_dict(ckpt["opt"])
    _train(model4, opt4, clipper4, k, total)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), model4.parameters()))


# -- spec strings and validation ----------------------------------------------------------------


def test_spec_parsing():
    assert gradclip.parse_policy("zclip") == ZClip()
    p = gradclip.parse_policy("zclip:z=2.0,alpha=0.9")
    assert p == ZClip(z_thresh=2.0, alpha=0.9) and p.spec() == "zclip:alpha=0.9,z_thresh=2.0"
    p = gradclip.parse_policy("zclip:w=10,mode=mean,cap=2.0,skip=true,eps=0")
    assert p == ZClip(warmup_steps=10, mode="mean", max_norm=2.0, skip_on_spike=True, eps=0.0)
    assert isinstance(p.warmup_steps, int) and p.max_norm == 2.0
    assert gradclip.parse_policy(p.spec()) == p
    assert ZClip().max_norm == 1.0 and gradclip.parse_policy("zclip:cap=1.0") == ZClip()
    uncapped = gradclip.parse_policy("zclip:max_norm=none")
    assert uncapped == ZClip(max_norm=None) and uncapped.spec() == "zclip:max_norm=None"
    assert gradclip.parse_policy(uncapped.spec()) == uncapped


@pytest.mark.parametrize("spec,match", [
    ("zclip:foo=1", r"Unknown key 'foo'.*z_thresh.*z \(=z_thresh\)"),
    ("zclip:2.0", "needs a key"),
    ("zclip:mode=median", "mode must be one of 'reciprocal', 'max', 'mean'. Received: 'median'"),
    ("zclip:alpha=1", "0 < alpha < 1"),
    ("zclip:z=abc", "z_thresh must be a number"),
])
def test_spec_errors(spec, match):
    with pytest.raises(gradclip.ConfigError, match=match):
        gradclip.parse_policy(spec)


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 0.0}, r"0 < alpha < 1.*Received: 0.0"),
    ({"alpha": 1.0}, r"0 < alpha < 1.*Received: 1.0"),
    ({"alpha": NAN}, r"alpha must be .*Received: nan"),
    ({"alpha": "0.9"}, r"alpha must be .*Received: '0.9' \(str\)"),
    ({"z_thresh": 0.0}, r"z_thresh must be a finite number > 0.*Received: 0.0"),
    ({"z_thresh": -1.0}, r"z_thresh must be a finite number > 0.*Received: -1.0"),
    ({"z_thresh": INF}, r"z_thresh must be a finite number > 0.*Received: inf"),
    ({"warmup_steps": 0}, r"warmup_steps must be an int >= 1. Received: 0"),
    ({"warmup_steps": 2.5}, r"warmup_steps must be an int >= 1. Received: 2.5 \(float\)"),
    ({"warmup_steps": True}, r"warmup_steps must be an int >= 1. Received: True"),
    ({"mode": "zscore"}, r"mode must be one of .*Received: 'zscore'"),
    ({"max_norm": -1.0}, r"max_norm must be >= 0. Received: -1.0"),
    ({"max_norm": NAN}, r"max_norm must be a real number >= 0. Received: nan"),
    ({"eps": -1e-6}, r"eps must be >= 0. Received: -1e-06"),
    ({"eps": INF}, r"eps must be finite. Received: inf"),
    ({"skip_on_spike": 1}, r"skip_on_spike must be True or False. Received: 1"),
])
def test_validation_errors(kwargs, match):
    with pytest.raises(gradclip.ConfigError, match=match):
        ZClip(**kwargs)


def test_valid_edge_values_are_accepted():
    p = ZClip(alpha=0.5, z_thresh=1, warmup_steps=np.int64(1), max_norm=0, eps=0)
    assert (p.z_thresh, p.warmup_steps, p.max_norm, p.eps) == (1.0, 1, 0.0, 0.0)
    assert type(p.warmup_steps) is int and ZClip(max_norm=INF).max_norm == INF


# -- CUDA: no host-device sync ------------------------------------------------------------------


@pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_100_steps_without_sync():
    import gradclip.torch as gct

    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 8, dtype=torch.float64, device=dev)
    clipper = gct.Clipper(ZClip(warmup_steps=10, max_norm=3.0, skip_on_spike=True), nonfinite="propagate")
    xs = torch.randn(100, 16, 32, dtype=torch.float64, device=dev)
    scales = torch.ones(100, dtype=torch.float64, device=dev)
    scales[15::9] = 40.0
    out = []
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in range(100):
            model.zero_grad()
            (model(xs[t]).pow(2).mean() * scales[t]).backward()
            stats = clipper.step(model)
            out.append((stats.norm, stats.threshold, stats.coef, stats.skipped))
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    norms, thresholds, coefs, skipped = (torch.stack(c).cpu().numpy() for c in zip(*out))
    assert clipper.state_dict()["state"]["mu"].device.type == "cuda"
    want = ref.zclip_trajectory(norms, **_hyper(clipper.policy))
    assert want["skipped"].sum() >= 3
    np.testing.assert_array_equal(skipped, want["skipped"])
    np.testing.assert_allclose(thresholds, want["threshold"], rtol=1e-9)
    np.testing.assert_allclose(coefs, want["coef"], rtol=1e-9)
