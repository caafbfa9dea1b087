"""Chen, Wu & Hong 2020 (arXiv:2006.15429): clipping bias in private SGD, reproduced on 1-D toys.

Example 2 (two examples at a = ±3, c = 1): clipped gradient descent is stuck anywhere in
[-2, 2]; pre-clipping Gaussian perturbation k·ζ (k = 1, 2) moves it to the minimum 0.
Fixed-point bias: with per-example noise ξ (E ξ = 0) clipped SGD settles at the root of
E clip(x + ξ) = 0: 0 for symmetric ξ, > 0 for a centred exponential ξ; perturbation shrinks it.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradclip._errors import ConfigError
from gradclip.privacy._toy import (
    clipped_gd,
    clipped_sgd_fixed_point,
    expected_clipped_gradient,
    fixed_point,
    gaussian_clipped_mean,
    noisy_clipped_mean,
)

A = (-3.0, 3.0)


def test_example2_expected_clipped_gradient_is_zero_on_the_plateau():
    xs = np.linspace(-2.0, 2.0, 41)
    assert np.array_equal(expected_clipped_gradient(xs, A, c=1.0), np.zeros_like(xs))
    assert float(expected_clipped_gradient(2.5, A, c=1.0)) == 0.25  # (1 + (-0.5)) / 2: outside it moves
    assert float(expected_clipped_gradient(0.0, A, c=1.0, k=1.0)) == 0.0  # the minimum stays the fixed point


def test_example2_clipped_gd_stays_at_1_5():
    xs = clipped_gd(1.5, A, c=1.0, k=0.0, lr=0.1, steps=2000)
    assert np.all(xs == 1.5)


@pytest.mark.parametrize("k", [1.0, 2.0])
def test_example2_perturbation_reaches_the_minimum(k):
    g = float(expected_clipped_gradient(1.5, A, c=1.0, k=k))
    assert g > 0.05  # the expected clipped gradient points back to 0
    x = 1.5
    for _ in range(1000):  # descent on the expected (perturbed, clipped) gradient
        x -= 1.0 * float(expected_clipped_gradient(x, A, c=1.0, k=k))
    assert abs(x) < 1e-6
    xs = clipped_gd(1.5, A, c=1.0, k=k, lr=0.05, steps=4000, seed=0)  # the stochastic run
    assert abs(xs[2000:].mean()) < 0.1, xs[2000:].mean()


def test_gaussian_clipped_mean_matches_monte_carlo():
    rng = np.random.default_rng(0)
    z = rng.standard_normal(2_000_000)
    for mu, k in [(0.3, 1.0), (-2.0, 0.5), (3.0, 2.0)]:
        assert gaussian_clipped_mean(mu, 1.0, k) == pytest.approx(np.clip(mu + k * z, -1, 1).mean(), abs=2e-3)


def test_exponential_clipped_mean_matches_monte_carlo():
    rng = np.random.default_rng(1)
    xi, z = rng.exponential(size=2_000_000) - 1.0, rng.standard_normal(2_000_000)
    for x, k in [(0.2, 0.0), (0.1, 1.0), (-0.5, 2.0)]:
        mc = np.clip(x + 2.0 * xi + k * z, -1, 1).mean()
        assert float(noisy_clipped_mean(x, "exponential", 1.0, k, scale=2.0)) == pytest.approx(mc, abs=2e-3)


@pytest.mark.parametrize("k", [0.0, 1.0, 2.0])
def test_symmetric_noise_has_no_bias(k):
    assert abs(fixed_point("gaussian", c=1.0, k=k, scale=2.0)) < 1e-8
    assert abs(clipped_sgd_fixed_point("gaussian", c=1.0, k=k, scale=2.0, seed=0)) < 0.05


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_skewed_noise_biases_and_perturbation_shrinks_the_bias(scale):
    bias = [fixed_point("exponential", c=1.0, k=k, scale=scale) for k in (0.0, 1.0, 2.0, 4.0)]
    assert bias[0] > 0.15 * scale  # clearly away from the minimum 0 (0.159 at scale 1, 0.531 at 2)
    assert bias[0] > bias[1] > bias[2] > bias[3] > 0
    assert bias[2] < 0.5 * bias[0]
    simulated = clipped_sgd_fixed_point("exponential", c=1.0, k=0.0, scale=scale, seed=0)
    assert simulated == pytest.approx(bias[0], abs=0.03)


def test_bad_noise_name():
    with pytest.raises(ConfigError, match="noise"):
        fixed_point("laplace")
