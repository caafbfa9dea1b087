"""SpikeGuard (rolling mean + sigma*std skip rule) and policy chains."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip import _reference as ref  # noqa: E402
from gradclip._ops import NumpyOps  # noqa: E402
from gradclip._policies import Chain, Measurement, SpikeGuard, chain  # noqa: E402


def spike_oracle(norms, window, min_history, sigma):
    """Plain-Python SpikeGuard: (spike?, limit) per step; every finite norm enters the window."""
    hist, out = [], []
    for g in norms:
        if len(hist) >= min_history:
            mean = sum(hist) / len(hist)
            std = math.sqrt(sum((h - mean) ** 2 for h in hist) / (len(hist) - 1))
            limit = mean + sigma * std
            out.append((math.isfinite(g) and g > limit, limit))
        else:
            out.append((False, math.inf))
        if math.isfinite(g):
            hist = (hist + [g])[-window:]
    return out


def _norm_sequence(n=300, seed=0):
    rng = np.random.default_rng(seed)
    norms = np.abs(rng.normal(1.0, 0.1, n))
    norms[[40, 90, 91, 200]] = [8.0, 12.0, 6.0, 30.0]
    norms[150] = np.nan
    return norms


@pytest.mark.parametrize(("window", "min_history", "sigma"), [(16, 8, 3.0), (128, 64, 6.0), (5, 2, 1.0)])
def test_numpy_policy_matches_oracle(window, min_history, sigma):
    norms = _norm_sequence()
    policy = SpikeGuard(window=window, min_history=min_history, sigma=sigma, max_norm=None)
    state = policy.init_state(np.float64(0), NumpyOps)
    for g, (spike, limit) in zip(norms, spike_oracle(list(norms), window, min_history, sigma)):
        d, state = policy.decide(Measurement(norm=np.float64(g), finite=np.isfinite(g)), state, NumpyOps)
        assert bool(d.skip) == spike
        assert float(d.threshold) == pytest.approx(limit, rel=1e-12) if math.isfinite(limit) else math.isinf(d.threshold)


def _run_torch(policy, norms, nonfinite="propagate"):
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    clipper = gct.Clipper(policy, nonfinite=nonfinite)
    out = []
    for g in norms:
        w.grad = torch.full((4,), g / 2.0, dtype=torch.float64)  # norm of 4 equal entries g/2 is g
        stats = clipper.step([w])
        out.append((stats, w.grad.clone()))
    return out, clipper


def test_torch_clipper_skips_spikes_and_zeroes_them():
    norms = _norm_sequence()
    expected = spike_oracle(list(norms), 16, 8, 3.0)
    results, _ = _run_torch(SpikeGuard(16, 8, 3.0, max_norm=None), norms, nonfinite="skip")
    assert sum(s for s, _ in expected) >= 3
    for (stats, grad), (spike, _), g in zip(results, expected, norms):
        if not math.isfinite(g):
            assert bool(stats.skipped) and bool(stats.nonfinite)
            continue
        assert bool(stats.skipped) == spike
        if spike:
            assert torch.count_nonzero(grad) == 0 and float(stats.coef) == 0.0
        else:
            assert torch.equal(grad, torch.full((4,), g / 2.0, dtype=torch.float64))


def test_clip_mode_clips_to_the_limit():
    norms = _norm_sequence()
    expected = spike_oracle(list(norms), 16, 8, 3.0)
    results, _ = _run_torch(SpikeGuard(16, 8, 3.0, on_spike="clip", max_norm=None), norms, nonfinite="skip")
    for (stats, grad), (spike, limit) in zip(results, expected):
        if spike:
            assert not bool(stats.skipped)
            assert float(torch.linalg.vector_norm(grad)) == pytest.approx(limit, rel=1e-5)


def test_resume_is_bitwise_identical():
    norms = _norm_sequence()[:120]
    full, _ = _run_torch(SpikeGuard(16, 8, 3.0), norms)
    first, clipper = _run_torch(SpikeGuard(16, 8, 3.0), norms[:60])
    saved = clipper.state_dict()
    fresh = gct.Clipper(SpikeGuard(16, 8, 3.0))
    fresh.load_state_dict(saved)
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    for g, (stats_full, grad_full) in zip(norms[60:], full[60:]):
        w.grad = torch.full((4,), g / 2.0, dtype=torch.float64)
        stats = fresh.step([w])
        assert torch.equal(w.grad, grad_full) or (torch.isnan(w.grad).all() and torch.isnan(grad_full).all())
        assert bool(stats.skipped) == bool(stats_full.skipped)


@pytest.mark.parametrize(
    "kwargs",
    [{"window": 1}, {"min_history": 1}, {"window": 8, "min_history": 9}, {"sigma": 0}, {"sigma": -1},
     {"on_spike": "panic"}, {"window": 2.5}],
)
def test_bad_hyper_parameters(kwargs):
    with pytest.raises(gradclip.ConfigError):
        SpikeGuard(**kwargs)


def test_chain_skip_freezes_later_members_and_composes_factors():
    policy = chain(SpikeGuard(16, 8, 3.0, max_norm=None), gradclip.GlobalNorm(0.5))
    assert gradclip.parse_policy(policy.spec()) == policy
    norms = _norm_sequence()
    expected = spike_oracle(list(norms), 16, 8, 3.0)
    results, _ = _run_torch(policy, norms, nonfinite="skip")
    for (stats, grad), (spike, _), g in zip(results, expected, norms):
        if not math.isfinite(g):
            continue
        if spike:
            assert bool(stats.skipped) and torch.count_nonzero(grad) == 0
        else:
            want = g * min(1.0, 0.5 / (g + 1e-6))
            assert float(torch.linalg.vector_norm(grad)) == pytest.approx(want, rel=1e-12)
            assert stats.threshold == 0.5


def test_chain_of_agc_and_global_norm_equals_applying_them_in_turn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).double()
    model(torch.randn(3, 4, dtype=torch.float64)).sum().mul(100).backward()
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).double()
    twin.load_state_dict(model.state_dict())
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    stats = gct.Clipper("agc:0.01+norm:0.05").step(model)
    gct.Clipper("agc:0.01").step(twin)
    gct.Clipper("norm:0.05").step(twin)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)
    actual = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(stats.clipped_norm) == pytest.approx(float(actual), rel=1e-10)


def test_chain_refuses_value_and_short_chains():
    with pytest.raises(gradclip.ConfigError, match="cannot be chained"):
        gradclip.parse_policy("value:1+norm:1")
    with pytest.raises(gradclip.ConfigError, match="two or more"):
        Chain((gradclip.GlobalNorm(1.0),))
    with pytest.raises(gradclip.ConfigError, match="policies"):
        chain(gradclip.GlobalNorm(1.0), "norm:1.0")


def test_constant_history_has_zero_std_so_anything_above_the_mean_is_a_spike():
    policy = SpikeGuard(window=4, min_history=3, sigma=6.0, max_norm=None)
    state = policy.init_state(np.float64(0), NumpyOps)
    for g in [2.0, 2.0, 2.0]:
        d, state = policy.decide(Measurement(norm=np.float64(g)), state, NumpyOps)
        assert not bool(d.skip)
    d, _ = policy.decide(Measurement(norm=np.float64(2.0)), state, NumpyOps)
    assert not bool(d.skip) and float(d.threshold) == 2.0  # equal to the mean: not a spike
    d, _ = policy.decide(Measurement(norm=np.float64(2.0000001)), state, NumpyOps)
    assert bool(d.skip)


def test_zero_gradients_are_never_spikes_and_enter_the_window():
    results, clipper = _run_torch(SpikeGuard(window=4, min_history=2, sigma=1.0, max_norm=None), [0.0, 0.0, 0.0, 0.0])
    assert not any(bool(s.skipped) for s, _ in results)
    state = clipper.state_dict()["state"]
    assert float(state["count"]) == 4.0 and float(state["norms"].abs().sum()) == 0.0


# -- the max_norm cap (default 1.0: OLMo 2 clips to 1.0 and skips spikes) ------------------------


@pytest.mark.parametrize("on_spike", ["skip", "clip"])
@pytest.mark.parametrize("max_norm", [1.0, 3.0, None])
def test_numpy_policy_with_cap_matches_reference(on_spike, max_norm):
    norms = _norm_sequence() * np.where(np.arange(300) % 3 == 0, 1.5, 0.8)  # some above 1, some below
    policy = SpikeGuard(16, 8, 3.0, on_spike=on_spike, max_norm=max_norm)
    want = ref.spike_guard(norms, 16, 8, 3.0, on_spike, max_norm)
    state = policy.init_state(np.float64(0), NumpyOps)
    for i, g in enumerate(norms):
        d, state = policy.decide(Measurement(norm=np.float64(g), finite=np.isfinite(g)), state, NumpyOps)
        assert float(d.threshold) == pytest.approx(want["threshold"][i], rel=1e-12), i
        assert bool(d.skip is not None and d.skip) == want["skipped"][i], i
        coef = 1.0 if d.coef is None else float(d.coef)
        assert coef == pytest.approx(want["coef"][i], rel=1e-12, nan_ok=True), i
    assert want["skipped"].any() == (on_spike == "skip")
    assert (want["coef"] < 1).any() == (on_spike == "clip" or max_norm is not None)


def test_reference_without_cap_is_the_plain_rule():
    norms = list(_norm_sequence())
    want = ref.spike_guard(norms, 16, 8, 3.0, max_norm=None)
    for (spike, limit), thr, skipped in zip(spike_oracle(norms, 16, 8, 3.0), want["threshold"], want["skipped"]):
        assert skipped == spike and thr == pytest.approx(limit, rel=1e-12)


def test_default_cap_protects_the_first_steps_through_the_clipper():
    """Before min_history norms nothing can be a spike: only the cap clips (norms 300 -> 1)."""
    norms = [300.0, 320.0, 0.5, 310.0]
    results, _ = _run_torch(SpikeGuard(window=8, min_history=4), norms)
    want = ref.spike_guard(norms, 8, 4)
    for (stats, grad), g, c in zip(results, norms, want["coef"]):
        assert not bool(stats.skipped) and float(stats.threshold) == 1.0
        assert float(stats.coef) == pytest.approx(c, rel=1e-15)
        assert float(torch.linalg.vector_norm(grad)) == pytest.approx(min(g, 1.0), rel=1e-6)


def test_spec_cap():
    assert SpikeGuard().max_norm == 1.0
    p = gradclip.parse_policy("spikeguard:cap=none")
    assert p == SpikeGuard(max_norm=None) and gradclip.parse_policy(p.spec()) == p
    spec = gradclip.parse_policy("spikeguard:max_norm=2,on_spike=clip").spec()
    assert spec == "spikeguard:on_spike=clip,max_norm=2.0"
    with pytest.raises(gradclip.ConfigError, match="max_norm must be >= 0. Received: -1.0"):
        SpikeGuard(max_norm=-1)


# A member that can skip, followed by a per-tensor policy that creates its state on first sight
# (AdaGC's "gamma.<name>"): these chains used to fail at the first step with KeyError 'gamma.<name>'.
SKIP_THEN_PER_TENSOR = [
    "spikeguard+adagc",
    "zclip:skip=true+adagc",
    "spikeguard:w=4,n=2,s=1,cap=none+adagc:warmup=2",
    "zclip:w=2,z=1,skip=true,cap=none+adagc:warmup=2",
]
_SCALES = [1.0, 1.1, 0.9, 1.0, 50.0, 1.0, 1.05, 60.0, 0.95]  # two spikes
_SHAPES = [(3, 2), (4,)]


def _chain_grads(step):
    rng = np.random.default_rng(step)
    return [(rng.standard_normal(s) * _SCALES[step]).astype(np.float32) for s in _SHAPES]


def _numpy_run(spec, names):
    """gradclip's NumPy step of the same chain: (new grads, skipped, state) per step."""
    from gradclip import _step

    policy = gradclip.parse_policy(spec)
    state, _ = _step.initial_state(policy, _SHAPES, names, np.float32)
    out = []
    for t in range(len(_SCALES)):
        grads, outcome, new = _step.run(policy, _chain_grads(t), state, NumpyOps, names=names)
        if bool(outcome.skipped):  # a skipped step leaves the per-tensor member's state alone
            assert all(np.array_equal(new[k], state[k]) for k in state if k.startswith("1."))
        state = new
        out.append((grads, bool(outcome.skipped)))
    return out


