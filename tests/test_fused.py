"""``gradclip.torch.clipped``: clipping inside ``optimizer.step()`` equals clip-then-step.

Fused optimizers receive the clip factor as ``grad_scale = 1 / coef`` and compute ``g / (1/c)``
where clip-then-step computes ``g * c``: the parameters then agree to float32 rounding (checked
after one step at 1e-6 and after several steps at 1e-5, relative to the parameters' scale).
Everything that is not fused must be bit for bit clip-then-step.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from conftest import assert_close_np  # noqa: E402

X = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
Y = torch.randn(32, 3, generator=torch.Generator().manual_seed(1))

FUSED = {
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True),
    "Adam": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
    "SGD": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, fused=True),
    "Adagrad": lambda ps: torch.optim.Adagrad(ps, lr=1e-2, fused=True),
}
UNFUSED = {
    "AdamW-foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-2, foreach=True),
    "SGD-loop": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, foreach=False),
}


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)


def _backward(model, scale=10.0, poison=False):
    x, y = X.to(next(model.parameters()).dtype), Y.to(next(model.parameters()).dtype)
    ((model(x) - y) ** 2).sum().mul(scale).backward()
    if poison:
        model[0].weight.grad[0, 0] = float("nan")


def _train(make_opt, policy, steps, *, fused_api, dtype=torch.float32, scales=None):
    """Train ``steps`` steps with clipped() (fused_api) or with Clipper.step + optimizer.step."""
    model = _model(dtype)
    opt = make_opt(list(model.parameters()))
    clipper = gct.Clipper(policy)
    if fused_api:
        opt = gct.clipped(opt, clipper)
    for i in range(steps):
        opt.zero_grad()
        _backward(model, scale=(scales or [10.0] * steps)[i])
        if not fused_api:
            clipper.step(opt.param_groups)
        opt.step()
    return model, opt, clipper


def _assert_params_close(a, b, rel):
    for p, q in zip(a.parameters(), b.parameters()):
        assert_close_np(p.detach().double().numpy(), q.detach().double().numpy(), rel)


@pytest.mark.parametrize("name", list(FUSED))
def test_fused_optimizers_equal_clip_then_step(name):
    for steps, rel in [(1, 1e-6), (4, 1e-5)]:
        ours, opt, _ = _train(FUSED[name], "norm:0.5", steps, fused_api=True)
        theirs, _, _ = _train(FUSED[name], "norm:0.5", steps, fused_api=False)
        _assert_params_close(ours, theirs, rel)
        for p, q in zip(ours.parameters(), theirs.parameters()):  # the gradients are left clipped
            assert_close_np(p.grad.numpy(), q.grad.numpy(), 1e-6)
        assert bool(opt.clip_stats.clipped) and float(opt.clip_stats.clipped_norm) == pytest.approx(0.5, rel=1e-6)


def test_fused_adamw_float64_equals_clip_then_step():
    ours, _, _ = _train(FUSED["AdamW"], "norm:0.5", 3, fused_api=True, dtype=torch.float64)
    theirs, _, _ = _train(FUSED["AdamW"], "norm:0.5", 3, fused_api=False, dtype=torch.float64)
    _assert_params_close(ours, theirs, 1e-6)  # grad_scale is float32 in torch's kernels


@pytest.mark.parametrize("name", list(UNFUSED))
@pytest.mark.parametrize("policy", ["norm:0.5", "zclip", "value:0.05", "pertensor:0.3"])
def test_unfused_optimizers_are_exactly_clip_then_step(name, policy):
    ours, _, _ = _train(UNFUSED[name], policy, 3, fused_api=True)
    theirs, _, _ = _train(UNFUSED[name], policy, 3, fused_api=False)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad)


@pytest.mark.parametrize("policy", ["autoclip:p=50", "zclip", "adagc", "value:0.05", "pertensor:0.3"])
def test_every_policy_through_a_fused_optimizer(policy):
    scales = [10.0, 1.0, 30.0, 5.0, 200.0]
    ours, opt, c1 = _train(FUSED["AdamW"], policy, 5, fused_api=True, scales=scales)
    theirs, _, c2 = _train(FUSED["AdamW"], policy, 5, fused_api=False, scales=scales)
    _assert_params_close(ours, theirs, 1e-5)
    assert c1.state_dict()["steps"] == c2.state_dict()["steps"] == 5


def test_no_clipping_needed_steps_exactly_like_the_plain_optimizer():
    ours, _, _ = _train(FUSED["AdamW"], "norm:1e6", 3, fused_api=True)
    theirs, _, _ = _train(FUSED["AdamW"], "none", 3, fused_api=False)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", ["AdamW", "AdamW-foreach"])
def test_skipped_steps_change_nothing(name):
    make = {**FUSED, **UNFUSED}[name]
    model = _model()
    opt = gct.clipped(make(list(model.parameters())), "norm:1.0", nonfinite="skip")
    _backward(model)
    opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    opt.zero_grad()
    _backward(model, poison=True)
    opt.step()
    assert bool(opt.clip_stats.skipped) and opt.clip_stats.offenders[0].name == "param[0]"
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)
    for k, v in opt.state[model[0].weight].items():
        assert torch.equal(v, state[k]), k


def test_spike_skip_through_a_fused_optimizer_leaves_the_step_count():
    model = _model()
    opt = gct.clipped(FUSED["AdamW"](list(model.parameters())), 
                        gradclip.chain(gradclip.SpikeGuard(window=4, min_history=3, sigma=3.0), gradclip.GlobalNorm(1.0)))
    for scale in (1.0, 1.1, 0.9, 1e6):
        opt.zero_grad()
        _backward(model, scale=scale)
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
    assert bool(opt.clip_stats.skipped)
    assert int(opt.state[model[0].weight]["step"]) == 3
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b)


def test_closure_is_evaluated_before_clipping():
    model = _model()
    opt = gct.clipped(FUSED["AdamW"](list(model.parameters())), "norm:0.5")

    def closure():
        opt.zero_grad()
        loss = ((model(X) - Y) ** 2).sum().mul(10)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.ndim == 0 and float(opt.clip_stats.clipped_norm) == pytest.approx(0.5, rel=1e-6)


def test_named_parameters_name_the_offenders():
    model = _model()
    opt = gct.clipped(FUSED["AdamW"](list(model.parameters())), "norm:1.0", parameters=model, nonfinite="skip")
    _backward(model, poison=True)
    opt.step()
    assert [o.name for o in opt.clip_stats.offenders] == ["0.weight"]


def test_state_dict_carries_the_clipper_state():
    ours, opt, clipper = _train(FUSED["AdamW"], "zclip", 3, fused_api=True)
    saved = opt.state_dict()
    assert saved["gradclip"]["policy"] == "zclip" and saved["gradclip"]["steps"] == 3
    fresh = gct.clipped(FUSED["AdamW"](list(_model().parameters())), "zclip")
    fresh.load_state_dict(saved)
    assert fresh.clipper.steps == 3
    for k, v in clipper.state_dict()["state"].items():
        assert torch.equal(fresh.clipper.state_dict()["state"][k], v)
    plain = FUSED["AdamW"](list(_model().parameters()))
    plain.load_state_dict(saved)  # a plain optimizer ignores the extra key
    assert "gradclip" in saved


def test_lr_scheduler_before_and_after():
    model = _model()
    opt = FUSED["AdamW"](list(model.parameters()))
    early = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt = gct.clipped(opt, "norm:0.5")
    late = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _backward(model)
    opt.step()
    early.step()
    late.step()
    assert opt.clip_stats is not None and opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 4)


def test_grad_scaler_after_unscale():
    ours, theirs = _model(), _model()
    results = []
    for model, fused_api in ((ours, True), (theirs, False)):
        opt = FUSED["AdamW"](list(model.parameters()))
        if fused_api:
            opt = gct.clipped(opt, "norm:0.5")
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        scaler.scale(((model(X) - Y) ** 2).sum().mul(10)).backward()
        scaler.unscale_(opt)
        if not fused_api:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
        results.append(opt)
    _assert_params_close(ours, theirs, 1e-6)
    assert not hasattr(results[0], "grad_scale") and not hasattr(results[0], "found_inf")


def test_grad_scaler_without_unscale_is_refused():
    model = _model()
    opt = gct.clipped(FUSED["AdamW"](list(model.parameters())), "norm:0.5")
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(((model(X) - Y) ** 2).sum()).backward()
    with pytest.raises(gradclip.ConfigError, match=r"scaler.unscale_\(optimizer\)"):
        scaler.step(opt)


def test_bad_arguments():
    model = _model()
    with pytest.raises(gradclip.InputTypeError, match="Received: Sequential"):
        gct.clipped(model, "norm:1.0")
    opt = FUSED["AdamW"](list(model.parameters()))
    with pytest.raises(gradclip.InputTypeError, match="generator"):
        gct.clipped(opt, "norm:1.0", parameters=model.parameters())
    with pytest.raises(gradclip.ConfigError, match="ready Clipper"):
        gct.clipped(opt, gct.Clipper("norm:1.0"), nonfinite="skip")
    gct.clipped(opt, "norm:1.0")
    with pytest.raises(gradclip.ConfigError, match="already clipped"):
        gct.clipped(opt, "norm:1.0")


def test_a_monitor_attached_to_the_clipper_records_every_step():
    records = []
    model = _model()
    clipper = gct.Clipper("norm:0.5")
    gradclip.Monitor([records.append], per_layer=False).attach(clipper)
    opt = gct.clipped(FUSED["AdamW"](list(model.parameters())), clipper)
    theirs, _, _ = _train(FUSED["AdamW"], "norm:0.5", 2, fused_api=False)
    for _ in range(2):
        opt.zero_grad()
        _backward(model)
        opt.step()
    assert len(records) == 2 and records[-1]["clipped"]
    _assert_params_close(model, theirs, 1e-6)
