"""``gradclip reproduce pascanu-cliff``: the one-unit RNN's wall, GD with and without norm clipping."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from gradclip import _reference as ref
from gradclip.monitor import read_runs
from gradclip.reproduce import reproduce
from gradclip.reproduce._pascanu_cliff import LR, descend, judge, loss_and_grad


def test_bptt_gradient_matches_torch_autograd_and_finite_differences():
    torch = pytest.importorskip("torch")
    w = torch.tensor([1.0, 4.0, 4.0, 6.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.0, -2.0, -2.4, -3.0, 1.0], dtype=torch.float64, requires_grad=True)
    x = torch.full_like(w, 0.5)
    for _ in range(50):
        x = w * torch.sigmoid(x) + b
    loss = (torch.sigmoid(x) - 0.7) ** 2
    loss.sum().backward()
    e, gw, gb = loss_and_grad(w.detach().numpy(), b.detach().numpy())
    np.testing.assert_allclose(e, loss.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gw, w.grad.numpy(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(gb, b.grad.numpy(), rtol=1e-9, atol=1e-13)
    h = 1e-6
    fd = (loss_and_grad(1.0 + h, 0.0)[0] - loss_and_grad(1.0 - h, 0.0)[0]) / (2 * h)
    assert float(loss_and_grad(1.0, 0.0)[1]) == pytest.approx(float(fd), rel=1e-6)


def test_clipped_descent_is_reference_norm_clipping():
    w0, b0 = np.array([4.0, 6.0]), np.array([-4.0, -3.0])
    r = descend(w0, b0, 1.0)
    assert r["path"].shape == (301, 2, 2) and r["loss"].shape == (301, 2)
    for k in (0, 50, 54, 55, 299):  # one step by hand with the float64 reference clip
        for i in range(2):
            _, gw, gb = loss_and_grad(*r["path"][k, i])
            (g,), _ = ref.clip_global_norm([np.array([gw, gb])], 1.0)
            np.testing.assert_allclose(r["path"][k + 1, i], r["path"][k, i] - LR * g, rtol=1e-13, atol=1e-13)
    assert r["step"].max() <= LR * 1.0 + 1e-12


def test_verdict_rule():
    u = {"step": np.array([0.1, 7.0]), "loss": np.array([0.4, 0.3, 0.09])}
    c = {"step": np.array([0.1, 0.5]), "loss": np.array([0.4, 0.3, 0.001])}
    assert judge(u, c, lr=0.5, clip=1.0) == (True, True, "reproduced")
    assert judge(u, {**c, "step": np.array([0.1, 0.6])}, lr=0.5, clip=1.0)[2] == "partly"  # clip bound broken
    assert judge({**u, "step": np.array([0.1, 4.9])}, c, lr=0.5, clip=1.0)[2] == "partly"  # step < 10 lr c
    assert judge(u, {**c, "loss": np.array([0.4, 0.3, 0.2])}, lr=0.5, clip=1.0)[2] == "not reproduced"


def test_quick_run_unclipped_is_thrown_clipped_stays_bounded(tmp_path):
    r = reproduce("pascanu-cliff", quick=True, out=tmp_path)
    n = r.numbers
    bound = n["step_bound"]
    assert n["clipped_step"]["max"] <= bound + 1e-12  # every clipped step <= lr * c
    assert n["unclipped_step"]["max"] >= 10 * bound  # the wall: one step > 10x the clipped bound
    throw = n["unclipped_longest_step"]
    assert np.hypot(*np.subtract(throw["to"], throw["from"])) >= 10 * bound
    assert n["clipped_loss"]["last"] <= 0.1 * n["clipped_loss"]["first"]  # clipped descends past the wall
    assert n["unclipped_loss"]["last"] >= 10 * n["clipped_loss"]["last"]  # unclipped stalls where it landed
    assert n["clip_coef_vs_reference_max_gap"] < 1e-12
    assert n["sweep"]["thrown"] >= 1 and n["sweep"]["clipped_max_step"] <= bound + 1e-12
    assert r.verdict == "reproduced"
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["verdict"] == r.verdict and sorted(data["plots"]) == ["steps.png", "surface.png"]
    assert (tmp_path / "report.html").exists()
    assert all((tmp_path / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in data["plots"])
    runs = read_runs(tmp_path / "clipped.jsonl")
    assert len(runs) == 1 and len(runs[0].records) == 300
