"""The before/after experiment behind ``gradclip compare``."""

from __future__ import annotations

import json
import math

import pytest

import gradclip
from gradclip.experiments import compare, get_task

RUN_KEYS = {
    "method", "seed", "final_loss", "initial_loss", "diverged", "first_nonfinite_step", "steps",
    "clipped_fraction", "max_grad_norm", "seconds", "test_accuracy", "log", "outcome",
}


@pytest.fixture(scope="module")
def default_result(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    return compare("regression", ["none", "value:1.0", "norm:1.0"], [0, 1, 2], log_dir=log_dir), log_dir


def test_unclipped_training_diverges_within_the_first_epochs(default_result):
    result, _ = default_result
    steps_per_epoch = math.ceil(1000 / get_task("regression").batch_size)
    for run in (r for r in result["runs"] if r["method"] == "none"):
        assert run["diverged"] is True
        assert run["final_loss"] is None
        assert run["first_nonfinite_step"] is not None and run["first_nonfinite_step"] < 2 * steps_per_epoch


@pytest.mark.parametrize("method", ["value:1.0", "norm:1.0"])
def test_clipped_training_converges(default_result, method):
    result, _ = default_result
    runs = [r for r in result["runs"] if r["method"] == method]
    assert len(runs) == 3
    for run in runs:
        assert run["diverged"] is False and run["first_nonfinite_step"] is None
        assert run["steps"] == 50 * 8
        assert math.isfinite(run["final_loss"])
        assert run["final_loss"] < run["initial_loss"] / 50
        assert 0.0 < run["clipped_fraction"] <= 1.0
        assert run["max_grad_norm"] > 1.0


def test_norm_clipping_beats_value_clipping_on_this_task(default_result):
    result, _ = default_result
    mean = lambda m: sum(r["final_loss"] for r in result["runs"] if r["method"] == m) / 3  # noqa: E731
    assert mean("norm:1.0") < mean("value:1.0")


def test_results_follow_the_documented_schema(default_result):
    result, _ = default_result
    assert result["task"] == "regression" and result["framework"] == "torch"
    assert result["gradclip_version"] == gradclip.__version__
    assert result["config"]["lr"] == 0.07 and result["config"]["batch_size"] == 128
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN or Infinity anywhere
    for run in result["runs"]:
        assert set(run) == RUN_KEYS
        assert isinstance(run["seed"], int) and isinstance(run["steps"], int)
        assert isinstance(run["diverged"], bool)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_per_step_logs_have_one_line_per_step(default_result):
    result, log_dir = default_result
    files = sorted(log_dir.glob("*.jsonl"))
    assert len(files) == 9
    lines = [r for r in _read(log_dir / "regression__norm_1.0__seed0.jsonl") if "event" not in r]
    assert len(lines) == 400
    assert {"step", "epoch", "loss", "norm", "clipped_norm", "coef", "clipped"} <= set(lines[0])
    assert [r["step"] for r in lines] == list(range(400))
    for rec in lines:
        assert rec["clipped_norm"] <= 1.0 + 1e-6 or not rec["clipped"]
        if rec["clipped"]:
            assert rec["clipped_norm"] == pytest.approx(rec["norm"] * rec["coef"], rel=1e-5)
    none_lines = [r for r in _read(log_dir / "regression__none__seed0.jsonl") if "event" not in r]
    run = next(r for r in result["runs"] if r["method"] == "none" and r["seed"] == 0)
    assert len(none_lines) == run["first_nonfinite_step"] + 1  # the failing step is logged too


def test_logs_open_with_the_run_and_close_with_the_numbers_the_cli_prints(default_result):
    result, log_dir = default_result
    for run in result["runs"]:
        lines = _read(log_dir / run["log"].rsplit("/", 1)[-1])
        start, end = lines[0], lines[-1]
        assert start["event"] == "start" and start["task"] == "regression" and start["framework"] == "torch"
        assert (start["method"], start["seed"], start["run"]) == (run["method"], run["seed"], f"{run['method']} seed {run['seed']}")
        assert end["event"] == "end"
        for key in ("final_loss", "initial_loss", "steps", "outcome", "first_nonfinite_step"):
            assert end[key] == run[key], key


def test_step_records_carry_per_layer_gradient_norms(default_result):
    _, log_dir = default_result
    rec = _read(log_dir / "regression__norm_1.0__seed0.jsonl")[1]
    assert sorted(rec["layers"]) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    total = math.sqrt(sum(v["grad_norm"] ** 2 for v in rec["layers"].values()))
    assert total == pytest.approx(rec["norm"], rel=1e-5)


def test_every_run_has_one_outcome(default_result):
    result, _ = default_result
    outcomes = {(r["method"], r["outcome"]) for r in result["runs"]}
    assert outcomes == {("none", "diverged"), ("value:1.0", "ok"), ("norm:1.0", "ok")}


@pytest.mark.parametrize(("initial", "final", "diverged", "outcome"), [
    (2.3e4, 1.76e12, False, "exploded"), (2.3e4, 2.33e4, False, "stalled"), (2.3e4, 0.7, False, "ok"),
    (2.3e4, float("nan"), False, "diverged"), (2.3e4, 0.7, True, "diverged"),
])
def test_a_run_is_judged_by_its_loss_not_only_by_nan(initial, final, diverged, outcome):
    from gradclip.experiments._results import finish

    r = finish("m", 0, initial=initial, final=final, accuracy=None, first_bad=3 if diverged else None, steps=10,
               clipped=0, max_norm=1.0, seconds=0.1)
    assert r.outcome == outcome and r.to_json()["outcome"] == outcome
    assert r.diverged is (outcome == "diverged")


def test_runs_are_reproducible_per_seed():
    a = compare("regression", ["norm:1.0"], [3])["runs"][0]
    b = compare("regression", ["norm:1.0"], [3])["runs"][0]
    c = compare("regression", ["norm:1.0"], [4])["runs"][0]
    assert a["final_loss"] == b["final_loss"]
    assert a["final_loss"] != c["final_loss"]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"task": "cifar"}, "Valid tasks: digits-lstm, dp-digits, mnist-lstm, regression"),
        ({"methods": ["none", "bogus:1"]}, "Valid methods:"),
        ({"methods": ["norm:-1"]}, "max_norm must be >= 0"),
        ({"methods": []}, "No method given"),
        ({"framework": "mxnet"}, "Valid frameworks: torch"),
    ],
)
def test_bad_input_is_refused_before_training(kwargs, needle, monkeypatch):
    from gradclip.experiments import _torch

    monkeypatch.setattr(_torch, "run", lambda *a, **k: pytest.fail("trained despite bad input"))
    args = {"task": "regression", "methods": ["none"], "seeds": [0], **kwargs}
    with pytest.raises(gradclip.ConfigError, match=needle):
        compare(args.pop("task"), args.pop("methods"), args.pop("seeds"), **args)


