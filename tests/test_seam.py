"""The seam between policies and adapters: typed ops, declared forms, one apply, one name per concept."""

from __future__ import annotations

import pathlib
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import gradclip
import gradclip.policy as gp
from gradclip import _apply, _step
from gradclip._ops import NumpyOps
from gradclip._policies._base import DECISION_KINDS

SRC = pathlib.Path(gradclip.__file__).resolve().parent

SPECS = ["norm:1.0", "pertensor:0.5", "value:0.5", "none", "agc:0.02", "autoclip:p=20,window=8",
         "autoclip:p=40,window=3,scope=tensor", "maxhist:2,window=4", "zclip", "zclip:skip=true", "spikeguard",
         "spikeguard:max_norm=none", "spikeguard:on_spike=clip", "adagc:warmup_steps=2", "spikeguard+norm:5.0",
         "agc:0.05+zclip", "spikeguard+adagc", "zclip+pertensor:1.0", "none+norm:1.0", "norm:1.0+none",
         "blockrms:0.5"]
SHAPES = [(3, 2), (4,)]
NAMES = ("a/w", "b")


def _grads(seed: int, scale: float = 1.0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * scale).astype(np.float32) for s in SHAPES]


def _policy(spec: str) -> gradclip.Policy:
    if spec.startswith("blockrms") and "blockrms" not in gp.registry():
        pytest.skip("BlockRMS is not in this tree")
    return gradclip.parse_policy(spec)


# -- the Ops contract --------------------------------------------------------------------------
def test_public_policy_module_exports_the_contract():
    assert gp.__all__ == sorted(gp.__all__)
    expected = {"Policy", "Measurement", "Decision", "DecisionForm", "Ops", "PolicyOps", "StepOps", "NumpyOps"}
    assert expected <= set(gp.__all__)
    assert gp.Policy is gradclip.Policy and gp.Ops is gp.StepOps


@pytest.mark.parametrize(("module", "name"), [("gradclip._ops", "NumpyOps"), ("gradclip.torch._ops", "TorchOps"),
                                              ("gradclip.keras._ops", "KerasOps"),
                                              ("gradclip.tensorflow._ops", "TFOps")])
def test_every_backend_is_an_ops(module, name):
    framework = {"NumpyOps": None, "TorchOps": "torch", "KerasOps": "keras", "TFOps": "tensorflow"}[name]
    if framework:
        pytest.importorskip(framework)
    import importlib

    ops = getattr(importlib.import_module(module), name)
    assert isinstance(ops, gp.Ops) and isinstance(ops, gp.PolicyOps)


def test_the_functional_step_runs_on_torch_tensors_as_on_numpy():
    torch = pytest.importorskip("torch")
    from gradclip.torch._ops import TorchOps

    for spec in ["norm:1.0", "autoclip:p=40,window=3,scope=tensor", "value:0.5", "agc:0.05+zclip"]:
        policy = _policy(spec)
        np_state, _ = _step.initial_state(policy, SHAPES, NAMES, np.float32)
        t_state = {k: torch.from_numpy(v.copy()) for k, v in np_state.items()}
        for t in range(4):
            grads = _grads(t, 30.0 if t == 3 else 1.0)
            want, w_out, np_state = _step.run(policy, grads, np_state, NumpyOps, names=NAMES, params=grads,
                                              layout="torch")
            tg = [torch.from_numpy(g) for g in grads]
            got, t_out, t_state = _step.run(policy, tg, t_state, TorchOps, names=NAMES, params=tg, layout="torch")
            for a, b in zip(got, want):
                np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-7)
            assert float(t_out.clipped_norm) == pytest.approx(float(w_out.clipped_norm), rel=1e-5)


# -- declared forms: no adapter runs a policy to learn its shapes -------------------------------
@pytest.mark.parametrize("spec", SPECS)
def test_declared_form_matches_what_a_step_returns(spec):
    """The forms the built-in policies declare are checked against real steps, so they cannot drift from decide()."""
    policy = _policy(spec)
    state, template = _step.initial_state(policy, SHAPES, NAMES, np.float32)
    for t in range(3):
        grads = _grads(t)
        _, outcome, new = _step.run(policy, grads, state, NumpyOps, names=NAMES, params=grads)
        _step.check_state(policy, state, new)
        _step.check_outcome(policy, template, outcome)
        for field in ("coef", "threshold"):
            want, got = getattr(template, field), getattr(outcome, field)
            assert (want is None) == (got is None), field
            if isinstance(want, np.ndarray):
                assert np.shape(got) == want.shape, field
            elif want is not None:
                assert got == want, field
        state = new
    assert _apply.decision_form(policy).kind in DECISION_KINDS
    assert _apply.reports_coef(policy) == (template.coef is not None)


