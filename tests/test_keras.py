"""gradclip.keras on the Keras backend of this process (KERAS_BACKEND; tests/conftest.py defaults it to
tensorflow). tests/test_keras_backends.py runs this module again under the other backends."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import gradclip  # noqa: E402
import gradclip.keras as gck  # noqa: E402
from gradclip import _reference as ref  # noqa: E402

BACKEND = keras.backend.backend()
RNG = np.random.default_rng(0)
X = RNG.standard_normal((32, 6)).astype(np.float32)
Y = (X @ RNG.standard_normal((6, 2)) * 30).astype(np.float32)


def _model(seed=0, bias=True):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="tanh", use_bias=bias),
                             keras.layers.Dense(2, use_bias=bias)])


def _train(opt, steps=6, model=None, x=X, y=Y):
    model = model or _model()
    model.compile(optimizer=opt, loss="mse")
    for i in range(steps):
        model.train_on_batch(x[i % 4 * 8:(i % 4 + 1) * 8], y[i % 4 * 8:(i % 4 + 1) * 8])
    return model


def _same_weights(a, b, rtol=1e-5, atol=1e-6):
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=rtol, atol=atol)


PARITY = [
    (lambda c: gradclip.GlobalNorm(c, semantics="keras"), "global_clipnorm"),
    (lambda c: gradclip.PerTensorNorm(c, semantics="keras"), "clipnorm"),
    (lambda c: gradclip.Value(c), "clipvalue"),
]


@pytest.mark.parametrize("make,kwarg", PARITY, ids=["global_clipnorm", "clipnorm", "clipvalue"])
@pytest.mark.parametrize("opt_cls", [keras.optimizers.Adam, keras.optimizers.SGD])
@pytest.mark.parametrize("c", [0.5, 5.0])
def test_parity_with_keras_clipping(make, kwarg, opt_cls, c):
    ours = _train(gck.wrap(opt_cls(0.01), make(c)))
    theirs = _train(opt_cls(0.01, **{kwarg: c}))
    _same_weights(ours, theirs)


def test_parity_under_fit_and_gradient_accumulation():
    ours = _model()
    ours.compile(optimizer=gck.wrap(keras.optimizers.SGD(0.01, gradient_accumulation_steps=2),
                                    gradclip.GlobalNorm(1.0, semantics="keras")), loss="mse")
    ours.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    theirs = _model()
    theirs.compile(optimizer=keras.optimizers.SGD(0.01, gradient_accumulation_steps=2, global_clipnorm=1.0), loss="mse")
    theirs.fit(X, Y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    _same_weights(ours, theirs)


def test_accumulation_clips_once_per_update():
    opt = gck.wrap(keras.optimizers.SGD(0.01, gradient_accumulation_steps=4), gradclip.AutoClip(50, window=10))
    _train(opt, steps=8)
    state = {k: keras.ops.convert_to_numpy(v) for k, v in opt._gc.state.items()}
    count = [v for v in state.values() if v.dtype.kind == "i" and v.ndim == 0]
    assert 2 in [int(c) for c in count]  # 8 micro-batches = 2 updates = 2 recorded norms


def _linear_grad(w, x, y):
    """Gradient of keras' mean squared error for y_hat = x @ w (no bias), in float64."""
    err = x.astype(np.float64) @ w - y
    return 2.0 * x.T.astype(np.float64) @ err / err.size


@pytest.mark.parametrize("policy", [gradclip.GlobalNorm(1.0), gradclip.GlobalNorm(2.0, norm_type=1.0),
                                    gradclip.Value(0.3), gradclip.AGC(0.05)], ids=str)
def test_one_sgd_step_matches_float64_oracle(policy):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, use_bias=False)])
    w0 = model.get_weights()[0].astype(np.float64)
    model.compile(optimizer=gck.wrap(keras.optimizers.SGD(0.1), policy), loss="mse")
    model.train_on_batch(X[:8], Y[:8])
    g = _linear_grad(w0, X[:8], Y[:8])
    if isinstance(policy, gradclip.Value):
        clipped = ref.clip_value([g], -0.3, 0.3)[0]
    elif isinstance(policy, gradclip.AGC):
        clipped = ref.agc(g, w0, 0.05, 1e-3, axes=(0,))  # Keras kernels [in, out]: one unit per column
    else:
        clipped = ref.clip_global_norm([g], policy.max_norm, policy.norm_type)[0][0]
    np.testing.assert_allclose(model.get_weights()[0], w0 - 0.1 * clipped, rtol=1e-4, atol=1e-6)
    stats = model.optimizer.gradclip_stats()
    assert stats.norm == pytest.approx(ref.global_norm([g], policy.measure_norm_type), rel=1e-4)
    assert len(stats.names) == 1 and re.fullmatch(r"sequential\w*/dense\w*/kernel", stats.names[0])


