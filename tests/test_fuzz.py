"""Fuzzing the public API: any spec, hyper-parameter, gradient or state dict gives a result or a GradclipError.

For every input: success, or a typed :class:`gradclip.GradclipError`; on an error the gradients and
the clipper's state are exactly what they were. The number of examples follows the hypothesis
profile (``pytest --hypothesis-profile=long tests/test_fuzz.py`` for a long local run; see
``tests/conftest.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip._policies import registry  # noqa: E402

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
POLICIES = registry()

# -- spec strings -------------------------------------------------------------------------------------
_VALUES = ["1", "0", "-1", "0.5", "1e20", "1e-30", "inf", "-inf", "nan", "none", "true", "false", "abc", "",
           "10**15", "3.0", "2", "100000000000000000000", "max", "mean", "skip", "clip", "tensor", "global",
           "torch", "keras", "reciprocal", "1,2", "+", ":", "="]


def _keys(name: str) -> list[str]:
    cls = POLICIES[name]
    return [f.name for f in dataclasses.fields(cls)] + list(getattr(cls, "spec_aliases", {})) + ["bogus"]


@st.composite
def spec_strings(draw) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(POLICIES) + ["nrom", "NORM", ""]))
        args = []
        for _ in range(draw(st.integers(0, 3))):
            value = draw(st.sampled_from(_VALUES) | st.floats(allow_nan=True, allow_infinity=True).map(repr))
            if name in POLICIES and draw(st.booleans()):
                args.append(f"{draw(st.sampled_from(_keys(name)))}={value}")
            else:
                args.append(value)
        parts.append(name + (":" + ",".join(args) if args or draw(st.booleans()) else ""))
    return "+".join(parts)


@FUZZ
@given(st.one_of(spec_strings(), st.text(max_size=40)))
def test_any_spec_string_parses_or_raises_a_typed_error(spec):
    try:
        policy = gradclip.parse_policy(spec)
    except gradclip.GradclipError:
        return
    assert isinstance(policy, gradclip.Policy)


# -- hyper-parameters -----------------------------------------------------------------------------------
_ODD = st.sampled_from([None, True, False, 0, 1, -1, 2, 10**15, 10**30, 0.0, 0.5, -0.5, 1e300, math.inf, -math.inf,
                        math.nan, "1", "x", (), (1,), [1.0], np.int64(3), np.int32(5), np.float32(0.5),
                        np.float64(2.0), np.bool_(True), object()])


@FUZZ
@given(st.sampled_from(sorted(POLICIES)), st.data())
def test_any_hyper_parameters_build_a_policy_or_raise_a_typed_error(name, data):
    cls = POLICIES[name]
    fields = [f.name for f in dataclasses.fields(cls)]
    kwargs = {k: data.draw(_ODD, label=k) for k in data.draw(st.lists(st.sampled_from(fields), unique=True, max_size=3))}
    try:
        cls(**kwargs)
    except gradclip.GradclipError:
        pass


# -- clipping ----------------------------------------------------------------------------------------
_SAFE_SPECS = ["none", "norm:1.0", "norm:0.5,norm_type=inf", "norm:2.0,norm_type=1", "pertensor:1.0", "value:0.5",
               "value:min=-1,max=0.5", "autoclip:p=25", "autoclip:p=50,window=4", "autoclip:10,scope=tensor",
               "zclip:warmup=2", "zclip:warmup=2,skip=true", "zclip:warmup=3,cap=none,mode=max", "agc:0.01",
               "adagc:warmup=2", "spikeguard:window=4,min_history=2", "spikeguard:window=4,min_history=2,on_spike=clip",
               "maxhist:2,window=3", "maxhist:2,window=3,stat=max", "spikeguard:window=4,min_history=2+norm:1.0",
               "agc:0.01+norm:1.0", "spikeguard:window=4,min_history=2+adagc:warmup=2",
               "zclip:warmup=2,skip=true+adagc:warmup=2"]
_SPECIAL = st.sampled_from([0.0, -0.0, 1e-30, 1e30, 3.4e38, math.nan, math.inf, -math.inf])


@st.composite
def gradient_lists(draw) -> list[np.ndarray]:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
        size = int(np.prod(shape))
        values = draw(st.lists(st.floats(-1e6, 1e6, width=32) | _SPECIAL, min_size=size, max_size=size))
        out.append(np.asarray(values, dtype=np.float32).reshape(shape))
    return out


def _params(arrays, dtype) -> list[torch.nn.Parameter]:
    params = []
    for i, a in enumerate(arrays):
        p = torch.nn.Parameter(torch.ones(a.shape, dtype=dtype) * (i + 1))
        p.grad = torch.from_numpy(a.copy()).to(dtype)
        params.append(p)
    return params


@FUZZ
@given(st.sampled_from(_SAFE_SPECS), st.sampled_from(["propagate", "skip", "zero", "error"]),
       st.sampled_from(["float32", "float64", "bfloat16"]), st.lists(gradient_lists(), min_size=1, max_size=3))
def test_clipping_any_gradients_succeeds_or_raises_typed_and_leaves_them_untouched(spec, nonfinite, dtype, steps):
    dtype = getattr(torch, dtype)
    clipper = gct.Clipper(spec, nonfinite=nonfinite)
    for arrays in steps:
        shapes = [a.shape for a in arrays]
        if [tuple(s) for s in shapes] != [tuple(a.shape) for a in steps[0]]:
            arrays = steps[0]  # one model per clipper: the same shapes every step
        params = _params(arrays, dtype)
        before = [p.grad.clone() for p in params]
        state = copy.deepcopy(clipper.state_dict())
        try:
            stats = clipper.step([(f"p{i}", p) for i, p in enumerate(params)])
        except gradclip.GradclipError:
            for p, b in zip(params, before):
                assert torch.equal(torch.nan_to_num(p.grad, nan=7.0), torch.nan_to_num(b, nan=7.0))
            _assert_same_state(clipper.state_dict(), state)
            continue
        assert isinstance(stats, gradclip.ClipStats)
        if bool(stats.skipped):
            for p, b in zip(params, before):
                assert torch.equal(torch.nan_to_num(p.grad, nan=7.0), torch.nan_to_num(b, nan=7.0))


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["policy"] == b["policy"] and a["steps"] == b["steps"]
    assert sorted(a["state"]) == sorted(b["state"])
    for k in a["state"]:
        x, y = a["state"][k], b["state"][k]
        if isinstance(x, torch.Tensor):
            assert torch.equal(torch.nan_to_num(x, nan=7.0), torch.nan_to_num(y, nan=7.0)), k
        else:
            assert x == y, k


# -- state dicts ---------------------------------------------------------------------------------------
_STATEFUL = ["autoclip:p=25", "autoclip:p=50,window=4", "autoclip:10,scope=tensor", "zclip:warmup=2",
             "adagc:warmup=2", "spikeguard:window=4,min_history=2", "maxhist:2,window=3",
             "spikeguard:window=4,min_history=2+norm:1.0"]


def _trained(spec: str, steps: int, seed: int, n: int = 3) -> gct.Clipper:
    clipper = gct.Clipper(spec)
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.ones(2, 2)) for _ in range(n)]
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(2, 2, generator=gen) * 3
        clipper.step([(f"w{i}", p) for i, p in enumerate(params)])
    return clipper


def _mutate(sd: dict, data) -> dict:
    sd = copy.deepcopy(sd)
    keys = sorted(sd["state"])
    how = data.draw(st.sampled_from(["drop", "add", "shape", "nan", "negative", "dtype", "policy", "steps", "huge",
                                     "state_type", "other_policy", "version", "none"]), label="mutation")
    key = data.draw(st.sampled_from(keys), label="key") if keys else None
    t = sd["state"].get(key)
    if how == "drop" and key:
        del sd["state"][key]
    elif how == "add":
        sd["state"]["extra"] = torch.zeros(1)
    elif how == "shape" and isinstance(t, torch.Tensor):
        sd["state"][key] = torch.zeros(t.numel() + 1, dtype=t.dtype)
    elif how == "nan" and isinstance(t, torch.Tensor) and t.is_floating_point():
        sd["state"][key] = torch.full_like(t, math.nan)
    elif how == "negative" and isinstance(t, torch.Tensor):
        sd["state"][key] = -t - 1
    elif how == "huge" and isinstance(t, torch.Tensor):
        sd["state"][key] = t + 1e9
    elif how == "dtype" and isinstance(t, torch.Tensor):
        sd["state"][key] = t.to(torch.int64 if t.is_floating_point() else torch.float64)
    elif how == "policy":
        sd["policy"] = data.draw(st.sampled_from(["norm:1.0", "zclip", "garbage", ""]), label="policy")
    elif how == "steps":
        sd["steps"] = data.draw(st.sampled_from([-1, "3", 2.5, None, 10**12]), label="steps")
    elif how == "state_type":
        sd["state"] = data.draw(st.sampled_from([None, [], "x", {1: 2}]), label="state")
    elif how == "other_policy":
        sd["state"] = _trained("zclip:warmup=2" if "zclip" not in sd["policy"] else "adagc:warmup=2", 3, 1)
        sd["state"] = sd["state"].state_dict()["state"]
    elif how == "version":
        sd["version"] = data.draw(st.sampled_from([0, 99, "1", None]), label="version")
    return sd


@FUZZ
@given(st.sampled_from(_STATEFUL), st.integers(1, 6), st.data())
def test_a_mutated_state_dict_loads_or_raises_and_changes_nothing(spec, steps, data):
    saved = _trained(spec, steps, seed=0).state_dict()
    target = _trained(spec, 2, seed=1)
    before = copy.deepcopy(target.state_dict())
    try:
        target.load_state_dict(_mutate(saved, data))
    except gradclip.GradclipError:
        _assert_same_state(target.state_dict(), before)
        return
    params = [torch.nn.Parameter(torch.ones(2, 2)) for _ in range(3)]
    for p in params:
        p.grad = torch.full((2, 2), 2.0)
    try:  # a state that loaded must clip, or fail with a typed error: never a KeyError or a crash
        target.step([(f"w{i}", p) for i, p in enumerate(params)])
    except gradclip.GradclipError:
        pass