def test_initial_state_never_runs_the_policy(monkeypatch):
    def refuse(self, m, state, ops):
        raise AssertionError("decide() was run to learn shapes")

    for spec in SPECS:
        policy = _policy(spec)
        for cls in {type(p) for p in policy.members()} | {type(policy)}:
            monkeypatch.setattr(cls, "decide", refuse)
        _, outcome = _step.initial_state(policy, SHAPES, NAMES, np.float64)
        assert outcome.tensor_norms.shape == (2,) and outcome.norm.dtype == np.float64
        monkeypatch.undo()


def test_an_unbounded_history_is_refused_until_bounded():
    with pytest.raises(gradclip.ConfigError, match="window=N"):
        _step.initial_state(gradclip.AutoClip(), SHAPES, NAMES, np.float32)
    state, _ = _step.initial_state(_step.fixed_shape(gradclip.AutoClip(), 16), SHAPES, NAMES, np.float32)
    assert state["sorted"].shape == (1, 16)


@dataclass(frozen=True)
class _Undeclared(gp.Policy):
    def decide(self, m, state, ops):
        return gp.Decision(threshold=1.0, coef=ops.full_like(m.norm, 0.5)), state


@dataclass(frozen=True)
class _Misdeclared(gp.Policy):
    decision_form = gp.DecisionForm("coefs", threshold="tensor")

    def decide(self, m, state, ops):
        return gp.Decision(threshold=1.0, coef=ops.full_like(m.norm, 0.5)), state


def test_a_new_policy_must_declare_its_form_for_the_functional_adapters():
    with pytest.raises(gradclip.ConfigError, match="decision_form"):
        _step.initial_state(_Undeclared(), SHAPES, NAMES, np.float32)
    state, template = _step.initial_state(_Misdeclared(), SHAPES, NAMES, np.float32)
    _, outcome, _ = _step.run(_Misdeclared(), _grads(0), state, NumpyOps, names=NAMES)
    with pytest.raises(gradclip.ConfigError, match="declares decision_form"):
        _step.check_outcome(_Misdeclared(), template, outcome)


def test_a_new_policy_needs_no_declaration_in_torch():
    torch = pytest.importorskip("torch")
    import gradclip.torch as gct

    w = torch.nn.Parameter(torch.ones(2))
    w.grad = torch.ones(2)
    stats = gct.Clipper(_Undeclared()).step([w])
    assert float(stats.coef) == 0.5 and w.grad.tolist() == [0.5, 0.5]


@pytest.mark.parametrize(("kwargs", "match"), [({"kind": "scale"}, "kind"), ({"threshold": "vector"}, "threshold"),
                                               ({"threshold": "fixed"}, "fixed"), ({"fixed": 1.0}, "fixed")])
def test_decision_form_validates(kwargs, match):
    with pytest.raises(gradclip.ConfigError, match=match):
        gp.DecisionForm(**kwargs)


# -- one apply ----------------------------------------------------------------------------------
def test_decision_kind():
    one = np.float32(1.0)
    assert [gp.Decision(coef=one).kind, gp.Decision(coefs=np.ones(2)).kind, gp.Decision(unit_coefs=[None]).kind,
            gp.Decision(clamp=(None, 1.0)).kind, gp.Decision(skip=np.True_).kind] == ["coef", "coefs", "units", "clamp",
                                                                                   "none"]


def test_only_apply_branches_on_the_kind_of_a_decision():
    """Which field of a Decision is set is read in gradclip._apply (and by a chain composing members)."""
    pattern = re.compile(r"\b(d|decision)\.(coef|coefs|unit_coefs|clamp)\s+is\s+(not\s+)?None")
    allowed = {"_apply.py", "_policies/_chain.py", "_policies/_base.py"}
    found = [f"{path.relative_to(SRC)}:{i}" for path in SRC.rglob("*.py") for i, line in
             enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if pattern.search(line) and str(path.relative_to(SRC)) not in allowed]
    assert found == []