def test_custom_loop_with_optimizer_apply():
    """``optimizer.apply(grads, variables)`` in a hand-written loop clips like fit does."""
    var = keras.Variable(np.zeros((6, 2), np.float32), name="w")
    opt = gck.wrap(keras.optimizers.SGD(0.5), gradclip.GlobalNorm(1.0), nonfinite="skip")
    w = np.zeros((6, 2))
    for i in range(3):
        g = _linear_grad(w, X[:8], Y[:8] * (i + 1))
        opt.apply([keras.ops.convert_to_tensor(g.astype(np.float32))], [var])
        w = w - 0.5 * ref.clip_global_norm([g], 1.0)[0][0]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(var), w, rtol=1e-5, atol=1e-6)
    assert opt.gradclip_stats().names == ("w",) and opt.gradclip_stats().clipped
    opt.apply([keras.ops.convert_to_tensor(np.full((6, 2), np.nan, np.float32))], [var])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(var), w, rtol=1e-5)  # skipped
    assert opt.gradclip_stats().skipped and opt.gradclip_stats().offender_names == ("w",)


@pytest.mark.parametrize("spec", ["zclip:warmup_steps=3", "autoclip:p=20", "adagc:warmup_steps=2",
                                  "spikeguard:window=8,min_history=3,sigma=3+norm:5.0", "maxhist:2,window=4", "agc:0.05+zclip",
                                  "autoclip:p=50,window=3", "autoclip:p=40,window=3,scope=tensor"])
def test_adaptive_policies_match_the_numpy_step(spec):
    """Every policy in a wrapped optimizer follows gradclip's NumPy run of the same gradients."""
    from gradclip import _step
    from gradclip._ops import NumpyOps

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, use_bias=False)])
    opt = gck.wrap(keras.optimizers.SGD(0.05), spec, history=64)
    model.compile(optimizer=opt, loss="mse")
    policy = _step.fixed_shape(gradclip.parse_policy(spec), 64)
    w = model.get_weights()[0].astype(np.float64)
    state, _ = _step.initial_state(policy, [w.shape], tuple(v.path for v in model.trainable_variables), np.float32)
    names = tuple(v.path for v in model.trainable_variables)
    for i in range(8):
        sl = slice(i % 4 * 8, (i % 4 + 1) * 8)
        scale = 40.0 if i == 6 else 1.0  # one spike
        model.train_on_batch(X[sl], Y[sl] * scale)
        g = _linear_grad(w, X[sl], Y[sl] * scale).astype(np.float32)
        out, outcome, state = _step.run(policy, [g], state, NumpyOps, names=names, params=[w.astype(np.float32)])
        if not bool(outcome.skipped):
            w = w - 0.05 * out[0].astype(np.float64)
        np.testing.assert_allclose(model.get_weights()[0], w, rtol=2e-4, atol=1e-5)
    stats = opt.gradclip_stats()
    assert stats.norm == pytest.approx(float(outcome.norm), rel=1e-3)


def test_spike_skip_leaves_weights_and_slots_untouched():
    opt = gck.wrap(keras.optimizers.Adam(0.01), gradclip.SpikeGuard(window=8, min_history=3, sigma=3.0))
    model = _train(opt, steps=5)
    before = [v.copy() for v in model.get_weights()]
    slots = [keras.ops.convert_to_numpy(v).copy() for v in opt._gc_slots()]
    model.train_on_batch(X[:8], Y[:8] * 1e4)
    assert opt.gradclip_stats().skipped
    _same_weights_arrays(model.get_weights(), before)
    _same_weights_arrays([keras.ops.convert_to_numpy(v) for v in opt._gc_slots()], slots)