@pytest.mark.parametrize("spec", SKIP_THEN_PER_TENSOR)
def test_chain_skip_then_adagc_runs_in_torch(spec):
    params = [torch.nn.Parameter(torch.zeros(s)) for s in _SHAPES]
    clipper = gct.Clipper(spec)
    want = _numpy_run(spec, ("0", "1"))
    for t, (grads, skipped) in enumerate(want):
        for p, g in zip(params, _chain_grads(t)):
            p.grad = torch.from_numpy(g.copy())
        stats = clipper.step(params)
        assert bool(stats.skipped) == skipped
        for p, g in zip(params, grads):
            np.testing.assert_allclose(p.grad.numpy(), g, rtol=1e-5, atol=1e-7)
    if spec.count(",") > 2:  # the short-window chains do skip
        assert any(s for _, s in want)


@pytest.mark.parametrize("spec", SKIP_THEN_PER_TENSOR)
def test_chain_skip_then_adagc_runs_in_tensorflow(spec):
    tf = pytest.importorskip("tensorflow")
    import gradclip.tensorflow as gtf

    variables = [tf.Variable(np.zeros(s, np.float32), name=f"v{i}") for i, s in enumerate(_SHAPES)]
    clipper = gtf.Clipper(spec)
    step = tf.function(lambda gs: clipper(gs, variables)[0])
    want = _numpy_run(spec, tuple(v.name for v in variables))
    for t, (grads, skipped) in enumerate(want):
        got = step([tf.constant(g) for g in _chain_grads(t)])
        assert bool(clipper.last_stats().skipped) == skipped
        for a, b in zip(got, grads):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("spec", SKIP_THEN_PER_TENSOR)
def test_chain_skip_then_adagc_runs_in_keras(spec):
    keras = pytest.importorskip("keras")
    import gradclip.keras as gck

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    opt = gck.wrap(keras.optimizers.SGD(0.1), spec)
    model.compile(optimizer=opt, loss="mse")
    x = np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32)
    skipped = []
    for t, scale in enumerate(_SCALES):
        before = [w.copy() for w in model.get_weights()]
        model.train_on_batch(x, np.ones((8, 2), np.float32) * scale * 10)
        skipped.append(bool(opt.gradclip_stats().skipped))
        if skipped[-1]:  # a skipped step leaves the weights untouched
            for a, b in zip(model.get_weights(), before):
                np.testing.assert_array_equal(a, b)
        assert all(np.isfinite(w).all() for w in model.get_weights())
    if spec.count(",") > 2:
        assert any(skipped)
