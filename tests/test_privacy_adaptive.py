"""Adaptive clipping (Andrew et al. 2021): Opacus parity, argument checks, and quantile tracking."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from gradclip._errors import ConfigError, InputTypeError
from gradclip.privacy._adaptive import AdaptiveClip, gradient_noise_multiplier

opacus_ada = pytest.importorskip("opacus.optimizers.adaclipoptimizer")


def _batches(n: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.exp(torch.randn(size, generator=g)) for _ in range(n)]


def _opacus_bounds(batches, *, count_std, seed, q, lr, initial, lo, hi):
    """Opacus's AdaClipDPOptimizer driven by one (B, 1) per-sample gradient whose norms are `batches`."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = opacus_ada.AdaClipDPOptimizer(
        torch.optim.SGD([p], lr=0.0), noise_multiplier=0.0, target_unclipped_quantile=q,
        clipbound_learning_rate=lr, max_clipbound=hi, min_clipbound=lo,
        unclipped_num_std=count_std or 1.0, max_grad_norm=initial,
        expected_batch_size=len(batches[0]), generator=torch.Generator().manual_seed(seed))
    opt.unclipped_num_std = count_std  # Opacus refuses 0 at construction (noise_multiplier < 2 std)
    bounds = []
    for norms in batches:
        p.grad_sample = norms.reshape(-1, 1).clone()
        p.grad = torch.zeros(1)
        opt.step()
        bounds.append(float(opt.max_grad_norm))
        opt.zero_grad()
    return bounds


def _our_bounds(batches, *, count_std, seed, q, lr, initial, lo, hi):
    ada = AdaptiveClip(q, lr, count_std, initial, min_clip=lo, max_clip=hi)
    state, gen, bounds = ada.init(), torch.Generator().manual_seed(seed), []
    for norms in batches:
        state = ada.update(state, norms, len(norms), gen)
        bounds.append(float(state.clip))
    return bounds


@pytest.mark.parametrize("count_std", [0.0, 3.2])
@pytest.mark.parametrize("q,lr,initial,lo,hi", [(0.5, 0.2, 1.0, 0.01, 100.0), (0.9, 1.0, 0.1, 0.05, 2.0),
                                               (0.2, 0.5, 10.0, 0.5, 10.0)])
def test_bound_sequence_is_bitwise_opacus(count_std, q, lr, initial, lo, hi):
    batches = _batches(120, 64)
    kw = {"count_std": count_std, "seed": 3, "q": q, "lr": lr, "initial": initial, "lo": lo, "hi": hi}
    assert _our_bounds(batches, **kw) == _opacus_bounds(batches, **kw)


def test_opacus_counting_rule_at_the_boundary():
    ada = AdaptiveClip(eps=1e-6)
    clip = torch.tensor(1.0)
    norms = torch.tensor([1.0, 1.0 - 1e-3, float("nan"), 2.0])
    assert int(ada.unclipped_count(clip, norms)) == 2  # n == C is (slightly) clipped; NaN counts as unclipped
    assert int(AdaptiveClip(eps=0.0).unclipped_count(clip, norms)) == 3  # the paper's n <= C


def test_update_formula_and_state():
    ada = AdaptiveClip(target_quantile=0.5, learning_rate=0.2, initial=2.0)
    s0 = ada.init()
    assert float(s0.clip) == 2.0 and int(s0.step) == 0 and math.isnan(float(s0.unclipped_fraction))
    s1 = ada.update(s0, torch.tensor([1.0, 1.5, 3.0, 4.0]), expected_batch_size=8)
    assert float(s1.unclipped_fraction) == 0.25 and int(s1.step) == 1
    assert float(s1.clip) == pytest.approx(2.0 * math.exp(-0.2 * (0.25 - 0.5)), rel=1e-6)
    assert ada.update(s1, torch.zeros(3), 3).clip.dtype == torch.float32


def test_clamped_to_bounds():
    ada = AdaptiveClip(learning_rate=5.0, initial=1.0, min_clip=0.5, max_clip=1.5)
    s = ada.init()
    assert float(ada.update(s, torch.full((4,), 10.0), 4).clip) == 1.5
    assert float(ada.update(s, torch.full((4,), 0.1), 4).clip) == 0.5


@pytest.mark.parametrize("kwargs", [{"target_quantile": 0.0}, {"target_quantile": 1.0}, {"learning_rate": 0.0},
                                    {"learning_rate": -1}, {"initial": 0.0}, {"initial": float("inf")},
                                    {"count_noise_multiplier": -1.0}, {"min_clip": 2.0, "max_clip": 1.0},
                                    {"target_quantile": True}, {"eps": -1.0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        AdaptiveClip(**kwargs)


def test_bad_update_inputs():
    ada = AdaptiveClip()
    with pytest.raises(InputTypeError, match="torch.Tensor"):
        ada.update(ada.init(), [1.0, 2.0], 2)
    with pytest.raises(InputTypeError, match="1-D"):
        ada.update(ada.init(), torch.ones(2, 2), 4)
    with pytest.raises(ConfigError, match="expected_batch_size"):
        ada.update(ada.init(), torch.ones(2), 0)


def test_gradient_noise_multiplier_matches_opacus_rule():
    assert gradient_noise_multiplier(1.0, 256 / 20) == (1.0 ** -2 - (2 * 12.8) ** -2) ** -0.5
    assert gradient_noise_multiplier(0.0, 5.0) == 0.0
    assert gradient_noise_multiplier(1.1, None) == 1.1
    assert gradient_noise_multiplier(1.0, 0.6) > 1.0
    with pytest.raises(ConfigError, match="2 \\* count_noise_multiplier"):
        gradient_noise_multiplier(2.0, 1.0)
    with pytest.raises(ConfigError):
        gradient_noise_multiplier(-1.0, 1.0)


def track(q: float, initial: float, count_std: float | None, steps: int, seed: int = 0):
    """Andrew et al.'s quantile tracking on lognormal(0, 1) norms, a fresh batch of 256 per step.

    Returns (true quantile, first step within 10%, bounds).
    """
    ada = AdaptiveClip(target_quantile=q, learning_rate=0.2, count_noise_multiplier=count_std, initial=initial)
    true = math.exp(NormalDist().inv_cdf(q))
    gen, state, bounds = torch.Generator().manual_seed(seed), ada.init(), []
    for _ in range(steps):
        state = ada.update(state, torch.exp(torch.randn(256, generator=gen)), 256, gen)
        bounds.append(float(state.clip))
    first = next((t + 1 for t, c in enumerate(bounds) if abs(c / true - 1) < 0.1), None)
    return true, first, bounds


@pytest.mark.parametrize("q", [0.5, 0.9])
@pytest.mark.parametrize("initial", [0.1, 10.0])
def test_tracks_target_quantile_within_100_steps(q, initial):
    true, first, bounds = track(q, initial, None, 100)
    assert first is not None and first < 100, (first, bounds[-1], true)
    assert all(abs(c / true - 1) < 0.1 for c in bounds[first - 1:])


@pytest.mark.parametrize("q", [0.5, 0.9])
@pytest.mark.parametrize("initial", [0.1, 10.0])
def test_tracks_target_quantile_with_private_count(q, initial):
    # sigma_b = m / 20, the paper's choice: the noisy bound wanders, so judge its geometric mean over steps 101-200.
    true, _, bounds = track(q, initial, 256 / 20, 200)
    level = math.exp(sum(math.log(c) for c in bounds[100:]) / 100)
    assert abs(level / true - 1) < 0.1, (level, true)