def _same_weights_arrays(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("mode", ["skip", "zero", "propagate"])
def test_nonfinite_modes(mode):
    opt = gck.wrap(keras.optimizers.Adam(0.01), gradclip.ZClip(warmup_steps=2), nonfinite=mode)
    model = _train(opt, steps=3)
    before = [v.copy() for v in model.get_weights()]
    x = X[:8].copy()
    x[0, 0] = np.nan
    model.train_on_batch(x, Y[:8])
    stats = opt.gradclip_stats()
    assert stats.nonfinite and re.fullmatch(r"sequential\w*/dense\w*/kernel", stats.offender_names[0])
    after = model.get_weights()
    if mode == "skip":
        assert stats.skipped
        _same_weights_arrays(after, before)
    elif mode == "zero":
        assert all(np.isfinite(w).all() for w in after)
    else:
        assert not np.isfinite(after[0]).all()
    count = [keras.ops.convert_to_numpy(v) for k, v in opt._gc.state.items()]
    assert all(np.isfinite(c).all() or c.dtype.kind != "f" for c in count[:1])


def test_nonfinite_error_names_the_variable():
    opt = gck.wrap(keras.optimizers.SGD(0.01), "norm:1.0", nonfinite="error")
    model = _model()
    model.compile(optimizer=opt, loss="mse", run_eagerly=True)
    model.train_on_batch(X[:8], Y[:8])
    before = [v.copy() for v in model.get_weights()]
    x = X[:8].copy()
    x[1, 2] = np.inf
    with pytest.raises(gradclip.NonFiniteError, match=r"sequential\w*/dense\w*/kernel"):
        model.train_on_batch(x, Y[:8])
    _same_weights_arrays(model.get_weights(), before)


def test_config_round_trip_and_saved_model_keeps_the_clipper_state(tmp_path):
    opt = gck.wrap(keras.optimizers.Adam(learning_rate=0.02), gradclip.ZClip(warmup_steps=3))
    config = opt.get_config()
    assert config["policy"] == "zclip:warmup_steps=3"
    again = type(opt).from_config(config)
    assert isinstance(again, keras.optimizers.Adam) and again.gradclip_policy == opt.gradclip_policy
    assert float(keras.ops.convert_to_numpy(again.learning_rate)) == pytest.approx(0.02)

    model = _train(opt, steps=5)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.gradclip_policy.spec() == "zclip:warmup_steps=3"
    for k, v in opt._gc.state.items():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.optimizer._gc.state[k]),
                                      keras.ops.convert_to_numpy(v))
    for m in (model, loaded):  # the reloaded run continues exactly like the original one
        for i in range(3):
            m.train_on_batch(X[i * 8:(i + 1) * 8], Y[i * 8:(i + 1) * 8] * (1 + 5 * (i == 2)))
    _same_weights(model, loaded, rtol=1e-6, atol=1e-7)


def test_saved_model_loads_in_a_fresh_process(tmp_path):
    import os
    import subprocess
    import sys

    model = _train(gck.wrap(keras.optimizers.SGD(0.01), gradclip.AutoClip(30, window=8)), steps=3)
    model.save(tmp_path / "m.keras")
    code = ("import keras, gradclip.keras; m = keras.models.load_model(%r); o = m.optimizer; "
            "print(type(o).__name__, o.gradclip_policy.spec(), int(o.gradclip_stats().to_dict()['clipped']))")
    proc = subprocess.run([sys.executable, "-c", code % str(tmp_path / "m.keras")], capture_output=True, text=True,
                          env=dict(os.environ, KERAS_BACKEND=BACKEND), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[:2] == ["ClippedSGD", "autoclip:30.0,window=8"]


def test_bad_input():
    with pytest.raises(gradclip.InputTypeError, match="Keras optimizer"):
        gck.wrap("adam", "norm:1.0")
    opt = gck.wrap(keras.optimizers.Adam(), "norm:1.0")
    with pytest.raises(gradclip.ConfigError, match="clip twice"):
        gck.wrap(opt, "zclip")
    for kwarg in ("clipnorm", "clipvalue", "global_clipnorm"):
        with pytest.raises(gradclip.ConfigError, match=kwarg):
            gck.wrap(keras.optimizers.Adam(**{kwarg: 1.0}), "norm:1.0")
    built = keras.optimizers.SGD()
    built.build(_model().trainable_variables)
    with pytest.raises(gradclip.ConfigError, match="built"):
        gck.wrap(built, "norm:1.0")
    with pytest.raises(gradclip.ConfigError, match="inner optimizer"):
        gck.wrap(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD()), "norm:1.0")
    with pytest.raises(gradclip.ConfigError, match="nonfinite"):
        gck.wrap(keras.optimizers.SGD(), "norm:1.0", nonfinite="ignore")
    with pytest.raises(gradclip.ConfigError):
        gck.wrap(keras.optimizers.SGD(), "nosuchmethod")


