"""``torch.compile``: every policy, and ``clipped(fused optimizer)``, compile in one graph.

``Clipper.step`` under ``torch.compile(fullgraph=True)`` (``nonfinite="propagate"``, every
policy) and ``clipped(AdamW(fused=True)).step`` (``"propagate"`` and ``"skip"``) must trace
without a graph break and give the eager results (to 1e-6). Each policy compiles once, on a
small model, for a few steps; ``torch._dynamo.reset()`` runs between compiles.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from conftest import set_scaled_grads, tanh_mlp  # noqa: E402

POLICIES = {
    "norm": lambda: gradclip.GlobalNorm(1.0),
    "pertensor": lambda: gradclip.PerTensorNorm(0.5),
    "value": lambda: gradclip.Value(0.05),
    "none": lambda: gradclip.NoClip(),
    "autoclip-window": lambda: gradclip.AutoClip(50.0, window=8),
    "maxhist": lambda: gradclip.MaxNormHistory(),
    "zclip": lambda: gradclip.ZClip(warmup_steps=2),
    "agc": lambda: gradclip.AGC(0.01),
    "adagc": lambda: gradclip.AdaGC(),
    "spikeguard": lambda: gradclip.SpikeGuard(),
    "chain": lambda: gradclip.chain(gradclip.SpikeGuard(min_history=2), gradclip.ZClip(warmup_steps=2)),
}
STEPS = 4
SCALES = [10.0, 0.01, 30.0, 1.0]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model():
    return tanh_mlp()


def _grads(model, step, poison=False):
    set_scaled_grads(model, step, SCALES, poison)


def _clip_run(policy, compiled):
    model, clipper = _model(), gct.Clipper(policy)

    def step():
        stats = clipper.step(model)
        return stats.norm, stats.clipped_norm, stats.clipped

    fn = torch.compile(step, fullgraph=True, backend="eager" if compiled == "dynamo" else "inductor") if compiled \
        else step
    out = []
    for i in range(STEPS):
        _grads(model, i)
        out.append([t.clone() for t in fn()] + [p.grad.clone() for p in model.parameters()])
    return out, clipper


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_clipper_compiles_fullgraph_and_equals_eager(name):
    eager, c_eager = _clip_run(POLICIES[name](), compiled=None)
    comp, c_comp = _clip_run(POLICIES[name](), compiled="dynamo")
    for e, c in zip(eager, comp):
        for x, y in zip(e, c):
            _close(y, x)
    for k, v in c_eager.state_dict()["state"].items():
        _close(c_comp.state_dict()["state"][k], v)


@pytest.mark.slow
def test_clipper_compiles_with_inductor():
    """One policy through the real compiler (inductor), not only the tracer."""
    eager, _ = _clip_run(gradclip.ZClip(warmup_steps=2), compiled=None)
    comp, _ = _clip_run(gradclip.ZClip(warmup_steps=2), compiled="inductor")
    for e, c in zip(eager, comp):
        for x, y in zip(e, c):
            _close(y, x)


def _fused_run(nonfinite, compiled, poison_at=2, policy="norm:1.0"):
    model = _model()
    opt = gct.clipped(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True), policy,
                      nonfinite=nonfinite)
    step = torch.compile(opt.step, backend="eager") if compiled else opt.step
    norms = []
    for i in range(STEPS):
        _grads(model, i, poison=(i == poison_at))
        step()
        norms.append((opt.clip_stats.norm.clone(), opt.clip_stats.skipped.clone()))
    return [p.detach().clone() for p in model.parameters()], norms, opt


@pytest.mark.slow
@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
def test_clipped_fused_breaks_only_where_torch_does(nonfinite):
    """The clip is one graph; the only break is torch's own, around every ``Optimizer.step`` body.

    torch 2.13 breaks the graph on purpose before and after an optimizer's step body, and does not
    trace its fused kernels (``torch.compiler.disable``), so no fused optimizer step compiles with
    ``fullgraph=True``, with or without gradclip.
    """
    model = _model()
    _grads(model, 0, poison=nonfinite == "skip")
    opt = gct.clipped(torch.optim.AdamW(model.parameters(), fused=True), "norm:1.0", nonfinite=nonfinite)
    explained = torch._dynamo.explain(opt.step)()
    assert explained.graph_count == 1
    for reason in explained.break_reasons:
        innermost = reason.user_stack[-1].filename.replace("\\", "/")
        assert "/torch/optim/" in innermost, (innermost, reason.reason)


@pytest.mark.slow
@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
def test_clipped_fused_clip_compiles_fullgraph(nonfinite):
    """What ``clipped`` runs before the kernel (``Clipper.step(apply_coef=False)``) is one graph."""
    model = _model()
    _grads(model, 0, poison=nonfinite == "skip")
    clipper = gct.Clipper("norm:1.0", nonfinite=nonfinite)
    stats = torch.compile(lambda: clipper.step(model, apply_coef=False).skipped, fullgraph=True, backend="eager")()
    assert bool(stats) == (nonfinite == "skip")


@pytest.mark.slow
@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
def test_clipped_fused_compiled_equals_eager(nonfinite):
    poison = 2 if nonfinite == "skip" else None  # propagate with NaN would make everything NaN
    p_eager, n_eager, _ = _fused_run(nonfinite, False, poison)
    p_comp, n_comp, _ = _fused_run(nonfinite, True, poison)
    for a, b in zip(p_eager, p_comp):
        _close(b, a)
    for (na, sa), (nb, sb) in zip(n_eager, n_comp):
        _close(nb, na)
        assert bool(sa) == bool(sb)
    if nonfinite == "skip":
        assert [bool(s) for _, s in n_comp] == [False, False, True, False]


@pytest.mark.slow
def test_clipped_fused_skip_keeps_the_policy_state_under_compile():
    """A folded non-finite skip leaves ZClip's statistics as the eager refusal does."""
    p_eager, _, o_eager = _fused_run("skip", False, 3, policy="zclip:warmup_steps=2")
    p_comp, _, o_comp = _fused_run("skip", True, 3, policy="zclip:warmup_steps=2")
    for a, b in zip(p_eager, p_comp):
        _close(b, a)
    for k, v in o_eager.clipper.state_dict()["state"].items():
        _close(o_comp.clipper.state_dict()["state"][k], v)


