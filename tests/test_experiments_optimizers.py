"""``gradclip compare --optimizer/--lr``: one optimizer is one update in torch, Keras, TensorFlow and optax.

Each framework's optimizer (built by its runner's ``make_optimizer``) takes the same weights and the
same gradients for a few steps; the weights must match a float64 NumPy transcription of torch's
update to float32 tolerance. Gradients span six orders of magnitude and include zeros, where
epsilon's placement (the frameworks' defaults differ) shows.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from gradclip import cli
from gradclip._errors import ConfigError
from gradclip.experiments import compare, get_task
from gradclip.experiments._tasks import OPTIMIZERS, with_optimizer

STEPS = 6
LR = {"sgd": 0.1, "momentum": 0.1, "adam": 0.01, "rmsprop": 0.01, "adagrad": 0.1}


def gradients(seed: int = 0) -> list[list[np.ndarray]]:
    """``STEPS`` steps of gradients for two tensors (3x4 and 4): mixed scales, zeros, one sign flip."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(STEPS):
        scale = 10.0 ** rng.uniform(-6, 2, size=(3, 4))
        a = (rng.standard_normal((3, 4)) * scale).astype(np.float32)
        a[0, 0] = 0.0  # never a gradient: the update must stay 0 (no 0/0)
        a[1, 1] = 0.0 if t % 2 else 3.0  # sometimes a gradient
        b = (rng.standard_normal(4) * 10.0 ** (t - 3)).astype(np.float32)  # growing scale
        out.append([a, b])
    return out


def initial() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]


def reference(name: str, lr: float, momentum: float) -> list[np.ndarray]:
    """torch.optim's update in float64 NumPy, with the hyper-parameters of OPTIMIZERS."""
    hp = OPTIMIZERS[name].params
    w = [x.astype(np.float64) for x in initial()]
    s1 = [np.zeros_like(x) for x in w]
    s2 = [np.zeros_like(x) for x in w]
    for t, grads in enumerate(gradients(), start=1):
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            if name == "adam":
                s1[i] = hp["beta1"] * s1[i] + (1 - hp["beta1"]) * g
                s2[i] = hp["beta2"] * s2[i] + (1 - hp["beta2"]) * g * g
                m_hat, v_hat = s1[i] / (1 - hp["beta1"] ** t), s2[i] / (1 - hp["beta2"] ** t)
                w[i] -= lr * m_hat / (np.sqrt(v_hat) + hp["eps"])
            elif name == "rmsprop":
                s1[i] = hp["alpha"] * s1[i] + (1 - hp["alpha"]) * g * g
                w[i] -= lr * g / (np.sqrt(s1[i]) + hp["eps"])
            elif name == "adagrad":
                s1[i] = s1[i] + g * g
                w[i] -= lr * g / (np.sqrt(s1[i]) + hp["eps"])
            else:
                s1[i] = momentum * s1[i] + g
                w[i] -= lr * s1[i]
    return w


def task_for(name: str):
    return with_optimizer(get_task("regression"), name, LR[name])


def run_torch(task):
    import torch

    from gradclip.experiments._torch import make_optimizer

    ws = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in initial()]
    opt = make_optimizer(task, ws)
    for grads in gradients():
        for w, g in zip(ws, grads):
            w.grad = torch.from_numpy(g.copy())
        opt.step()
    return [w.detach().numpy() for w in ws]


def run_keras(task):
    keras = pytest.importorskip("keras")
    from gradclip.experiments._keras import make_optimizer
    from gradclip.keras import clipped

    ws = [keras.Variable(x.copy()) for x in initial()]
    opt = clipped(make_optimizer(task), "none")  # as the runner wraps it
    for grads in gradients():
        opt.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads], ws))
    return [keras.ops.convert_to_numpy(w) for w in ws]


def run_tensorflow(task):
    tf = pytest.importorskip("tensorflow")
    from gradclip.experiments._tensorflow import Optimizer

    ws = [tf.Variable(x.copy()) for x in initial()]
    opt = Optimizer(task, ws)
    step = tf.function(opt.apply)  # as in the runner: inside a tf.function
    for grads in gradients():
        step([tf.constant(g) for g in grads])
    return [w.numpy() for w in ws]


def run_jax(task):
    pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp

    from gradclip.experiments._jax import make_optimizer

    tx = make_optimizer(task)
    ws = [jnp.asarray(x) for x in initial()]
    state = tx.init(ws)
    for grads in gradients():
        updates, state = tx.update([jnp.asarray(g) for g in grads], state, ws)
        ws = optax.apply_updates(ws, updates)
    return [np.asarray(w) for w in ws]


RUNNERS = {"torch": run_torch, "keras": run_keras, "tensorflow": run_tensorflow, "jax": run_jax}