def test_gradient_monitor_writes_jsonl_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboardX")
    model = _model()
    model.compile(optimizer=gck.wrap(keras.optimizers.SGD(0.01), "norm:1.0"), loss="mse")
    log = tmp_path / "grads.jsonl"
    cb = gck.GradientMonitor([f"jsonl:{log}", f"tensorboard:{tmp_path / 'tb'}"], per_layer=True)
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[cb])
    records = [r for r in map(json.loads, log.read_text().splitlines()) if "event" not in r]
    assert len(records) == 8 and [r["step"] for r in records] == list(range(8))
    assert records[-1]["epoch"] == 1 and records[0]["lr"] == pytest.approx(0.01)
    assert all(r["clipped"] for r in records) and records[0]["clipped_norm"] == pytest.approx(1.0, rel=1e-5)
    layers = records[0]["layers"]
    assert any(k.endswith("kernel") for k in layers) and all(v["grad_norm"] > 0 for v in layers.values())
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    pytest.importorskip("matplotlib")
    from gradclip.report import build_report

    page = build_report(log, tmp_path / "report.html").read_text()
    assert "Per-tensor gradient norms" in page and "<img" in page  # the same report as for torch, with the heatmap


def _batch_losses(model, x, y, batch_size):
    """Each batch's mean squared error in float64, for weights that do not move (learning rate 0)."""
    err = keras.ops.convert_to_numpy(model(x)).astype(np.float64) - y
    per_sample = (err ** 2).mean(axis=1)
    return [(per_sample[i:i + batch_size].sum(), len(per_sample[i:i + batch_size]))
            for i in range(0, len(x), batch_size)]


@pytest.mark.parametrize("mode", ["batch", "accumulation", "steps_per_execution"])
def test_gradient_monitor_logs_each_batch_loss_not_the_running_mean(tmp_path, mode):
    # lr 0 keeps the weights, so every batch's loss is known; batch 1 of 4 has a 30x target (a loss
    # spike) and the last batch is smaller (32 = 10 + 10 + 10 + 2): Keras's logs["loss"] is the
    # sample-weighted running mean of the epoch, which smooths the spike away and restarts each epoch.
    if mode == "steps_per_execution" and BACKEND == "torch":
        pytest.skip("Keras's torch backend refuses steps_per_execution > 1")
    y = Y.copy()
    y[10:20] *= 30
    group = 1 if mode == "batch" else 2
    model = _model()
    opt = keras.optimizers.SGD(0.0, gradient_accumulation_steps=2 if mode == "accumulation" else None)
    model.compile(optimizer=gck.wrap(opt, "norm:1.0"), loss="mse",
                  steps_per_execution=2 if mode == "steps_per_execution" else 1)
    records, running = [], []

    class Running(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            running.append(logs["loss"])

    model.fit(X, y, batch_size=10, epochs=2, shuffle=False, verbose=0,
              callbacks=[gck.GradientMonitor([records.append]), Running()])
    batches = _batch_losses(model, X, y, 10)
    groups = [batches[i:i + group] for i in range(0, len(batches), group)]
    expected = [sum(t for t, _ in g) / sum(n for _, n in g) for g in groups]
    # the documented bound: float32 rounding of Keras's running total, 2**-23 * total / samples
    so_far = np.cumsum([sum(t for t, _ in g) for g in groups])
    bound = [2.0 ** -23 * total / sum(n for _, n in g) for total, g in zip(so_far, groups)]
    assert [r["epoch"] for r in records] == [0] * len(expected) + [1] * len(expected)
    got = np.array([r["loss"] for r in records])
    assert np.all(np.abs(got - expected * 2) <= np.array(bound * 2) + 1e-6 * np.array(expected * 2)), (got, expected)
    if mode == "batch":  # the spike is there, the next batch is back down, and epoch 1 repeats epoch 0
        assert records[1]["loss"] > 100 * records[2]["loss"]
        assert not np.allclose(running, expected * 2, rtol=1e-3)  # what was logged before: the running mean


def test_gradient_monitor_appends_to_an_existing_log_with_a_start_record(tmp_path):
    from gradclip.monitor import read_runs

    log = tmp_path / "a" / "grads.jsonl"
    for run in ("first", "second"):
        model = _model()
        model.compile(optimizer=gck.wrap(keras.optimizers.SGD(0.01), "norm:1.0"), loss="mse")
        model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[gck.GradientMonitor([f"jsonl:{log}"], run=run)])
    runs = read_runs(log)
    assert [r.label for r in runs] == ["first", "second"] and [len(r.records) for r in runs] == [4, 4]
    assert runs[1].meta["resumed"] is True and runs[0].end["steps"] == 4
    assert runs[0].meta["framework"] == "keras"  # so `gradclip suggest` prints a Keras snippet
    from gradclip.report import suggest

    assert suggest(log)["recommended"]["python"].startswith("gradclip.keras.clipped(")


