"""AdaGC (Wang et al. 2025): per-tensor EMA thresholds, against a plain-Python float64 oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip import _reference as ref  # noqa: E402
from gradclip._policies import AdaGC  # noqa: E402

SHAPES = [(5, 3), (5,), (2, 5)]


def _grads(steps, seed=0, spikes=(), nan_at=()):
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        scale = 50.0 if t in spikes else 1.0
        gs = [rng.normal(0, 1, s) * scale for s in SHAPES]
        if t in nan_at:
            gs[1][0] = np.nan
        out.append(gs)
    return out


def _run(policy, grads_per_step, nonfinite="skip"):
    params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in SHAPES]
    named = [(f"p{i}", p) for i, p in enumerate(params)]
    clipper = gct.Clipper(policy, nonfinite=nonfinite)
    outs = []
    for gs in grads_per_step:
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g, dtype=torch.float64)
        clipper.step(named)
        outs.append([p.grad.numpy().copy() for p in params])
    return outs, clipper


@pytest.mark.parametrize(("lambda_rel", "beta", "warmup"), [(1.05, 0.98, 5), (1.04, 0.99, 1), (2.0, 0.5, 10)])
def test_torch_clipper_matches_oracle(lambda_rel, beta, warmup):
    steps = _grads(40, spikes=(12, 25, 26))
    outs, _ = _run(AdaGC(lambda_rel=lambda_rel, beta=beta, warmup_steps=warmup), steps)
    expected = ref.adagc(steps, lambda_rel, beta, warmup, 1.0, 1e-6)
    for got, want in zip(outs, expected):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_spike_after_warmup_is_clipped_per_tensor_to_lambda_gamma():
    steps = _grads(12, spikes=(10,))
    outs, clipper = _run(AdaGC(warmup_steps=3), steps)
    before_spike = ref.adagc(steps[:10], 1.05, 0.98, 3, 1.0, 1e-6, return_gamma=True)[1]
    for i, g in enumerate(outs[10]):
        assert np.linalg.norm(g) == pytest.approx(1.05 * before_spike[i] * 1 / (1 + 1e-6 / np.linalg.norm(steps[10][i])), rel=1e-9)


def test_nan_step_leaves_state_unchanged():
    steps = _grads(20, nan_at=(8,))
    outs, clipper = _run(AdaGC(warmup_steps=4), steps, nonfinite="skip")
    clean = [s for t, s in enumerate(steps) if t != 8]
    outs_clean, clipper_clean = _run(AdaGC(warmup_steps=4), clean)
    for got, want in zip(outs[9:], outs_clean[8:]):
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    st, st_clean = clipper.state_dict()["state"], clipper_clean.state_dict()["state"]
    assert set(st) == set(st_clean) == {"step", "gamma.p0", "gamma.p1", "gamma.p2"}
    for k in st:
        assert torch.equal(st[k], st_clean[k])


def test_propagate_nan_step_does_not_poison_the_state():
    steps = _grads(12, nan_at=(6,))
    _, clipper = _run(AdaGC(warmup_steps=2), steps, nonfinite="propagate")
    for k, v in clipper.state_dict()["state"].items():
        assert math.isfinite(float(v)), k


def test_resume_is_bitwise_identical_and_keyed_by_name():
    steps = _grads(30, spikes=(20,))
    full, _ = _run(AdaGC(warmup_steps=5), steps)
    _, first = _run(AdaGC(warmup_steps=5), steps[:15])
    saved = first.state_dict()
    params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in SHAPES]
    fresh = gct.Clipper(AdaGC(warmup_steps=5), nonfinite="skip")
    fresh.load_state_dict(saved)
    for t, gs in enumerate(steps[15:], start=15):
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g, dtype=torch.float64)
        fresh.step(list(reversed([(f"p{i}", p) for i, p in enumerate(params)])))  # other order, same names
        for p, want in zip(params, full[t]):
            np.testing.assert_array_equal(p.grad.numpy(), want)


def test_threshold_is_reported_per_tensor():
    steps = _grads(6)
    params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in SHAPES]
    clipper = gct.Clipper(AdaGC(warmup_steps=2))
    for gs in steps:
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g, dtype=torch.float64)
        stats = clipper.step(params)
    threshold = stats.to_dict()["threshold"]
    assert isinstance(threshold, list) and len(threshold) == 3


@pytest.mark.parametrize(
    "kwargs", [{"lambda_rel": 0}, {"lambda_rel": -1}, {"beta": 1.0}, {"beta": -0.1}, {"warmup_steps": 0},
               {"warmup_steps": 2.5}, {"warmup_max_norm": -1}, {"eps": float("nan")}],
)
def test_bad_hyper_parameters(kwargs):
    with pytest.raises(gradclip.ConfigError):
        AdaGC(**kwargs)


def test_spec_strings():
    assert gradclip.parse_policy("adagc") == AdaGC()
    assert gradclip.parse_policy("adagc:lambda=1.04,beta=0.99") == AdaGC(lambda_rel=1.04, beta=0.99)
    p = AdaGC(warmup_steps=10, warmup_max_norm=0.5)
    assert gradclip.parse_policy(p.spec()) == p


def test_hand_computed_trajectory():
    """One tensor; warm-up 2 steps at warmup_max_norm 1, then lambda 2, beta 0.5 (eps 0)."""
    policy = AdaGC(lambda_rel=2.0, beta=0.5, warmup_steps=2, warmup_max_norm=1.0, eps=0.0)
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    clipper = gct.Clipper(policy)
    seen = []
    for g in ([3.0, 4.0], [0.3, 0.4], [3.0, 4.0], [0.6, 0.8]):
        p.grad = torch.tensor(g, dtype=torch.float64)
        clipper.step([("w", p)])
        seen.append(float(torch.linalg.vector_norm(p.grad)))
    # step 0: norm 5 clipped to 1, gamma 1; step 1: 0.5 untouched, gamma min(1, 0.5) = 0.5
    # step 2: 5 > 2 * 0.5 -> clipped to 1, gamma 0.5*0.5 + 0.5*1 = 0.75
    # step 3: 1 <= 2 * 0.75 -> untouched, gamma 0.5*0.75 + 0.5*1 = 0.875
    assert seen == pytest.approx([1.0, 0.5, 1.0, 1.0], rel=1e-12)
    assert float(clipper.state_dict()["state"]["gamma.w"]) == pytest.approx(0.875, rel=1e-12)


def test_zero_gradients_in_warmup_freeze_that_tensor_afterwards_as_published():
    """gamma is the minimum post-clip norm: a zero warm-up gradient makes it 0 for good (paper, patch)."""
    policy = AdaGC(warmup_steps=1)
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    clipper = gct.Clipper(policy)
    p.grad = torch.zeros(2, dtype=torch.float64)
    clipper.step([("w", p)])
    p.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    clipper.step([("w", p)])
    assert torch.count_nonzero(p.grad) == 0
