"""``gradclip reproduce zhang-toy``: clipped GD vs the best fixed step on sum(x^4)/4 (quick run + its parts)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import gradclip
from gradclip.policy import Measurement, NumpyOps
from gradclip.reproduce import reproduce
from gradclip.reproduce._zhang_toy import clipped_gd, constants, decide, direction, fixed_steps


def _plain_gd(x0, h, eps, cap=100_000):
    """One fixed step, one plain loop: iterations to eps, -1 when it blows up."""
    x = np.array(x0, dtype=np.float64)
    for k in range(cap):
        g = x ** 3
        if np.linalg.norm(g) <= eps:
            return k
        x = x - h * g
        if not np.linalg.norm(x) <= 10 * np.linalg.norm(x0):
            return -1
    return 0


def test_fixed_step_grid_matches_one_loop_per_step():
    x0 = 3.0 * direction(4)
    steps = np.array([0.01, 0.05, 0.1, 0.3, 0.5])  # 2 / max(x0)^2 = 0.4: the last one diverges
    counts = fixed_steps(x0, steps, eps=1e-2, curve_factor=1e9)
    assert counts.tolist() == [_plain_gd(x0, h, 1e-2) for h in steps]
    assert counts[-1] == -1 and counts[:-1].min() > 0
    # stopping at curve_factor x the best count leaves the slow steps unreached (0), not failed
    assert fixed_steps(x0, steps, eps=1e-2, curve_factor=1.0)[0] == 0


def test_clipped_gd_is_the_paper_step_rule_and_global_norm_clipping():
    eta, gamma = constants(4.0, 1.0)
    assert (eta, gamma) == (0.025, 4.0)
    assert constants(1.0, 0.01) == (0.1, 10.0)  # 1/eta is the smaller one when L1 is small
    x0 = 10.0 * direction()
    k, rule_gap, policy_gap = clipped_gd(x0, 1e-2, eta, gamma)
    x = x0.copy()
    for n in range(10**6):  # the rule written out, no gradclip in the loop
        g = x ** 3
        if np.linalg.norm(g) <= 1e-2:
            break
        x = x - min(eta, gamma * eta / np.linalg.norm(g)) * g
    assert k == n > 0 and rule_gap < 1e-12 and policy_gap < 1e-12
    decision, _ = gradclip.GlobalNorm(gamma, semantics="tf").decide(Measurement(norm=np.float64(40.0)), {}, NumpyOps)
    assert float(decision.coef) == pytest.approx(gamma / 40.0, rel=1e-15)


def test_verdict_rule():
    assert decide(2.0, 0.1, True) == "reproduced"
    assert decide(2.0, 0.1, False) == "partly"  # slopes differ, but clipped is not yet faster
    assert decide(1.0, 0.8, True) == "partly"
    assert decide(1.0, 1.0, True) == "not reproduced"


def test_quick_run_clipped_iterations_grow_more_slowly(tmp_path):
    r = reproduce("zhang-toy", quick=True, out=tmp_path)
    per_s = r.numbers["per_scale"]
    fixed = [p["fixed_best_iters"] for p in per_s]
    clip = [p["clipped_iters"] for p in per_s]
    assert min(fixed) > 0 and min(clip) > 0
    assert r.numbers["slope_fixed"] - r.numbers["slope_clipped"] >= 1.0
    assert fixed[-1] / clip[-1] >= 20 * (fixed[0] / clip[0])  # the ratio grows with s
    assert fixed == sorted(fixed)
    assert all(p["fixed_best_step"] < p["stability_limit_2_over_m0sq"] for p in per_s)
    assert all(p["clip_step_rule_max_rel_gap"] < 1e-12 and p["clip_policy_coef_max_gap"] < 1e-12 for p in per_s)
    assert r.verdict == "reproduced"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["verdict"] == r.verdict and data["config"]["quick"] is True
    assert (tmp_path / "report.html").stat().st_size > 1000 and (tmp_path / "iterations.csv").exists()
    assert sorted(data["plots"]) == ["scaling.png", "step-sizes.png"]
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in data["plots"])
