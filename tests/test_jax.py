"""gradclip.jax: the optax transformation, guard, stats and state dicts (jit, scan, vmap, resume).

Compiles are the cost here (about 0.3 s each on two CPU cores): shapes are tiny and each test
compiles one update per policy and reuses it. The 8-device test is in test_jax_devices.py.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from typing import ClassVar

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp

import gradclip
import gradclip.jax as gjax
from gradclip import _step
from gradclip._ops import NumpyOps
from gradclip._policies import registry

#: One spec per registered policy, with short warm-ups and windows so a few steps exercise them.
SPECS = {
    "none": "none",
    "norm": "norm:1.0",
    "pertensor": "pertensor:0.5",
    "value": "value:0.3",
    "autoclip": "autoclip:30,window=4,max_norm=none",
    "maxhist": "maxhist:2,window=3,max_norm=none",
    "zclip": "zclip:warmup_steps=2,max_norm=none",
    "adagc": "adagc:warmup_steps=2",
    "agc": "agc:0.05",
    "spikeguard": "spikeguard:window=4,min_history=2,sigma=1.0",
    "blockrms": "blockrms:0.5",
}
CHAINS = ["spikeguard:window=4,min_history=2,sigma=1.0,max_norm=none+zclip:warmup_steps=2", "zclip:warmup_steps=2+pertensor:0.5",
          "agc:0.05+norm:1.0", "value:min=-0.2,max=0.5"]
#: Scales of the gradients, step by step: a spike at step 4.
SCALES = [1.0, 2.0, 1.5, 40.0, 1.0]


_COMPILED: dict = {}


def _tx(spec: str, **options):
    """``(tx, jax.jit(tx.update))``, built once per spec and options: tests share the compiled step."""
    key = (spec, tuple(sorted(options.items())))
    if key not in _COMPILED:
        tx = gjax.transform(spec, **options)
        _COMPILED[key] = tx, jax.jit(tx.update)
    return _COMPILED[key]


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"dense": {"kernel": rng.normal(size=(3, 4)).astype(np.float32), "bias": np.zeros(4, np.float32) + 0.1},
            "out": rng.normal(size=(4,)).astype(np.float32)}


def _grads(params: dict, step: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(1000 * seed + step)
    return jax.tree.map(lambda p: (SCALES[step] * rng.normal(size=p.shape)).astype(np.float32), params)


def _numpy_run(spec: str, params: dict, steps: int, nonfinite: str = "propagate"):
    """The NumPy path (_step.run over NumpyOps) on the same leaves: (outputs, outcomes) per step."""
    policy = _step.fixed_shape(gradclip.parse_policy(spec))
    leaves = jax.tree.leaves(params)
    names = tuple(jax.tree_util.keystr(p, simple=True, separator=".") for p, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    state = policy.init_state(np.float32(0.0), NumpyOps, names)
    out = []
    with np.errstate(all="ignore"):
        for i in range(steps):
            g = jax.tree.leaves(_grads(params, i))
            new, outcome, state = _step.run(policy, g, state, NumpyOps, names=names, params=leaves, nonfinite=nonfinite,
                                            layout="jax")
            out.append((new, outcome))
    return out


def _close(a, b, rtol=2e-5, atol=1e-7):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


@pytest.mark.parametrize("spec", [SPECS.get(k, k) for k in sorted(registry())] + CHAINS)  # new ones: defaults
def test_every_policy_under_jit_matches_numpy(spec):
    params = _params()
    tx, update = _tx(spec)
    state = tx.init(params)
    expected = _numpy_run(spec, params, len(SCALES))
    for i, (want, outcome) in enumerate(expected):
        got, state = update(_grads(params, i), state, params)
        for g, w in zip(jax.tree.leaves(got), want):
            _close(g, w)
        s = gjax.stats(state)
        _close(s.norm, outcome.norm)
        _close(s.clipped_norm, outcome.clipped_norm, atol=1e-6)
        assert bool(s.clipped) == bool(outcome.clipped), (i, spec)
        assert bool(s.skipped) == bool(outcome.skipped), (i, spec)
        if outcome.coef is None:
            assert s.coef is None
        else:
            _close(s.coef, outcome.coef)
        if outcome.threshold is None or isinstance(outcome.threshold, tuple):
            assert s.threshold == outcome.threshold
        else:
            _close(s.threshold, outcome.threshold)
        _close(s.tensor_norms, outcome.tensor_norms)
    assert int(state.count) == len(SCALES)


def _loop(spec, params, steps, seed=0):
    tx, update = _tx(spec)
    state = tx.init(params)
    outs = []
    for i in range(steps):
        out, state = update(_grads(params, i, seed), state, params)
        outs.append(out)
    return outs, state


def test_scan_equals_python_loop_and_vmap_equals_seeds():
    spec = SPECS["zclip"]
    tx, _ = _tx(spec)
    params = _params()
    outs, state = _loop(spec, params, len(SCALES))
    grads = jax.tree.map(lambda *g: jnp.stack(g), *[_grads(params, i) for i in range(len(SCALES))])

    def body(state, g):
        out, state = tx.update(g, state, params)
        return state, out

    scanned_state, scanned = jax.jit(lambda s, g: jax.lax.scan(body, s, g))(tx.init(params), grads)
    for i, out in enumerate(outs):
        for a, b in zip(jax.tree.leaves(out), [x[i] for x in jax.tree.leaves(scanned)]):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(scanned_state)):
        np.testing.assert_allclose(a, b, rtol=1e-6)  # XLA may fuse a scan body differently: last-bit differences

    # vmap over seeds: a batch of states, one per seed, gives each seed's own run
    seeds = [0, 1]
    per_seed = [_loop(spec, params, 3, seed)[1] for seed in seeds]
    states = jax.vmap(tx.init)(jax.tree.map(lambda p: jnp.stack([p] * len(seeds)), params))
    vupdate = jax.jit(jax.vmap(tx.update, in_axes=(0, 0, None)))
    for i in range(3):
        g = jax.tree.map(lambda *x: jnp.stack(x), *[_grads(params, i, s) for s in seeds])
        _, states = vupdate(g, states, params)
    for k, seed_state in enumerate(per_seed):
        for a, b in zip([x[k] for x in jax.tree.leaves(states)], jax.tree.leaves(seed_state)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    batched = gjax.stats(states)
    assert np.shape(batched.norm) == (2,) and batched.names == ("dense.bias", "dense.kernel", "out")


def test_resume_from_state_dict_is_bitwise():
    for spec in [SPECS[k] for k in ("zclip", "autoclip", "spikeguard", "adagc")]:
        tx, update = _tx(spec)
        params = _params()
        state = tx.init(params)
        saved = None
        outs = []
        for i in range(len(SCALES)):
            out, state = update(_grads(params, i), state, params)
            outs.append(out)
            if i == 1:
                saved = pickle.loads(pickle.dumps(gjax.state_dict(state)))  # through a file, as a checkpoint
        resumed = gjax.load_state_dict(tx.init(params), saved)
        assert int(resumed.count) == 2
        for i in range(2, len(SCALES)):
            out, resumed = update(_grads(params, i), resumed, params)
            for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(outs[i])):
                np.testing.assert_array_equal(a, b)
        for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(state)):
            np.testing.assert_array_equal(a, b)


def test_whole_optimizer_state_checkpoint_resumes_bitwise():
    tx = gjax.guard(optax.adam(1e-2), "zclip:warmup_steps=2", max_consecutive=2)
    params = _params()
    update = jax.jit(tx.update)
    state = tx.init(params)
    for i in range(2):
        _, state = update(_grads(params, i), state, params)
    restored = pickle.loads(pickle.dumps(jax.device_get(state)))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    a, _ = update(_grads(params, 2), state, params)
    b, _ = update(_grads(params, 2), restored, params)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_guard_leaves_adam_untouched_on_a_skip():
    params = _params()
    tx = gjax.guard(optax.adam(1e-2), "norm:1.0")
    update = jax.jit(tx.update)
    state = tx.init(params)
    _, state = update(_grads(params, 0), state, params)
    bad = _grads(params, 1)
    bad["out"][1] = np.nan
    updates, after = update(bad, state, params)
    assert all(not np.any(u) for u in jax.tree.leaves(updates))
    for a, b in zip(jax.tree.leaves(after.inner), jax.tree.leaves(state.inner)):
        np.testing.assert_array_equal(a, b)  # moments and count, bitwise
    s = gjax.stats(after)
    assert isinstance(s, gjax.GuardStats) and isinstance(s, gradclip.ClipStats)
    assert bool(s.skipped) and not bool(s.clipped) and bool(s.nonfinite) and s.offender_names == ("out",)
    assert (s.total_skips, s.consecutive_skips, s.give_ups) == (1, 1, 0)
    assert int(after.clip.stats.first_nonfinite) == 2
    # the next finite step goes on from the state before the skip
    good = _grads(params, 2)
    u1, _ = update(good, after, params)
    u2, _ = update(good, state, params)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
        np.testing.assert_array_equal(a, b)


def test_zeroed_updates_are_not_a_skip():
    params = _params()
    tx = gjax.guard(optax.adam(1e-2), "norm:1.0", nonfinite="zero")
    state = tx.init(params)
    bad = _grads(params, 0)
    bad["out"][0] = np.inf
    _, after = jax.jit(tx.update)(bad, state, params)
    assert int(after.inner[0].count) == 1  # adam stepped on zeros
    s = gjax.stats(after)
    assert not bool(s.skipped) and bool(s.clipped) and float(s.coef) == 0.0 and s.total_skips == 0


def test_guard_skips_spikes_and_gives_up_explicitly():
    params = {"w": np.ones(3, np.float32)}
    tx = gjax.guard(optax.sgd(1.0), "spikeguard:window=8,min_history=2,sigma=1.0,max_norm=none", max_consecutive=2)
    update = jax.jit(tx.update)
    state = tx.init(params)
    flags = []
    for scale in [1.0, 1.1, 0.9, 100.0, 100.0, 100.0, 1.0]:
        updates, state = update({"w": np.full(3, scale, np.float32)}, state, params)
        s = gjax.stats(state)
        flags.append((bool(s.skipped), bool(s.gave_up), float(updates["w"][0])))
        assert bool(s.clipped) == bool(s.skipped) and (float(s.clipped_norm) == 0.0) == bool(s.skipped)
    assert [f[:2] for f in flags[3:6]] == [(True, False), (True, False), (False, True)]
    assert flags[3][2] == 0.0 and flags[5][2] == -100.0  # the give-up applies the (unclipped: max_norm=none) update
    assert (s.total_skips, s.give_ups, s.consecutive_skips) == (2, 1, 0)
    assert gjax.clipped is gjax.guard


def test_transform_skip_outputs_zeros_and_keeps_policy_state():
    params = _params()
    tx = gjax.transform("zclip:warmup_steps=2", nonfinite="skip")
    state = tx.init(params)
    bad = _grads(params, 0)
    bad["dense"]["kernel"][0, 0] = np.nan
    out, after = jax.jit(tx.update)(bad, state, params)
    assert all(not np.any(u) for u in jax.tree.leaves(out))
    s = gjax.stats(after)
    assert bool(s.skipped) and s.offender_names == ("dense.kernel",) and s.offenders[0].shape == (3, 4)
    for k in state.policy:
        np.testing.assert_array_equal(after.policy[k], state.policy[k])


def test_stats_found_in_any_optax_state_and_names():
    params = {"enc": [np.ones(2, np.float32), None, np.ones((2, 2), np.float32)], "head": np.ones(1, np.float32)}
    grads = {"enc": [np.ones(2, np.float32), None, np.ones((2, 2), np.float32)], "head": np.ones(1, np.float32)}
    inner = optax.chain(gjax.transform("pertensor:1.0"), optax.sgd(0.1))
    injected = optax.inject_hyperparams(lambda learning_rate: optax.chain(gjax.transform("pertensor:1.0"),
                                                                          optax.sgd(learning_rate)))(learning_rate=0.1)
    for opt in [inner, optax.chain(optax.identity(), optax.masked(inner, {"enc": [True, None, True], "head": True})),
                injected]:
        state = opt.init(params)
        _, state = jax.jit(opt.update)(grads, state, params, loss=1.0)  # extra args are accepted and ignored
        s = gjax.stats(state)
        assert s.names == ("enc.0", "enc.2", "head")
        assert s.coef is None and float(s.threshold) == 1.0
        _close(s.tensor_norms, [np.sqrt(2), 2.0, 1.0])
    with pytest.raises(gradclip.ConfigError, match="holds none"):
        gjax.stats(optax.sgd(0.1).init(params))
    two = optax.chain(gjax.transform("none"), gjax.transform("none")).init(params)
    with pytest.raises(gradclip.ConfigError, match="found 2"):
        gjax.stats(two)


def test_stats_of_an_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 2, rngs=rngs)

    model = Model(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.chain(gjax.transform("zclip:warmup_steps=2"), optax.adam(1e-2)), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        opt.update(model, nnx.grad(lambda m: (m.lin(jnp.ones((1, 3))) ** 2).sum())(model))

    step(model, opt)
    s = gjax.stats(opt.opt_state)
    assert s.names == ("lin.bias", "lin.kernel") and float(s.norm) > 0
    assert gjax.state_dict(opt.opt_state)["steps"] == 1


def test_threshold_kinds_and_value_pairs():
    params = {"w": np.array([1.0, -1.0], np.float32)}
    for spec, want in [("value:min=-0.2,max=0.5", (-0.2, 0.5)), ("value:max=0.5", (None, 0.5)), ("none", None)]:
        tx = gjax.transform(spec)
        _, state = jax.jit(tx.update)({"w": np.array([1.0, -1.0], np.float32)}, tx.init(params))
        got = gjax.stats(state).threshold
        assert got == want if want is None else np.allclose([np.nan if v is None else v for v in got],
                                                            [np.nan if v is None else v for v in want], equal_nan=True)


def _autoclip_thresholds(dtype):
    """(threshold, numpy.percentile of the last 4 measured norms) per step, AutoClip(window=None), history=4."""
    params = {"w": np.ones(3, dtype)}
    tx = gjax.transform(gradclip.AutoClip(percentile=30, max_norm=None), history=4)
    update = jax.jit(tx.update)
    state = tx.init(params)
    assert state.policy["sorted"].shape == (1, 4)
    rng = np.random.default_rng(3)
    norms, pairs = [], []
    for _ in range(7):
        _, state = update({"w": rng.uniform(0.1, 5.0, size=3).astype(dtype)}, state, params)
        s = gjax.stats(state)
        norms.append(s.norm)
        pairs.append((s.threshold, np.percentile(np.asarray(norms[-4:], np.float64), 30)))
    return pairs


def test_autoclip_thresholds_equal_numpy_percentile_on_the_bounded_history():
    # Without jax_enable_x64 the percentile's arithmetic is float32 (NumPy and torch use float64):
    # equal to float32 rounding.
    for got, want in _autoclip_thresholds(np.float32):
        _close(got, want, rtol=1e-6)
    # With x64 (float64 leaves, float64 norms and arithmetic): exactly numpy.percentile.
    with jax.enable_x64(True):
        for got, want in _autoclip_thresholds(np.float64):
            assert got.dtype == np.float64 and float(got) == want


def test_norms_accumulate_in_float32_for_half_precision_leaves():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    tx = gjax.transform("norm:1.0")
    g = {"w": jnp.array([300.0, 400.0, 0.0, 0.0], jnp.bfloat16)}
    out, state = jax.jit(tx.update)(g, tx.init(params))
    assert state.stats.norm.dtype == jnp.float32 and float(state.stats.norm) == 500.0
    assert out["w"].dtype == jnp.bfloat16
    with pytest.raises(gradclip.ConfigError, match="jax_enable_x64"):
        gjax.transform("norm:1.0", norm_dtype=jnp.float64).init(params)


def test_errors_are_raised_at_build_init_or_trace():
    params = {"w": np.ones(2, np.float32)}
    with pytest.raises(gradclip.ConfigError, match="Unknown|unknown"):
        gjax.transform("nope:1")
    for kwargs in [{"nonfinite": "maybe"}, {"history": 0}, {"norm_dtype": "int32"}]:
        with pytest.raises(gradclip.ConfigError):
            gjax.transform("norm:1.0", **kwargs)
    with pytest.raises(gradclip.ConfigError):
        gjax.guard(optax.sgd(1.0), "norm:1.0", max_consecutive=-1)
    with pytest.raises(gradclip.InputTypeError, match="'step'"):
        gjax.transform("norm:1.0").init({"w": np.ones(2, np.float32), "step": np.int32(0)})
    tx = gjax.transform("norm:1.0")
    state = tx.init(params)
    with pytest.raises(gradclip.ConfigError, match="expected 1 leaves"):
        jax.jit(tx.update)({"v": np.ones(2, np.float32)}, state)
    with pytest.raises(gradclip.ConfigError, match="shape"):
        jax.jit(tx.update)({"w": np.ones(3, np.float32)}, state)
    agc = gjax.transform("agc:0.01")
    with pytest.raises(ValueError, match="requires the current value of parameters"):
        jax.jit(agc.update)(params, agc.init(params))
    err = gjax.transform("norm:1.0", nonfinite="error")
    with pytest.raises(gradclip.ConfigError, match="traced"):
        jax.jit(err.update)(params, err.init(params))
    with pytest.raises(gradclip.NonFiniteError, match="w shape=\\(2,\\) nan=1"):
        err.update({"w": np.array([np.nan, 1.0], np.float32)}, err.init(params))
    _, ok = err.update(params, err.init(params))
    assert int(ok.count) == 1


@dataclasses.dataclass(frozen=True)
class _LossPolicy(gradclip.NoClip):
    """A policy that reads the loss (none ships yet): the hook ``update(..., loss=...)``."""

    needs_loss: ClassVar[bool] = True


def test_a_policy_that_reads_the_loss_requires_it():
    params = {"w": np.ones(2, np.float32)}
    tx = gjax.transform(_LossPolicy())
    with pytest.raises(gradclip.ConfigError, match="loss=loss"):
        tx.update(params, tx.init(params))
    _, state = jax.jit(tx.update)(params, tx.init(params), loss=1.0)
    assert int(state.count) == 1


def test_state_dict_errors_name_the_problem():
    params = {"w": np.ones(2, np.float32)}
    tx = gjax.transform("zclip:warmup_steps=2")
    state = tx.init(params)
    sd = gjax.state_dict(state)
    with pytest.raises(gradclip.StateDictError, match="saved with policy 'zclip:warmup_steps=2'"):
        gjax.load_state_dict(gjax.transform("zclip").init(params), sd)
    bad = {**sd, "state": {**sd["state"], "mu": np.float32(np.nan)}}
    with pytest.raises(gradclip.StateDictError, match="'mu': found nan"):
        gjax.load_state_dict(state, bad)
    with pytest.raises(gradclip.StateDictError, match="'version'"):
        gjax.load_state_dict(state, {**sd, "version": 99})
    rows = gjax.transform("autoclip:window=3,scope=tensor")
    two = rows.init({"a": np.ones(1, np.float32), "b": np.ones(1, np.float32)})
    with pytest.raises(gradclip.StateDictError, match="one row per leaf"):
        gjax.load_state_dict(rows.init(params), gjax.state_dict(two))
    with pytest.warns(UserWarning, match="reset the state arrays"):
        loaded = gjax.load_state_dict(gjax.transform("zclip:warmup_steps=3").init(params), sd, strict=False)
    assert loaded.policy["warm"].shape == (3,)


def test_empty_tree_passes_through():
    tx = gjax.transform("zclip")
    state = tx.init({})
    out, state = jax.jit(tx.update)({}, state)
    assert out == {} and float(gjax.stats(state).norm) == 0.0


def test_monitor_writes_jsonl_for_a_jax_loop(tmp_path):
    path = tmp_path / "grads.jsonl"
    params = _params()
    tx = optax.chain(gjax.transform("norm:1.0"), optax.sgd(0.1))
    update = jax.jit(tx.update)
    state = tx.init(params)
    monitor = gradclip.Monitor(sinks=[f"jsonl:{path}"], framework="jax")
    norms = []
    for i in range(3):
        g = _grads(params, i)
        if i == 2:
            g["out"][0] = np.nan
        _, state = update(g, state, params)
        s = gjax.stats(state)
        norms.append(float(s.norm))
        monitor.step(clip_stats=s, loss=1.0 / (i + 1), lr=0.1)
    monitor.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [r for r in records if "norm" in r]
    assert len(steps) == 3
    _close([r["norm"] for r in steps[:2]], norms[:2], rtol=1e-6)
    assert steps[2]["nonfinite"] is True
    assert any("out" in json.dumps(r) for r in records[-2:])
    assert records[0].get("framework") == "jax"


TORCH_SPECS = [SPECS[k] for k in ("norm", "zclip", "autoclip", "spikeguard", "adagc")] + [CHAINS[0], CHAINS[1]]


@pytest.mark.parametrize("spec", TORCH_SPECS)
def test_same_numbers_as_torch_and_state_moves_both_ways(spec):
    torch = pytest.importorskip("torch")
    import gradclip.torch as gct

    params = _params()
    names = ["dense.bias", "dense.kernel", "out"]  # the JAX leaf order and names
    tensors = [torch.nn.Parameter(torch.from_numpy(jax.tree.leaves(params)[i].copy())) for i in range(3)]
    clipper = gct.Clipper(spec)
    tx, update = _tx(spec)
    state = tx.init(params)

    def torch_step(i, clipper):
        for t, g in zip(tensors, jax.tree.leaves(_grads(params, i))):
            t.grad = torch.from_numpy(g.copy())
        stats = clipper.step(list(zip(names, tensors)))
        return stats, [t.grad.numpy() for t in tensors]

    for i in range(3):
        ts, tg = torch_step(i, clipper)
        out, state = update(_grads(params, i), state, params)
        js = gjax.stats(state)
        _close(js.norm, float(ts.norm), rtol=1e-6)
        _close(js.clipped_norm, float(ts.clipped_norm), rtol=1e-6, atol=1e-6)
        assert bool(js.skipped) == bool(ts.skipped)
        for a, b in zip(jax.tree.leaves(out), tg):
            _close(a, b, rtol=1e-6, atol=1e-7)
    # torch -> JAX and JAX -> torch, then one more step each: the same numbers again
    from_torch = gjax.load_state_dict(tx.init(params), clipper.state_dict())
    to_torch = gct.Clipper(spec)
    sd = gjax.state_dict(state)
    to_torch.load_state_dict(sd)  # NumPy arrays load as they are
    assert all(v.flags.writeable for v in sd["state"].values())
    assert all(isinstance(v, torch.Tensor) for v in to_torch.state_dict()["state"].values())
    for i in range(3, len(SCALES)):
        ts, tg = torch_step(i, to_torch)
        out, from_torch = update(_grads(params, i), from_torch, params)
        js = gjax.stats(from_torch)
        _close(js.norm, float(ts.norm), rtol=1e-6)
        _close(js.clipped_norm, float(ts.clipped_norm), rtol=1e-6, atol=1e-6)
        if ts.threshold is not None:
            _close(js.threshold, np.asarray(ts.threshold), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(out), tg):
            _close(a, b, rtol=1e-6, atol=1e-7)


def test_equinox_filtered_model_names_its_leaves_like_torch():
    eqx = pytest.importorskip("equinox")
    model = eqx.nn.MLP(3, 2, width_size=4, depth=1, key=jax.random.key(0))
    params = eqx.filter(model, eqx.is_inexact_array)  # None where a field is not an array
    tx = optax.chain(gjax.transform("adagc:warmup_steps=1"), optax.sgd(0.1))
    state = tx.init(params)

    @eqx.filter_jit
    def step(model, state):
        grads = eqx.filter_grad(lambda m: jnp.sum(m(jnp.ones(3)) ** 2))(model)
        updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state

    model, state = step(model, state)
    s = gjax.stats(state)
    assert s.names == ("layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias")
    assert sorted(gjax.state_dict(state)["state"]) == sorted(["step"] + [f"gamma.{n}" for n in s.names])