def test_regression_reports_no_test_accuracy(default_result):
    result, _ = default_result
    assert all(r["test_accuracy"] is None for r in result["runs"])


@pytest.mark.slow
def test_digits_lstm_clipped_methods_beat_no_clipping_over_three_seeds():
    result = compare("digits-lstm", ["none", "norm:1.0", "zclip", "autoclip:p=10"], [0, 1, 2])
    assert result["config"]["model"] == "lstm" and result["config"]["sizes"] == [8, 64, 10]
    runs = result["runs"]
    assert all(r["steps"] == 25 * 45 for r in runs)  # 1437 training images, batch 32, no divergence
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in runs)
    mean = {m: sum(r["test_accuracy"] for r in runs if r["method"] == m) / 3 for m in ("none", "norm:1.0", "zclip", "autoclip:p=10")}
    for method in ("norm:1.0", "zclip", "autoclip:p=10"):
        assert mean[method] > mean["none"] + 0.03, mean
    assert any(r["clipped_fraction"] > 0 for r in runs if r["method"] == "zclip")


def test_digits_data_is_rows_of_pixels_in_unit_range():
    data = get_task("digits-lstm").load()
    assert data.X.shape == (1437, 8, 8) and data.X_test.shape == (360, 8, 8)
    assert data.X.min() >= 0.0 and data.X.max() <= 1.0
    assert set(data.y.tolist()) == set(range(10))