@pytest.mark.slow
def test_drop_ins_compile_fullgraph_and_equal_torch():
    """``clip_grad_norm_`` / ``clip_grad_value_`` compile as torch's own do (they had two breaks)."""
    ours, theirs = _model(), _model()
    for m in (ours, theirs):
        _grads(m, 2)

    def clip():
        norm = gct.clip_grad_norm_(ours.parameters(), 1.0)
        gct.clip_grad_value_(ours.parameters(), 0.01)
        return norm

    norm = torch.compile(clip, fullgraph=True, backend="eager")()
    _close(norm, torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0))
    torch.nn.utils.clip_grad_value_(theirs.parameters(), 0.01)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        _close(a.grad, b.grad)


@pytest.mark.slow
@pytest.mark.parametrize("nonfinite", ["skip", "zero"])
def test_refusing_modes_compile_with_one_break_and_equal_eager(nonfinite):
    """``"skip"``/``"zero"`` read one flag: one graph break, and the eager results, NaN step included."""
    model = _model()
    _grads(model, 0, poison=True)
    clipper = gct.Clipper("zclip:warmup_steps=2", nonfinite=nonfinite)
    explained = torch._dynamo.explain(lambda: clipper.step(model).norm)()
    assert explained.graph_break_count == 1
    runs = []
    for compiled in (False, True):
        torch._dynamo.reset()
        model, clipper = _model(), gct.Clipper("zclip:warmup_steps=2", nonfinite=nonfinite)
        fn = (lambda: clipper.step(model).skipped)
        fn = torch.compile(fn, backend="eager") if compiled else fn
        out = []
        for i in range(STEPS):
            _grads(model, i, poison=i == 2)
            out.append([fn().clone()] + [p.grad.clone() for p in model.parameters()])
        runs.append((out, clipper.state_dict()["state"]))
    (a, sa), (b, sb) = runs
    for x, y in zip([t for r in a for t in r] + list(sa.values()), [t for r in b for t in r] + list(sb.values())):
        _close(y, x)
