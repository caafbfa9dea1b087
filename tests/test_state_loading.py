"""Loading a saved clipper state is strict and atomic: everything is checked, then assigned."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import gradclip
import gradclip.torch as gct
from gradclip._policies import _statecheck

SHAPES = [(3,), (2, 2)]

# spec -> (a key holding norm statistics, a count or index key and a value out of its range)
POLICIES = {
    "zclip:warmup_steps=3": ("mu", "count", 4.0),
    "autoclip:p=10": ("sorted", "count", 99),
    "autoclip:p=10,window=4": ("ring", "head", 4),
    "autoclip:p=10,window=4,scope=tensor": ("sorted", "count", 5),
    "adagc:warmup_steps=2": ("gamma.p0", "step", -1.0),
    "spikeguard:window=4,min_history=2": ("norms", "pos", 4.0),
    "maxhist:window=4": ("ring", "count", 5.0),
    "spikeguard:window=4,min_history=2,max_norm=None+zclip:warmup_steps=3": ("1.mu", "0.count", 7.0),
}


def _params(n: int = len(SHAPES), seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i, shape in enumerate((SHAPES * 2)[:n]):
        p = torch.nn.Parameter(torch.zeros(shape))
        p.grad = torch.randn(shape, generator=gen) * (1 + i)
        out.append((f"p{i}", p))
    return out


def _trained(spec: str, steps: int = 6, seed: int = 0, n: int = len(SHAPES)) -> gct.Clipper:
    clipper = gct.Clipper(spec)
    for t in range(steps):
        clipper.step(_params(n, seed * 100 + t))
    return clipper


def _snapshot(clipper: gct.Clipper) -> dict:
    sd = clipper.state_dict()
    return {"steps": sd["steps"], "state": {k: v.clone() for k, v in sd["state"].items()}}


def _assert_unchanged(clipper: gct.Clipper, before: dict) -> None:
    now = _snapshot(clipper)
    assert now["steps"] == before["steps"]
    assert sorted(now["state"]) == sorted(before["state"])
    for k, v in before["state"].items():
        assert torch.equal(now["state"][k], v), k


def _float_key(state: dict) -> str:
    return next(k for k, v in sorted(state.items()) if v.is_floating_point())


def _corrupt(kind: str, spec: str, sd: dict) -> str:
    """Corrupt ``sd`` in place the way ``kind`` says; return the key the error must name."""
    stat, index, bad_index = POLICIES[spec]
    state = sd["state"]
    if kind == "missing key":
        key = next(k for k in sorted(state) if not k.startswith("gamma."))  # AdaGC's gamma.* are optional
        del state[key]
    elif kind == "extra key":
        key = "bogus"
        state[key] = torch.zeros(())
    elif kind == "wrong shape":
        key = stat
        state[key] = torch.zeros((*state[key].shape, 2), dtype=state[key].dtype)
    elif kind == "wrong dtype":
        key = _float_key(state)
        state[key] = state[key].to(torch.int32)
    elif kind == "nan statistic":
        key = stat
        state[key] = state[key].clone()
        state[key].view(-1)[0] = math.nan
    elif kind == "index out of range":
        key = index
        state[key] = torch.tensor(bad_index, dtype=state[key].dtype)
    elif kind == "wrong version":
        key = "version"
        sd[key] = 2
    elif kind == "another policy's state":
        other = _trained("spikeguard:window=4,min_history=2" if spec.startswith("zclip") else "zclip", 2)
        sd["state"] = other.state_dict()["state"]
        key = min(set(sd["state"]) ^ set(state))
    else:
        raise AssertionError(kind)
    return key


KINDS = ["missing key", "extra key", "wrong shape", "wrong dtype", "nan statistic", "index out of range",
         "wrong version", "another policy's state"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spec", list(POLICIES))
def test_a_bad_state_is_refused_and_nothing_is_loaded(spec, kind):
    sd = _trained(spec).state_dict()
    key = _corrupt(kind, spec, sd)
    target = _trained(spec, steps=2, seed=1)
    before = _snapshot(target)
    with pytest.raises(gradclip.StateDictError, match=repr(key) if kind != "wrong version" else "'version'") as info:
        target.load_state_dict(sd)
    assert isinstance(info.value, ValueError)
    _assert_unchanged(target, before)


@pytest.mark.parametrize("key, value, expected", [
    ("mu", math.nan, "expected a finite value >= 0"),
    ("var", -1.0, "expected a finite value >= 0"),
    ("count", 4.0, r"<= 3 \(warmup_steps=3\)"),
    ("count", 1.5, "a whole value"),
])
def test_zclip_statistics_are_checked(key, value, expected):
    sd = _trained("zclip:warmup_steps=3").state_dict()
    sd["state"][key] = torch.tensor(value)
    target = gct.Clipper("zclip:warmup_steps=3")
    with pytest.raises(gradclip.StateDictError, match=expected) as info:
        target.load_state_dict(sd)
    assert f"'{key}': found {value:g}" in str(info.value)
    assert target.steps == 0 and target.state_dict()["state"] == {}


def test_a_state_from_a_model_with_fewer_tensors_is_refused_at_the_first_step():
    spec = "autoclip:p=10,window=4,scope=tensor"
    sd = _trained(spec, n=2).state_dict()
    target = gct.Clipper(spec)
    target.load_state_dict(sd)  # the number of tensors is only known at a step
    params = _params(3)
    grads = [p.grad.clone() for _, p in params]
    with pytest.raises(gradclip.StateDictError, match=r"'sorted': found 2 rows .* expected 3"):
        target.step(params)
    for (_, p), g in zip(params, grads):
        assert torch.equal(p.grad, g)
    assert target.steps == sd["steps"]
    target.step(_params(2))  # the right model still resumes


def test_a_state_saved_in_float64_is_refused_by_a_float32_step():
    sd = gct.Clipper("zclip:warmup_steps=2").state_dict()
    clipper = gct.Clipper("zclip:warmup_steps=2")
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    p.grad = torch.ones(3, dtype=torch.float64)
    clipper.step([p])
    sd = clipper.state_dict()
    target = gct.Clipper("zclip:warmup_steps=2")
    target.load_state_dict(sd)
    with pytest.raises(gradclip.StateDictError, match="dtype float64, expected float32"):
        target.step(_params())
    gct.Clipper("zclip:warmup_steps=2", norm_dtype=torch.float64).load_state_dict(sd)


def test_state_dict_has_a_version_and_version_1_is_the_format_without_it():
    clipper = _trained("zclip:warmup_steps=3")
    sd = clipper.state_dict()
    assert sd["version"] == _statecheck.FORMAT_VERSION == 1
    old = {k: v for k, v in sd.items() if k != "version"}
    fresh = gct.Clipper("zclip:warmup_steps=3")
    fresh.load_state_dict(old)
    assert fresh.state_dict()["steps"] == sd["steps"]
    for k, v in sd["state"].items():
        assert torch.equal(fresh.state_dict()["state"][k], v)


@pytest.mark.parametrize("spec", list(POLICIES))
def test_a_state_saved_before_the_first_step_loads(spec):
    saved = gct.Clipper(spec).state_dict()
    target = gct.Clipper(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target.load_state_dict(saved)
        target.load_state_dict(saved, strict=False)
    target.step(_params())


def test_unknown_top_level_keys_are_refused():
    sd = gct.Clipper("norm:1.0").state_dict()
    with pytest.raises(gradclip.StateDictError, match="'optimizer'"):
        gct.Clipper("norm:1.0").load_state_dict({**sd, "optimizer": {}})


def test_strict_false_keeps_the_statistics_that_fit_and_names_the_reset_ones():
    saved = _trained("zclip:warmup_steps=3").state_dict()
    same_shape = gct.Clipper("zclip:warmup_steps=3,alpha=0.9,z_thresh=3.0")
    with pytest.raises(gradclip.StateDictError, match="strict=False"):
        same_shape.load_state_dict(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same_shape.load_state_dict(saved, strict=False)  # every array fits: nothing reset, no warning
    for k, v in saved["state"].items():
        assert torch.equal(same_shape.state_dict()["state"][k], v)
    longer = gct.Clipper("zclip:warmup_steps=5")
    with pytest.warns(UserWarning, match=r"\['count', 'warm'\]"):
        longer.load_state_dict(saved, strict=False)
    state = longer.state_dict()["state"]
    assert torch.equal(state["mu"], saved["state"]["mu"]) and torch.equal(state["var"], saved["state"]["var"])
    assert state["warm"].shape == (5,) and float(state["count"]) == 0.0
    longer.step(_params())


def test_strict_false_resets_invalid_values_and_refuses_another_class():
    saved = _trained("autoclip:p=10,window=4").state_dict()
    saved["state"]["sorted"][0, 0] = math.nan
    target = gct.Clipper("autoclip:p=20,window=4")
    with pytest.warns(UserWarning, match=r"\['count', 'head', 'ring', 'sorted'\]"):
        target.load_state_dict(saved, strict=False)
    assert int(target.state_dict()["state"]["count"]) == 0
    target.step(_params())
    with pytest.raises(gradclip.StateDictError, match="saved with policy"):
        gct.Clipper("zclip").load_state_dict(saved, strict=False)


def test_strict_false_keeps_a_chain_members_state():
    spec = "spikeguard:window=4,min_history=2,max_norm=None+zclip:warmup_steps=3"
    saved = _trained(spec).state_dict()
    target = gct.Clipper("spikeguard:window=6,min_history=2,max_norm=None+zclip:warmup_steps=3,alpha=0.5")
    with pytest.warns(UserWarning, match=r"\['0.count', '0.norms', '0.pos'\]"):
        target.load_state_dict(saved, strict=False)
    assert torch.equal(target.state_dict()["state"]["1.mu"], saved["state"]["1.mu"])


def _opt(spec: str = "zclip:warmup_steps=3", steps: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = gct.clipped(torch.optim.AdamW(model.parameters(), lr=0.01), spec)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    return opt


def _opt_snapshot(opt) -> dict:
    sd = opt.state_dict()
    return {"exp_avg": sd["state"][0]["exp_avg"].clone(), **_snapshot(opt.clipper)}


def test_clipped_optimizer_a_bad_optimizer_part_leaves_the_clipper_unchanged():
    saved = _opt().state_dict()
    saved["param_groups"][0]["params"] = saved["param_groups"][0]["params"][:1]  # one parameter fewer
    target = _opt(steps=1, seed=1)
    before = _snapshot(target.clipper)
    with pytest.raises(ValueError, match="size"):
        target.load_state_dict(saved)
    _assert_unchanged(target.clipper, before)


def test_clipped_optimizer_a_bad_clipper_part_leaves_the_optimizer_unchanged():
    saved = _opt().state_dict()
    saved["gradclip"]["state"]["var"] = torch.tensor(-1.0)
    target = _opt(steps=1, seed=1)
    before = _opt_snapshot(target)
    with pytest.raises(gradclip.StateDictError, match="'var'"):
        target.load_state_dict(saved)
    after = _opt_snapshot(target)
    assert torch.equal(after["exp_avg"], before["exp_avg"])
    _assert_unchanged(target.clipper, before)
    assert saved["gradclip"]["state"]["var"] == -1  # the caller's dict is not changed


def test_clipped_optimizer_round_trip_and_plain_optimizer_keeps_the_key():
    opt = _opt()
    saved = opt.state_dict()
    target = _opt(steps=1, seed=1)
    target.load_state_dict(saved)
    _assert_unchanged(target.clipper, _snapshot(opt.clipper))
    plain = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    plain.load_state_dict(saved)  # torch ignores "gradclip"; it stays in the dict for a Clipper
    clipper = gct.Clipper("zclip:warmup_steps=3")
    clipper.load_state_dict(saved["gradclip"])
    _assert_unchanged(clipper, _snapshot(opt.clipper))


def test_tensorflow_clipper_checks_a_restored_checkpoint(tmp_path):
    tf = pytest.importorskip("tensorflow")
    import gradclip.tensorflow as gtf

    w = tf.Variable([1.0, 2.0], name="w")
    saved = gtf.Clipper("zclip:warmup_steps=2")
    for s in [1.0, 2.0, 3.0]:
        saved([tf.constant([s, s])], [w])
    saved.state["mu"].assign(math.nan)
    path = tf.train.Checkpoint(clipper=saved).save(str(tmp_path / "ckpt"))
    fresh = gtf.Clipper("zclip:warmup_steps=2")
    tf.train.Checkpoint(clipper=fresh).restore(path)  # deferred: restored when the variables are made
    with pytest.raises(gradclip.StateDictError, match="'mu': found nan"):
        fresh([tf.constant([1.0, 1.0])], [w])
    assert float(fresh.state["mu"].numpy()) == 0.0  # the bad values are not kept
    ran = gtf.Clipper("zclip:warmup_steps=2")
    ran([tf.constant([1.0, 1.0])], [w])
    tf.train.Checkpoint(clipper=ran).restore(path)
    with pytest.raises(gradclip.StateDictError, match="'mu'"):
        ran.validate()


def test_keras_checks_gradclip_state_before_loading_the_optimizer():
    keras = pytest.importorskip("keras")
    import numpy as np

    import gradclip.keras as gck

    opt = gck.wrap(keras.optimizers.SGD(0.1), "zclip:warmup_steps=2")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=opt, loss="mse")
    model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=3, verbose=0)
    store = {str(i): np.array(keras.ops.convert_to_numpy(v.value)) for i, v in enumerate(opt.variables)}
    before = {k: v.copy() for k, v in store.items()}
    mu = next(i for i, v in enumerate(opt.variables) if v is opt._gc.state["mu"])
    store[str(mu)] = np.asarray(math.nan, store[str(mu)].dtype)
    store[str(next(i for i, v in enumerate(opt.variables) if v is opt._gc.state["warm"]))] += 1.0
    with pytest.raises(gradclip.StateDictError, match="'mu': found nan"):
        opt.load_own_variables(store)
    for i, v in enumerate(opt.variables):  # nothing assigned
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v.value), before[str(i)])
    store[str(mu)] = before[str(mu)]
    opt.load_own_variables(store)  # a good state loads
