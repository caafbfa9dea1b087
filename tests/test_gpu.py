"""GPU-only checks: no host-device sync in any clipper or policy, and fused clipping on CUDA.

CI has no GPU, so every test here skips cleanly without CUDA. With one, each clipper runs 100
steps under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronizing call
(``.item()``, ``bool(tensor)``, a blocking device-to-host copy).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import gradclip.torch as gct  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

POLICIES = [
    "none", "norm:1.0", "norm:1.0,norm_type=inf", "pertensor:0.5", "value:0.05", "autoclip:p=10", "zclip",
    "adagc", "agc:0.01", "maxhist:5", "spikeguard+norm:1.0",
]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).cuda()


def _backward(model, i):
    x = torch.randn(8, 16, device="cuda", generator=None) * (1 + i % 7)
    model(x).pow(2).sum().backward()


class _NoSync:
    def __enter__(self):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("spec", POLICIES)
def test_clipper_is_sync_free_for_100_steps(spec):
    model = _model()
    clipper = gct.Clipper(spec)
    _backward(model, 0)
    clipper.step(model)  # first step: state initialisation
    with _NoSync():
        for i in range(100):
            model.zero_grad(set_to_none=False)
            _backward(model, i)
            stats = clipper.step(model)
    assert torch.isfinite(stats.norm).item()


@pytest.mark.parametrize("spec", ["norm:1.0", "zclip", "spikeguard+norm:1.0", "value:0.05"])
def test_clipped_fused_adamw_is_sync_free(spec):
    model = _model()
    opt = gct.clipped(torch.optim.AdamW(model.parameters(), fused=True), spec)
    _backward(model, 0)
    opt.step()
    with _NoSync():
        for i in range(100):
            opt.zero_grad(set_to_none=False)
            _backward(model, i)
            opt.step()


def test_drop_ins_are_sync_free():
    model = _model()
    _backward(model, 0)
    with _NoSync():
        for _ in range(100):
            gct.clip_grad_norm_(model.parameters(), 1.0)
            gct.clip_grad_value_(model.parameters(), 0.5)


def test_clipped_fused_adamw_equals_clip_then_step_on_cuda():
    ours, theirs = _model(), _model()
    opt_a = gct.clipped(torch.optim.AdamW(ours.parameters(), fused=True), "norm:0.5")
    opt_b = torch.optim.AdamW(theirs.parameters(), fused=True)
    for i in range(3):
        torch.manual_seed(i)
        _backward(ours, i)
        torch.manual_seed(i)
        _backward(theirs, i)
        opt_a.step()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
        opt_b.step()
        opt_a.zero_grad()
        opt_b.zero_grad()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
