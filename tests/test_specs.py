"""Spec strings and hyper-parameter types, over every registered policy.

- ``parse_policy(p.spec()) == p`` for every policy, or ``spec()`` raises a typed error saying
  why it has no spec string (hypothesis, over varied parameters).
- Integer hyper-parameters take Python and NumPy integers and integral floats, and refuse
  fractions, booleans and sizes past the documented maximum; float hyper-parameters take NumPy
  floats and refuse booleans. One check (``gradclip._validate``) for every policy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradclip
from gradclip import _validate
from gradclip._policies import (AGC, AdaGC, AutoClip, BlockRMS, Chain, GlobalNorm, MaxNormHistory, NoClip, PerTensorNorm,
                                SpikeGuard, Value, ZClip, registry)
from gradclip._policies._fixed import SEMANTICS
from gradclip._policies._history import COEF_SEMANTICS
from gradclip._policies._zclip import MODES

INF = math.inf
MAX = _validate.MAX_STEPS
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _reals(lo=0.0, hi=1e30, *, inf=False, lo_open=False):
    """Floats in range, sometimes as NumPy scalars or ints (which must come back as equal floats)."""
    base = st.floats(lo, hi, exclude_min=lo_open, allow_nan=False, allow_infinity=False)
    out = st.one_of(base, base.map(np.float64), st.integers(math.ceil(lo) + lo_open, min(int(hi), 10**6)))
    return st.one_of(out, st.just(INF)) if inf else out


def _ints(lo, hi=MAX):
    """Whole numbers as Python ints, NumPy ints and integral floats."""
    base = st.integers(lo, hi)
    return st.one_of(base, base.map(np.int64), base.map(np.int32), base.map(float))


caps = st.one_of(st.none(), _reals(inf=True))
norm_types = st.sampled_from([1.0, 2.0, 3.0, 0.5, INF, 2])
names = st.text(min_size=0, max_size=8)  # any characters: '+', ',', '|', spaces, "none" ...
excludes = st.lists(st.one_of(names, st.sampled_from(["head.*", "fc.weight", "0.*"]),
                              st.sampled_from([int, dict])), max_size=3).map(tuple)
axes = st.one_of(st.none(), st.integers(-4, 4), st.lists(st.integers(-4, 4), min_size=1, max_size=3).map(tuple))


@st.composite
def _value(draw):
    if draw(st.booleans()):
        return Value(draw(_reals(hi=1e3)))
    lo, hi = sorted(draw(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=2)))
    return Value(min=draw(st.sampled_from([lo, None])), max=hi)


@st.composite
def _spikeguard(draw):
    window = draw(st.integers(2, MAX))
    return SpikeGuard(window=window, min_history=draw(st.integers(2, window)), sigma=draw(_reals(lo_open=True)),
                      on_spike=draw(st.sampled_from(["skip", "clip"])), max_norm=draw(caps))


#: One strategy per registered spec name; the test below fails when a new policy is not listed.
POLICIES = {
    "norm": st.builds(GlobalNorm, _reals(inf=True), norm_types, st.sampled_from(SEMANTICS)),
    "pertensor": st.builds(PerTensorNorm, _reals(inf=True), norm_types, st.sampled_from(SEMANTICS)),
    "value": _value(),
    "none": st.builds(NoClip, norm_types),
    "autoclip": st.builds(AutoClip, _reals(hi=100.0), st.one_of(st.none(), _ints(1)),
                          st.sampled_from(["global", "tensor"]), st.sampled_from(COEF_SEMANTICS), caps),
    "maxhist": st.builds(MaxNormHistory, _reals(lo_open=True), _ints(1), st.sampled_from(["mean", "max"]),
                         st.sampled_from(COEF_SEMANTICS), caps),
    "spikeguard": _spikeguard(),
    "zclip": st.builds(ZClip, st.floats(0.0, 1.0, exclude_min=True, exclude_max=True), _reals(lo_open=True),
                       _ints(1), st.sampled_from(MODES), caps, st.booleans(), _reals(hi=1.0)),
    "adagc": st.builds(AdaGC, _reals(lo_open=True), st.floats(0.0, 1.0, exclude_max=True), _ints(1),
                       _reals(inf=True), _reals(hi=1.0)),
    "agc": st.builds(AGC, _reals(lo_open=True), _reals(hi=1.0), excludes, axes, st.sampled_from(["torch", "optax"])),
    "blockrms": st.builds(BlockRMS, _reals(lo_open=True, inf=True)),
}
ANY_POLICY = st.one_of(*POLICIES.values())


def _round_trips_or_refuses(policy):
    try:
        spec = policy.spec()
    except gradclip.ConfigError as exc:
        assert "has no spec string" in str(exc)
        return None
    assert isinstance(spec, str)
    assert gradclip.parse_policy(spec) == policy, spec
    return spec


def test_every_registered_policy_has_a_strategy():
    assert set(POLICIES) == set(registry())


@pytest.mark.parametrize("name", sorted(POLICIES))
@SETTINGS
@given(data=st.data())
def test_spec_parses_back_to_an_equal_policy_or_says_it_cannot(name, data):
    _round_trips_or_refuses(data.draw(POLICIES[name]))


@SETTINGS
@given(members=st.lists(ANY_POLICY.filter(lambda p: not isinstance(p, Value)), min_size=2, max_size=3))
def test_chain_spec_parses_back_or_says_it_cannot(members):
    _round_trips_or_refuses(Chain(tuple(members)))


@pytest.mark.parametrize(
    ("policy", "spec"),
    [(AGC(axis=1), "agc:0.01,axis=1"), (AGC(axis=(0, 1)), "agc:0.01,axis=0|1"), (AGC(axis=(-1,)), "agc:0.01,axis=-1"),
     (AGC(0.02, exclude=("head.*", "fc.weight")), "agc:0.02,exclude=head.*|fc.weight"),
     (AGC(exclude=("a b",), axis=np.int64(0)), "agc:0.01,exclude=a b,axis=0")],
)
def test_agc_axis_and_exclude_round_trip(policy, spec):
    assert policy.spec() == spec
    back = gradclip.parse_policy(spec)
    assert back == policy and back.axis == policy.axis and type(back.axis) is type(policy.axis)


@pytest.mark.parametrize(
    ("exclude", "match"),
    [((int,), r"exclude by type \(int\) cannot be written"), (("a+b",), r"holds '\+'"), (("a,b",), "holds ','"),
     (("a|b",), r"holds '\|'"), ((" a",), "padded"), (("",), "empty"), (("none",), "keyword")],
)
def test_agc_spec_refuses_what_it_cannot_write(exclude, match):
    policy = AGC(exclude=exclude)
    with pytest.raises(gradclip.ConfigError, match="has no spec string: .*" + match):
        policy.spec()
    with pytest.raises(gradclip.ConfigError, match="has no spec string"):
        Chain((SpikeGuard(), policy)).spec()


@pytest.mark.parametrize("axis", ["x", 1.5, True, (), ("a",), [0, 1.5]])
def test_agc_bad_axis_is_typed(axis):
    with pytest.raises(gradclip.ConfigError, match="axis"):
        AGC(axis=axis)


# (class, field, a valid whole value, extra kwargs): every integer hyper-parameter of every policy
INT_PARAMS = [
    (AutoClip, "window", 8, {}), (MaxNormHistory, "window", 8, {}), (SpikeGuard, "window", 8, {"min_history": 2}),
    (SpikeGuard, "min_history", 3, {"window": 8}), (ZClip, "warmup_steps", 8, {}), (AdaGC, "warmup_steps", 8, {}),
]
# (class, field, a valid value, extra kwargs): every float hyper-parameter of every policy
FLOAT_PARAMS = [
    (GlobalNorm, "max_norm", 0.5, {}), (GlobalNorm, "norm_type", 3.0, {}), (PerTensorNorm, "max_norm", 0.5, {}),
    (PerTensorNorm, "norm_type", 1.0, {}), (Value, "clip_value", 0.5, {}), (Value, "min", -0.5, {}),
    (Value, "max", 0.5, {}), (NoClip, "norm_type", 1.0, {}), (AutoClip, "percentile", 25.0, {}),
    (AutoClip, "max_norm", 2.0, {}), (MaxNormHistory, "factor", 2.0, {}), (MaxNormHistory, "max_norm", 2.0, {}),
    (SpikeGuard, "sigma", 3.0, {}), (SpikeGuard, "max_norm", 2.0, {}), (ZClip, "alpha", 0.5, {}),
    (ZClip, "z_thresh", 2.0, {}), (ZClip, "max_norm", 2.0, {}), (ZClip, "eps", 0.5, {}),
    (AdaGC, "lambda_rel", 2.0, {}), (AdaGC, "beta", 0.5, {}), (AdaGC, "warmup_max_norm", 2.0, {}),
    (AdaGC, "eps", 0.5, {}), (AGC, "clip_factor", 0.5, {}), (AGC, "eps", 0.5, {}),
]


def _ids(rows):
    return [f"{cls.__name__}.{field}" for cls, field, *_ in rows]


@pytest.mark.parametrize(("cls", "field", "value", "extra"), INT_PARAMS, ids=_ids(INT_PARAMS))
@pytest.mark.parametrize("kind", [int, np.int64, np.int32, np.int16, np.uint8, float, np.float64, np.float32])
def test_integer_parameters_take_numpy_integers_and_integral_floats(cls, field, value, extra, kind):
    policy = cls(**extra, **{field: kind(value)})
    assert policy == cls(**extra, **{field: value})
    assert type(getattr(policy, field)) is int  # stored as a Python int, so the spec reads "8"
    assert gradclip.parse_policy(policy.spec()) == policy


@pytest.mark.parametrize(("cls", "field", "value", "extra"), INT_PARAMS, ids=_ids(INT_PARAMS))
@pytest.mark.parametrize("bad", [True, np.True_, 2.5, np.float32(2.5), np.float64(3.25), INF, math.nan, "8", 0, -3])
def test_integer_parameters_refuse_fractions_booleans_and_strings(cls, field, value, extra, bad):
    if bad == 0 and field == "min_history":
        bad = 1
    with pytest.raises(gradclip.ConfigError, match=field):
        cls(**extra, **{field: bad})


@pytest.mark.parametrize(("cls", "field", "value", "extra"), INT_PARAMS, ids=_ids(INT_PARAMS))
@pytest.mark.parametrize("big", [MAX + 1, 10**15, 1e20, np.int64(2**40)])
def test_sizes_past_the_maximum_are_refused_at_construction(cls, field, value, extra, big):
    if field == "min_history":
        extra = {"window": MAX}
    with pytest.raises(gradclip.ConfigError, match=f"{field} must be <= 16,777,216 \\(2\\*\\*24"):
        cls(**extra, **{field: big})


def test_the_maximum_itself_is_accepted():
    assert ZClip(warmup_steps=MAX).warmup_steps == MAX
    assert SpikeGuard(window=MAX, min_history=MAX).window == MAX


@pytest.mark.parametrize(
    "spec", ["maxhist:window=1e20", "autoclip:window=1e15", "zclip:warmup_steps=1e15", "spikeguard:window=1e9",
             "adagc:warmup=20000000"],
)
def test_spec_sizes_past_the_maximum_are_refused(spec):
    with pytest.raises(gradclip.ConfigError, match="2\\*\\*24"):
        gradclip.parse_policy(spec)


@pytest.mark.parametrize(
    ("spec", "field", "value"),
    [("maxhist:window=1e2", "window", 100), ("spikeguard:window=8.0,min_history=4", "window", 8),
     ("zclip:warmup_steps=1e1", "warmup_steps", 10), ("adagc:warmup=5.0", "warmup_steps", 5)],
)
def test_spec_integral_floats_are_accepted_everywhere(spec, field, value):
    got = getattr(gradclip.parse_policy(spec), field)
    assert got == value and type(got) is int


@pytest.mark.parametrize("spec", ["maxhist:window=2.5", "spikeguard:window=8.5", "zclip:w=1.5", "adagc:warmup=0.5",
                                  "autoclip:window=3.1"])
def test_spec_fractional_integers_are_refused(spec):
    with pytest.raises(gradclip.ConfigError, match="must be an int"):
        gradclip.parse_policy(spec)


@pytest.mark.parametrize(("cls", "field", "value", "extra"), FLOAT_PARAMS, ids=_ids(FLOAT_PARAMS))
@pytest.mark.parametrize("kind", [float, np.float64, np.float32, np.float16])
def test_float_parameters_take_numpy_floats(cls, field, value, extra, kind):
    policy = cls(**extra, **{field: kind(value)})
    assert policy == cls(**extra, **{field: value})
    assert type(getattr(policy, field)) is float
    assert gradclip.parse_policy(policy.spec()) == policy


@pytest.mark.parametrize(("cls", "field", "value", "extra"), FLOAT_PARAMS, ids=_ids(FLOAT_PARAMS))
@pytest.mark.parametrize("kind", [int, np.int64, np.int32])
def test_float_parameters_take_whole_numbers(cls, field, value, extra, kind):
    if field == "alpha":
        return  # 0 < alpha < 1 holds no whole number
    whole = {"beta": 0, "min": -1}.get(field, 1)
    policy = cls(**extra, **{field: kind(whole)})
    assert getattr(policy, field) == float(whole) and type(getattr(policy, field)) is float


@pytest.mark.parametrize(("cls", "field", "value", "extra"), FLOAT_PARAMS, ids=_ids(FLOAT_PARAMS))
@pytest.mark.parametrize("bad", [True, False, np.True_, "half", None, math.nan])  # norm_type takes "inf"
def test_float_parameters_refuse_booleans_strings_and_nan(cls, field, value, extra, bad):
    if bad is None and field in ("max_norm", "min", "max", "clip_value"):
        return  # None is meaningful there (no cap, no bound)
    with pytest.raises(gradclip.ConfigError):
        cls(**extra, **{field: bad})