def test_gradient_monitor_needs_a_wrapped_optimizer():
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(), loss="mse")
    with pytest.raises(gradclip.ConfigError, match="wrap"):
        model.fit(X, Y, batch_size=8, verbose=0, callbacks=[gck.GradientMonitor([lambda r: None])])


@pytest.mark.slow
def test_fit_trains_the_digits_lstm_with_zclip_and_reloads_its_state(tmp_path):
    from gradclip.experiments._keras import build_model
    from gradclip.experiments._tasks import get_task

    task = get_task("digits-lstm")
    data = task.load()
    keras.utils.set_random_seed(0)
    model = build_model(task)
    opt = gck.wrap(keras.optimizers.Adam(0.01), gradclip.ZClip())
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.X, data.y, batch_size=32, epochs=3, verbose=0, shuffle=False)
    accuracy = np.mean(np.argmax(keras.ops.convert_to_numpy(model.predict_on_batch(data.X_test)), 1) == data.y_test)
    assert accuracy > 0.7, accuracy  # chance is 0.1
    path = tmp_path / "lstm.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for key, var in opt._gc.state.items():
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.optimizer._gc.state[key]),
                                      keras.ops.convert_to_numpy(var))
    state = {k: float(keras.ops.convert_to_numpy(v)) for k, v in opt._gc.state.items() if k != "warm"}
    assert state["count"] == gradclip.ZClip().warmup_steps and state["mu"] > 0 and state["var"] > 0  # warmed up


def test_compare_framework_keras_shows_the_before_after_picture():
    from gradclip.experiments import compare

    out = compare("regression", ["none", "norm:1.0"], [0], framework="keras")
    assert out["framework"] == "keras" and out["keras_backend"] == BACKEND
    none, norm = out["runs"]
    assert none["diverged"] and none["first_nonfinite_step"] is not None
    assert not norm["diverged"] and norm["final_loss"] < 5.0 and norm["clipped_fraction"] > 0.5


def test_numpy_gradients_are_accepted_as_keras_clipnorm_accepts_them():
    v = keras.Variable(np.ones(3, dtype="float32"))
    opt = gck.wrap(keras.optimizers.SGD(0.1), "norm:1.0")
    opt.build([v])
    opt.apply_gradients([(np.full(3, 5.0, dtype="float32"), v)])
    ref = keras.Variable(np.ones(3, dtype="float32"))
    plain = keras.optimizers.SGD(0.1, clipnorm=1.0)  # per variable: one variable here; global_clipnorm refuses NumPy on torch
    plain.build([ref])
    plain.apply_gradients([(np.full(3, 5.0, dtype="float32"), ref)])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(v), keras.ops.convert_to_numpy(ref), rtol=1e-6)


def test_a_wrapped_optimizer_used_before_it_is_built_says_so():
    opt = gck.wrap(keras.optimizers.SGD(0.1), "zclip")
    with pytest.raises(gradclip.ConfigError, match="before it was built"):
        opt._clip_gradients([np.ones(3, dtype="float32")])


def test_blockrms_matches_reference():
    # BlockRMS (optax.clip_by_block_rms) with the Keras ops of the generic step: within float32 rounding
    from gradclip import _step
    from gradclip.keras._ops import KerasOps

    grads = [np.array([3.0, 4.0, 0.0, 12.0], np.float32), np.zeros((2, 3), np.float32),
             np.array([np.nan, 1.0], np.float32), np.array([np.inf, 1.0, 0.0], np.float32)]
    out, outcome, _ = _step.run(gradclip.BlockRMS(0.5), [keras.ops.convert_to_tensor(g) for g in grads], {},
                                KerasOps, names=("a", "b", "c", "d"))
    with np.errstate(invalid="ignore"):
        expected = ref.block_rms(grads, 0.5)[0]
    for o, e in zip(out, expected):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(o), e, rtol=3e-7, atol=1e-37)
