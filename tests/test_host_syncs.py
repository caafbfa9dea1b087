"""Host reads per step on the accelerator path, counted on CPU tensors.

On the CPU a step may read flags on the host (free there); on accelerators and under
``torch.compile`` it must not. ``gradclip.torch._fast.HOST_READS = False`` sends CPU tensors down
the accelerator path, and a ``TorchDispatchMode`` counts every op that brings a value to the host.
The numbers asserted here are the ones the ``Clipper`` and ``clipped`` docstrings promise.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip.torch import _fast  # noqa: E402
from conftest import set_scaled_grads, tanh_mlp  # noqa: E402

#: Ops whose result is a host value computed from device data (a device-to-host sync on a GPU).
HOST_READS = {"_local_scalar_dense", "is_nonzero", "item", "equal", "nonzero", "nonzero_static", "masked_select",
              "_unique", "_unique2", "unique_dim", "unique_consecutive", "allclose", "argwhere"}

POLICIES = {
    "norm": lambda: gradclip.GlobalNorm(1.0),
    "norm-inf": lambda: gradclip.GlobalNorm(1.0, norm_type=float("inf")),
    "pertensor": lambda: gradclip.PerTensorNorm(0.5),
    "value": lambda: gradclip.Value(0.05),
    "value-asym": lambda: gradclip.Value(min=-0.1, max=0.2),
    "none": lambda: gradclip.NoClip(),
    "autoclip": lambda: gradclip.AutoClip(50.0),
    "autoclip-window": lambda: gradclip.AutoClip(50.0, window=4),
    "autoclip-tensor": lambda: gradclip.AutoClip(50.0, scope="tensor"),
    "maxhist": lambda: gradclip.MaxNormHistory(),
    "zclip": lambda: gradclip.ZClip(warmup_steps=2),
    "agc": lambda: gradclip.AGC(0.01),
    "adagc": lambda: gradclip.AdaGC(),
    "spikeguard": lambda: gradclip.SpikeGuard(min_history=2),
    "chain": lambda: gradclip.chain(gradclip.SpikeGuard(min_history=2), gradclip.ZClip(warmup_steps=2)),
}
SCALES = [10.0, 0.01, 30.0, 1.0, 1e3]


class HostReads(TorchDispatchMode):
    """Counts the ops that read device data on the host."""

    def __init__(self):
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in HOST_READS:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def accelerator_path(monkeypatch):
    monkeypatch.setattr(_fast, "HOST_READS", False)


def _model():
    return tanh_mlp()


def _grads(model, step, poison=False):
    set_scaled_grads(model, step, SCALES, poison)


def _reads_per_step(step_fn, model, poison_at=None):
    counts = []
    for i in range(len(SCALES)):
        _grads(model, i, poison=i == poison_at)
        with HostReads() as mode:
            step_fn()
        counts.append(len(mode.reads))
    return counts


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_propagate_reads_nothing_on_the_accelerator_path(name, accelerator_path):
    model, clipper = _model(), gct.Clipper(POLICIES[name]())
    assert _reads_per_step(lambda: clipper.step(model), model) == [0] * len(SCALES)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_accelerator_path_equals_the_cpu_path(name, monkeypatch):
    """The branch-free path computes what the CPU path with host reads computes."""
    results = []
    for host_reads in (True, False):
        monkeypatch.setattr(_fast, "HOST_READS", host_reads)
        model, clipper = _model(), gct.Clipper(POLICIES[name]())
        out = []
        for i in range(len(SCALES)):
            _grads(model, i)
            s = clipper.step(model)
            out.append((s.norm, s.clipped_norm, s.clipped, s.skipped, *[p.grad.clone() for p in model.parameters()]))
        results.append(out)
    for a, b in zip(*results):
        for x, y in zip(a, b):
            torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("nonfinite", ["skip", "zero", "error"])
@pytest.mark.parametrize("name", ["norm", "pertensor", "value", "zclip", "spikeguard"])
def test_other_modes_read_one_flag(name, nonfinite, accelerator_path):
    """``"skip"``, ``"zero"`` and ``"error"`` read whether the norm is finite, once per step."""
    model, clipper = _model(), gct.Clipper(POLICIES[name](), nonfinite=nonfinite)
    assert _reads_per_step(lambda: clipper.step(model), model) == [1] * len(SCALES)


@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
@pytest.mark.parametrize("policy", ["norm:1.0", "zclip:warmup_steps=2", "spikeguard:min_history=2"])
def test_clipped_fused_reads_nothing(policy, nonfinite, accelerator_path):
    """A fused optimizer takes the clip factor and the skip flag as tensors: no read at all."""
    model = _model()
    opt = gct.clipped(torch.optim.AdamW(model.parameters(), fused=True), policy, nonfinite=nonfinite)
    poison = 2 if nonfinite == "skip" else None
    assert _reads_per_step(opt.step, model, poison_at=poison) == [0] * len(SCALES)
    if nonfinite == "skip":
        assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")


def test_clipped_fused_skip_with_a_per_tensor_policy_reads_one_flag(accelerator_path):
    """No global factor to hand to the kernel: whether to refuse is read once per step."""
    model = _model()
    opt = gct.clipped(torch.optim.AdamW(model.parameters(), fused=True), "pertensor:0.5", nonfinite="skip")
    assert _reads_per_step(opt.step, model, poison_at=2)[:2] == [1, 1]


@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
def test_clipped_unfused_reads_one_flag(nonfinite, accelerator_path):
    """A step that is not fused cannot be undone: whether to take it is read once (plus the
    clipper's read outside ``"propagate"``)."""
    plain_model = _model()
    plain = torch.optim.AdamW(plain_model.parameters(), foreach=True)  # reads its CPU step counts: not ours
    own = _reads_per_step(plain.step, plain_model)
    model = _model()
    opt = gct.clipped(torch.optim.AdamW(model.parameters(), foreach=True), "norm:1.0", nonfinite=nonfinite)
    expected = 1 if nonfinite == "propagate" else 2
    assert [n - o for n, o in zip(_reads_per_step(opt.step, model), own)] == [expected] * len(SCALES)


def test_fused_skip_on_the_accelerator_path_equals_the_cpu_path(monkeypatch):
    """The folded skip (found_inf) leaves parameters, optimizer state and policy state as the refusal does."""
    results = []
    for host_reads in (True, False):
        monkeypatch.setattr(_fast, "HOST_READS", host_reads)
        model = _model()
        opt = gct.clipped(torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True), "zclip:warmup_steps=2",
                          nonfinite="skip")
        skipped = []
        for i in range(len(SCALES)):
            _grads(model, i, poison=i == 3)
            opt.step()
            skipped.append(bool(opt.clip_stats.skipped))
            assert not bool(opt.clip_stats.clipped) if i == 3 else True
        results.append(([p.detach().clone() for p in model.parameters()], opt.clipper.state_dict()["state"],
                        [s["exp_avg"].clone() for s in opt.state.values()], skipped))
    (pa, sa, ea, ka), (pb, sb, eb, kb) = results
    assert ka == kb == [False, False, False, True, False]
    for x, y in zip(pa + ea + list(sa.values()), pb + eb + list(sb.values())):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)
