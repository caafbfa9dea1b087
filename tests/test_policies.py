"""Policies (the "decide" step), spec strings, validation and typed errors."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import gradclip
from gradclip import _reference as ref
from gradclip._errors import nonfinite_message
from gradclip._ops import NumpyOps
from gradclip._policies import Decision, Measurement, registry

NAN, INF = float("nan"), float("inf")


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (gradclip.ConfigError, ValueError),
        (gradclip.InputTypeError, TypeError),
        (gradclip.StateDictError, ValueError),
        (gradclip.NonFiniteError, RuntimeError),
        (gradclip.NonFiniteError, FloatingPointError),
    ],
)
def test_errors_are_also_builtin_exceptions(cls, builtin):
    assert issubclass(cls, gradclip.GradclipError)
    assert issubclass(cls, builtin)


def test_offender_describe_and_nonfinite_message():
    off = gradclip.Offender("layer.0.weight", 3, (3, 4), 2, 1)
    assert off.describe() == "layer.0.weight shape=(3, 4) nan=2 inf=1"
    msg = nonfinite_message(NAN, 2.0, (off,))
    assert "layer.0.weight shape=(3, 4) nan=2 inf=1" in msg and "nonfinite='skip'" in msg
    many = tuple(gradclip.Offender(f"p{i}", i, (1,), 1, 0) for i in range(10))
    msg = nonfinite_message(NAN, 2.0, many, limit=3)
    assert "p2 " in msg and "p3 " not in msg and "and 7 more" in msg


def test_nonfinite_error_carries_offenders_and_norm():
    off = gradclip.Offender("w", 0, (2,), 1, 0)
    err = gradclip.NonFiniteError("boom", (off,), INF)
    assert err.offenders == (off,) and err.norm == INF and str(err) == "boom"


# ----------------------------------------------------------------------------- spec strings
ROUND_TRIP = [
    gradclip.GlobalNorm(),
    gradclip.GlobalNorm(1.0),
    gradclip.GlobalNorm(0.25, norm_type=INF),
    gradclip.GlobalNorm(3, norm_type=1, semantics="tf"),
    gradclip.GlobalNorm(0.0, semantics="optax"),
    gradclip.GlobalNorm(INF, norm_type=0.5, semantics="keras"),
    gradclip.PerTensorNorm(),
    gradclip.PerTensorNorm(0.5, norm_type=3.0),
    gradclip.PerTensorNorm(2.0, semantics="tf"),
    gradclip.Value(0.5),
    gradclip.Value(0.0),
    gradclip.Value(min=-1.0, max=0.25),
    gradclip.Value(min=-1.0),
    gradclip.Value(max=2.0),
    gradclip.NoClip(),
    gradclip.NoClip(norm_type=INF),
]


@pytest.mark.parametrize("policy", ROUND_TRIP, ids=repr)
def test_parse_policy_round_trips_spec(policy):
    spec = policy.spec()
    assert isinstance(spec, str) and spec.startswith(policy.spec_name)
    back = gradclip.parse_policy(spec)
    assert back == policy and type(back) is type(policy)
    assert back.spec() == spec


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("norm:1.0", gradclip.GlobalNorm(max_norm=1.0)),
        ("norm", gradclip.GlobalNorm()),
        ("  NORM : 2 ", gradclip.GlobalNorm(2.0)),
        ("norm:0.5,norm_type=inf", gradclip.GlobalNorm(0.5, norm_type=INF)),
        ("norm:max_norm=0.5,semantics=optax", gradclip.GlobalNorm(0.5, semantics="optax")),
        ("pertensor:1.0", gradclip.PerTensorNorm(1.0)),
        ("value:0.5", gradclip.Value(0.5)),
        ("value:min=-1,max=0.5", gradclip.Value(min=-1.0, max=0.5)),
        ("value:max=none,min=-2", gradclip.Value(min=-2.0)),
        ("none", gradclip.NoClip()),
    ],
)
def test_parse_policy_examples(spec, expected):
    assert gradclip.parse_policy(spec) == expected


def test_parse_policy_returns_a_policy_as_is():
    p = gradclip.Value(0.5)
    assert gradclip.parse_policy(p) is p


def test_spec_examples_from_docstrings():
    assert gradclip.GlobalNorm(1.0).spec() == "norm:1.0"
    assert gradclip.PerTensorNorm(0.5).spec() == "pertensor:0.5"
    assert gradclip.NoClip().spec() == "none"
    assert gradclip.Value(0.5).spec() == "value:0.5"


def test_registry_names():
    assert {"norm", "pertensor", "value", "none"} <= set(registry())
    assert registry()["norm"] is gradclip.GlobalNorm


def test_unknown_method_lists_valid_ones():
    with pytest.raises(gradclip.ConfigError) as info:
        gradclip.parse_policy("clipnorm:1.0")
    msg = str(info.value)
    assert "'clipnorm'" in msg
    for name in registry():
        assert name in msg


@pytest.mark.parametrize(
    ("spec", "listed"),
    [
        ("norm:1.0,foo=2", ["max_norm", "norm_type", "semantics"]),
        ("value:0.5,bound=1", ["clip_value", "min", "max"]),
        ("pertensor:p=2", ["max_norm", "norm_type", "semantics"]),
    ],
)
def test_unknown_key_lists_valid_ones(spec, listed):
    with pytest.raises(gradclip.ConfigError, match="Unknown key") as info:
        gradclip.parse_policy(spec)
    for key in listed:
        assert key in str(info.value)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("norm:abc", "must be a number"),
        ("norm:1.0,2.0", "needs a key"),
        ("none:2.0", "needs a key"),
        ("norm:-1", "max_norm must be >= 0"),
        ("norm:nan", "nan"),
        ("norm:1,norm_type=0", "norm_type"),
        ("norm:1,norm_type=true", "norm_type"),
        ("norm:1,semantics=jax", "semantics must be one of"),
        ("value:0.5,min=-1", "not both"),
        ("value:min=1,max=0", "min <= max"),
        ("value", "clip_value"),
    ],
)
def test_bad_specs_raise_config_error(spec, match):
    with pytest.raises(gradclip.ConfigError, match=match):
        gradclip.parse_policy(spec)


@pytest.mark.parametrize("spec", [1.0, None, b"norm:1.0", ["norm:1.0"]])
def test_non_string_spec(spec):
    with pytest.raises(gradclip.ConfigError, match="spec must be a string"):
        gradclip.parse_policy(spec)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("cls", [gradclip.GlobalNorm, gradclip.PerTensorNorm])
@pytest.mark.parametrize("bad", [-1.0, -1e-12, NAN, -INF, "abc", "1.0", True, None, complex(1, 0), [1.0]])
def test_norm_policies_refuse_bad_thresholds(cls, bad):
    with pytest.raises(gradclip.ConfigError) as info:
        cls(max_norm=bad)
    assert isinstance(info.value, ValueError)
    assert "max_norm" in str(info.value) and "Received" in str(info.value)


@pytest.mark.parametrize("cls", [gradclip.GlobalNorm, gradclip.PerTensorNorm, gradclip.NoClip])
@pytest.mark.parametrize("bad", [0, 0.0, -1, -2.0, -INF, NAN, "abc", True, False, None])
def test_policies_refuse_bad_norm_types(cls, bad):
    with pytest.raises(gradclip.ConfigError, match="norm_type"):
        cls(norm_type=bad)


@pytest.mark.parametrize(("given", "expected"), [(1, 1.0), (2, 2.0), (0.5, 0.5), ("inf", INF), (INF, INF), (np.float32(3), 3.0)])
def test_norm_type_is_normalised_to_float(given, expected):
    p = gradclip.GlobalNorm(norm_type=given)
    assert p.norm_type == expected and isinstance(p.norm_type, float)
    assert p.measure_norm_type == expected


@pytest.mark.parametrize("given", [0, 3, 0.5, INF, np.float64(2.5), np.int64(4)])
def test_thresholds_are_normalised_to_float(given):
    p = gradclip.GlobalNorm(given)
    assert p.max_norm == float(given) and type(p.max_norm) is float


@pytest.mark.parametrize("cls", [gradclip.GlobalNorm, gradclip.PerTensorNorm])
def test_unknown_semantics_lists_valid_ones(cls):
    with pytest.raises(gradclip.ConfigError) as info:
        cls(1.0, semantics="jax")
    for s in ("torch", "tf", "keras", "optax"):
        assert repr(s) in str(info.value)


def test_policies_are_frozen_and_hashable():
    p = gradclip.GlobalNorm(1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_norm = 2.0  # type: ignore[misc]
    assert hash(p) == hash(gradclip.GlobalNorm(1))
    assert p != gradclip.GlobalNorm(1.0, semantics="tf")


# ----------------------------------------------------------------------------- Value
def test_value_symmetric_bounds():
    v = gradclip.Value(0.5)
    assert v.bounds == (-0.5, 0.5) and v.min is None and v.max is None
    d, state = v.decide(Measurement(norm=np.float64(3.0)), {}, NumpyOps)
    assert d.clamp == (-0.5, 0.5) and d.threshold == 0.5 and d.coef is None and d.coefs is None
    assert state == {}


def test_value_asymmetric_bounds():
    v = gradclip.Value(min=-1, max=0.25)
    assert v.bounds == (-1.0, 0.25) and v.clip_value is None
    d, _ = v.decide(Measurement(norm=np.float64(3.0)), {}, NumpyOps)
    assert d.clamp == (-1.0, 0.25) and d.threshold == (-1.0, 0.25)
    assert gradclip.Value(max=0.25).bounds == (None, 0.25)
    assert gradclip.Value(min=0.25).bounds == (0.25, None)
    assert gradclip.Value(min=0.25, max=0.25).bounds == (0.25, 0.25)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "neither"),
        ({"clip_value": -0.5}, "clip_value must be >= 0"),
        ({"clip_value": NAN}, "nan"),
        ({"clip_value": "big"}, "clip_value"),
        ({"clip_value": 1.0, "max": 2.0}, "not both"),
        ({"clip_value": 1.0, "min": -2.0}, "not both"),
        ({"min": 1.0, "max": -1.0}, "min <= max"),
        ({"min": NAN}, "min must be a real number"),
        ({"max": "x"}, "max must be a real number"),
        ({"max": True}, "max must be a real number"),
    ],
)
def test_value_validation(kwargs, match):
    with pytest.raises(gradclip.ConfigError, match=match):
        gradclip.Value(**kwargs)


def test_noclip_decides_nothing():
    d, state = gradclip.NoClip().decide(Measurement(norm=np.float64(1e9)), {"x": 1}, NumpyOps)
    assert d == Decision() and state == {"x": 1}
    assert gradclip.NoClip(norm_type=1).measure_norm_type == 1.0
    assert gradclip.Value(0.5).measure_norm_type == 2.0


def test_fixed_policies_have_no_state():
    for p in ROUND_TRIP:
        assert p.init_state(np.float64(1.0), NumpyOps) == {}


# ----------------------------------------------------------------------------- decide vs the oracle
NORMS = [0.0, 1e-9, 0.5, 1.0, 1.0 + 1e-7, 2.0, 1e30, INF, NAN]
MAX_NORMS = [0.0, 0.5, 1.0, 3.0, INF]
SEMANTICS = ["torch", "tf", "keras", "optax"]


def _same(a: float, b: float, rel: float = 1e-12) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("max_norm", MAX_NORMS)
def test_global_norm_decide_matches_reference(semantics, max_norm):
    policy = gradclip.GlobalNorm(max_norm, semantics=semantics)
    for norm in NORMS:
        d, state = policy.decide(Measurement(norm=np.float64(norm)), {}, NumpyOps)
        assert d.threshold == max_norm and d.coefs is None and d.clamp is None and state == {}
        got, want = float(d.coef), ref.coef(norm, max_norm, semantics)
        assert _same(got, want), (semantics, max_norm, norm, got, want)
        if not math.isnan(got):
            assert 0.0 <= got <= 1.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("max_norm", MAX_NORMS)
def test_per_tensor_decide_matches_reference(semantics, max_norm):
    policy = gradclip.PerTensorNorm(max_norm, semantics=semantics)
    assert policy.needs_tensor_norms
    tensor_norms = np.array(NORMS)
    d, _ = policy.decide(Measurement(norm=np.float64(1.0), tensor_norms=tensor_norms), {}, NumpyOps)
    assert d.coef is None and d.threshold == max_norm
    assert d.coefs.shape == tensor_norms.shape
    for n, got in zip(NORMS, d.coefs):
        want = ref.coef(n, max_norm, semantics)
        assert _same(float(got), want), (semantics, max_norm, n, float(got), want)


def test_torch_semantics_epsilon_is_exact():
    d, _ = gradclip.GlobalNorm(1.0).decide(Measurement(norm=np.float64(5.0)), {}, NumpyOps)
    assert float(d.coef) == 1.0 / (5.0 + 1e-6)
    d, _ = gradclip.GlobalNorm(1.0, semantics="tf").decide(Measurement(norm=np.float64(4.0)), {}, NumpyOps)
    assert float(d.coef) == 0.25


# ----------------------------------------------------------------------------- NumPy ops
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 0.5, INF])
def test_numpy_ops_vector_norm_matches_reference(p):
    x = np.random.default_rng(1).normal(size=17)
    assert float(NumpyOps.vector_norm(x, p)) == pytest.approx(ref.tensor_norm(x, p), rel=1e-13)
    assert float(NumpyOps.vector_norm(np.zeros(0), p)) == 0.0


def test_numpy_ops_elementwise():
    x = np.array([-2.0, 0.5, 3.0])
    np.testing.assert_array_equal(NumpyOps.clamp(x, -1.0, 1.0), [-1.0, 0.5, 1.0])
    np.testing.assert_array_equal(NumpyOps.clamp(x, hi=1.0), [-2.0, 0.5, 1.0])
    np.testing.assert_array_equal(NumpyOps.minimum(x, 0.0), [-2.0, 0.0, 0.0])
    np.testing.assert_array_equal(NumpyOps.maximum(x, 0.0), [0.0, 0.5, 3.0])
    np.testing.assert_array_equal(NumpyOps.where(x > 0, x, 0.0), [0.0, 0.5, 3.0])
    assert bool(NumpyOps.any(x > 2.5)) and not bool(NumpyOps.any(x > 3.0))


# ----------------------------------------------------------------------------- ClipStats
def test_clip_stats_to_dict_and_repr():
    stats = gradclip.ClipStats(
        norm=np.float64(5.0), clipped_norm=1.0, coef=0.2, clipped=np.bool_(True), nonfinite=False,
        skipped=False, threshold=1.0, norm_type=2.0,
    )
    d = stats.to_dict()
    assert d == {
        "norm": 5.0, "clipped_norm": 1.0, "coef": 0.2, "clipped": True, "nonfinite": False,
        "skipped": False, "threshold": 1.0, "norm_type": 2.0, "offenders": [],
    }
    assert type(d["norm"]) is float and type(d["clipped"]) is bool
    assert repr(stats).startswith("ClipStats(norm=5.0") and "offenders" not in repr(stats)


def test_clip_stats_offenders_are_found_lazily_and_only_when_nonfinite():
    calls = []
    off = gradclip.Offender("w", 0, (2,), 1, 0)

    def find():
        calls.append(1)
        return (off,)

    stats = gradclip.ClipStats(norm=NAN, clipped_norm=NAN, coef=None, clipped=False, nonfinite=True,
                               skipped=True, threshold=None, offenders=find)
    assert calls == []
    assert stats.offenders == (off,) and stats.offenders == (off,)
    assert calls == [1]
    assert stats.offender_names == ("w",)
    assert stats.to_dict()["offenders"] == ["w"] and stats.to_dict()["coef"] is None

    finite = gradclip.ClipStats(norm=1.0, clipped_norm=1.0, coef=None, clipped=False, nonfinite=False,
                                skipped=False, threshold=None, offenders=find)
    assert finite.offenders == () and calls == [1]