@pytest.mark.parametrize("framework", list(RUNNERS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_framework_makes_torchs_update(name, framework):
    task = task_for(name)
    expected = reference(name, task.lr, task.momentum)
    got = RUNNERS[framework](task)
    for e, g in zip(expected, got):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-6)
    moved = [np.abs(e - x).max() for e, x in zip(expected, initial())]
    assert min(moved) > 1e-3  # the steps did something the comparison can see


def test_the_frameworks_own_defaults_would_differ():
    """The reference is sharp enough to tell torch's Adagrad from Keras' default one."""
    task = task_for("adagrad")
    expected = reference("adagrad", task.lr, 0.0)
    keras_default = reference_adagrad_keras_defaults(task.lr)
    assert max(np.abs(a - b).max() for a, b in zip(expected, keras_default)) > 1e-3


def reference_adagrad_keras_defaults(lr: float) -> list[np.ndarray]:
    w = [x.astype(np.float64) for x in initial()]
    s = [np.full_like(x, 0.1) for x in w]
    for grads in gradients():
        for i, g in enumerate(grads):
            s[i] += g.astype(np.float64) ** 2
            w[i] -= lr * g / np.sqrt(s[i] + 1e-7)
    return w


def test_optimizer_sets_momentum_and_default_learning_rates():
    regression, lstm = get_task("regression"), get_task("digits-lstm")
    assert with_optimizer(regression) is regression
    assert (with_optimizer(regression, "sgd").lr, with_optimizer(regression, "sgd").momentum) == (0.07, 0.0)
    assert (with_optimizer(regression, "momentum").lr, with_optimizer(regression, "momentum").momentum) == (0.07, 0.8)
    assert (with_optimizer(lstm, "momentum").lr, with_optimizer(lstm, "momentum").momentum) == (1.0, 0.9)
    assert (with_optimizer(lstm, "sgd").lr, with_optimizer(lstm, "sgd").momentum) == (10.0, 0.0)
    assert [with_optimizer(lstm, n).lr for n in ("adam", "rmsprop", "adagrad")] == [1e-3, 1e-2, 1e-2]
    assert [with_optimizer(regression, n).lr for n in ("adam", "rmsprop", "adagrad")] == [0.1, 1e-2, 1.0]
    assert with_optimizer(regression, "adam", 0.5).lr == 0.5 and with_optimizer(regression, None, 0.5).optimizer == "sgd"
    assert with_optimizer(regression, "adam").momentum == 0.0
    assert regression.config()["optimizer"] == "sgd" and "optimizer_params" not in regression.config()
    assert with_optimizer(regression, "adam").config()["optimizer_params"] == {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"optimizer": "adamw"}, "Valid optimizers: sgd, momentum, adam, rmsprop, adagrad"),
    ({"optimizer": "Adam"}, "Did you mean 'adam'?"),
    ({"lr": 0.0}, "--lr must be a positive finite number"),
    ({"lr": -1.0}, "Received: -1.0"),
    ({"lr": math.inf}, "--lr must be"),
    ({"lr": "0.1"}, "Received: '0.1'"),
    ({"lr": True}, "--lr must be"),
])
def test_bad_optimizer_or_lr_is_refused_before_training(kwargs, needle, monkeypatch):
    from gradclip.experiments import _torch

    monkeypatch.setattr(_torch, "run", lambda *a, **k: pytest.fail("trained despite bad input"))
    with pytest.raises(ConfigError) as info:
        compare("regression", ["none"], [0], **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_dp_task_takes_sgd_settings_only():
    dp = get_task("dp-digits")
    assert with_optimizer(dp, "sgd", 0.2).momentum == 0.0 and with_optimizer(dp, "sgd", 0.2).lr == 0.2
    for name in ("adam", "rmsprop", "adagrad"):
        with pytest.raises(ConfigError, match="dp-digits trains with DP-SGD"):
            compare("dp-digits", None, [0], optimizer=name)


@pytest.mark.parametrize(("argv", "needle"), [
    (["--optimizer", "adma"], "Unknown optimizer 'adma'. Did you mean 'adam'?"),
    (["--lr", "fast"], "argument --lr: expected a positive number such as 0.01. Received: 'fast'"),
    (["--lr", "0"], "Received: '0'"),
    (["--lr", "-0.1"], "Received: '-0.1'"),
    (["--task", "dp-digits", "--optimizer", "adagrad"], "takes --optimizer sgd or momentum only"),
])
def test_cli_bad_optimizer_or_lr_is_one_line_and_exit_2(argv, needle, capsys):
    assert cli.main(["compare", *argv, "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_help_lists_optimizers_with_their_default_lr(capsys):
    with pytest.raises(SystemExit):
        cli.main(["compare", "--help"])
    text = capsys.readouterr().out
    assert "--optimizer NAME" in text and "--lr LR" in text
    assert "Default lr: regression 0.1, digits-lstm 0.001" in " ".join(text.split())  # adam


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["torch", "keras", "tensorflow", "jax"])
def test_runners_train_with_the_optimizer_and_log_it(framework, tmp_path):
    """Two epochs of regression: SGD at lr 0.07 (momentum 0) diverges unclipped, Adam does not, everywhere."""
    import importlib

    pytest.importorskip({"torch": "torch", "keras": "keras", "tensorflow": "tensorflow", "jax": "optax"}[framework])
    runner = importlib.import_module(f"gradclip.experiments._{framework}")
    base = get_task("regression")
    data = base.load()
    out = {}
    for name in ("sgd", "adam"):
        task = replace(with_optimizer(base, name), epochs=2)
        log = tmp_path / f"{name}.jsonl"
        out[name] = runner.run(task, "none", 0, data, log)
        start = json.loads(log.read_text().splitlines()[0])
        assert (start["optimizer"], start["lr"], start["momentum"]) == (name, task.lr, 0.0)
    assert out["sgd"].diverged and out["sgd"].first_nonfinite_step < 16
    assert not out["adam"].diverged and out["adam"].final_loss < out["adam"].initial_loss


def test_compare_records_optimizer_and_lr(tmp_path):
    out = tmp_path / "r.json"
    assert cli.main(["compare", "--optimizer", "rmsprop", "--lr", "0.02", "--method", "norm:1.0", "--seeds", "0",
                     "--json", str(out), "--no-report", "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["config"]["optimizer"] == "rmsprop" and result["config"]["lr"] == 0.02
    assert result["config"]["momentum"] == 0.0 and result["config"]["optimizer_params"]["alpha"] == 0.99
    start = json.loads((tmp_path / "logs" / "regression__norm_1.0__seed0.jsonl").read_text().splitlines()[0])
    assert (start["optimizer"], start["lr"]) == ("rmsprop", 0.02)
    assert result["runs"][0]["outcome"] == "ok"