def test_skip_folds_into_every_kind_without_a_host_read():
    grads = _grads(1)
    m = _step.measure(gradclip.NoClip(), grads, NumpyOps, names=NAMES)
    skip = np.True_
    decisions = [gp.Decision(coef=np.float32(0.5), skip=skip), gp.Decision(coefs=np.ones(2, np.float32), skip=skip),
                 gp.Decision(skip=skip), gp.Decision(clamp=(-0.1, 0.1), skip=skip)]
    for d in decisions:
        out, outcome = _apply.apply(d, grads, m, NumpyOps, norm_type=2.0)
        assert all(not o.any() for o in out) and bool(outcome.skipped) and bool(outcome.clipped)


def test_apply_coef_false_reports_the_factor_without_applying_it():
    grads = _grads(2)
    m = _step.measure(gradclip.NoClip(), grads, NumpyOps, names=NAMES)
    out, outcome = _apply.apply(gp.Decision(coef=np.float32(0.25)), grads, m, NumpyOps, norm_type=2.0, apply_coef=False)
    assert all(o is g for o, g in zip(out, grads)) and float(outcome.coef) == 0.25


def test_remeasured_after_elementwise_or_local_changes():
    assert _apply.remeasured(gp.Decision(clamp=(None, 1.0)), local_tensor_norms=False)
    assert _apply.remeasured(gp.Decision(coefs=np.ones(2)), local_tensor_norms=True)
    assert not _apply.remeasured(gp.Decision(coefs=np.ones(2)), local_tensor_norms=False)
    assert not _apply.remeasured(gp.Decision(coef=np.float32(1.0)), local_tensor_norms=True)


# -- one name per concept -----------------------------------------------------------------------
def test_torch_last_stats_on_the_clipper_and_the_clipped_optimizer():
    torch = pytest.importorskip("torch")
    import gradclip.torch as gct

    model = torch.nn.Linear(3, 1)
    clipper = gct.Clipper("norm:1.0")
    with pytest.raises(gradclip.ConfigError, match="not run a step"):
        clipper.last_stats()
    model(torch.ones(4, 3)).sum().mul(100).backward()
    stats = clipper.step(model)
    assert clipper.last_stats() is stats

    opt = gct.clipped(torch.optim.SGD(model.parameters(), lr=0.1), "norm:1.0")
    with pytest.raises(gradclip.ConfigError, match="not stepped"):
        opt.last_stats()
    opt.step()
    assert opt.last_stats() is opt.clip_stats and bool(opt.last_stats().clipped)  # the old attribute still works


def test_keras_clipped_and_last_stats_with_deprecated_aliases():
    keras = pytest.importorskip("keras")
    import gradclip.keras as gck

    opt = gck.clipped(keras.optimizers.SGD(0.1), "norm:1.0")
    assert isinstance(opt, keras.optimizers.SGD) and "clipped" in gck.__all__
    var = keras.Variable(np.ones((2,), np.float32), name="w")
    opt.apply([keras.ops.convert_to_tensor(np.full((2,), 10.0, np.float32))], [var])
    stats = opt.last_stats()
    assert bool(stats.clipped) and stats.clipped_norm == pytest.approx(1.0, rel=1e-5)

    with pytest.warns(DeprecationWarning, match="gradclip.keras.clipped"):
        old = gck.wrap(keras.optimizers.SGD(0.1), "norm:1.0")
    assert type(old) is type(opt)
    with pytest.warns(DeprecationWarning, match="last_stats"):
        again = opt.gradclip_stats()
    assert again.to_dict() == stats.to_dict()


def test_deprecation_warnings_point_at_the_caller():
    keras = pytest.importorskip("keras")
    import gradclip.keras as gck

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gck.wrap(keras.optimizers.SGD(0.1), "norm:1.0")
    assert [w.filename for w in caught if "gradclip.keras.wrap" in str(w.message)] == [__file__]


def test_grad_ops_of_both_kinds_are_grad_ops():
    assert isinstance(_apply.FunctionalGrads(NumpyOps), _apply.GradOps)
    torch = pytest.importorskip("torch")
    from gradclip.torch._ops import TorchGradOps

    assert isinstance(TorchGradOps(None, None, torch.float32), _apply.GradOps)


def test_the_policy_module_imports_no_framework():
    import json
    import subprocess
    import sys

    code = "import json, sys, gradclip.policy, gradclip._apply; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert [m for m in modules if m.split(".")[0] in ("torch", "tensorflow", "keras", "jax")] == []
