"""``gradclip compare --framework jax``: the JAX runner, through the CLI, against the torch runner's schema."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

import gradclip
from gradclip import cli
from gradclip.experiments import get_task

pytestmark = pytest.mark.slow

HEADER_KEYS = {"task", "framework", "gradclip_version", "config", "incomplete", "runs"}
RUN_KEYS = {
    "method", "seed", "final_loss", "initial_loss", "diverged", "first_nonfinite_step", "steps",
    "clipped_fraction", "max_grad_norm", "seconds", "test_accuracy", "log", "outcome",
}


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax") / "results.json"
    code = cli.main(["compare", "--framework", "jax", "--task", "regression", "--method", "none,norm:1.0",
                     "--seeds", "0", "--json", str(out), "--no-report", "--quiet"])
    assert code == 0
    return json.loads(out.read_text()), out.parent / "logs"


def test_the_json_has_the_torch_runners_keys(jax_run):
    result, _ = jax_run  # the torch runner's keys are frozen in tests/test_experiments.py (RUN_KEYS there)
    assert set(result) == HEADER_KEYS
    assert result["framework"] == "jax" and result["task"] == "regression" and result["incomplete"] is False
    assert result["gradclip_version"] == gradclip.__version__
    assert result["config"] == get_task("regression").config()
    assert [set(r) for r in result["runs"]] == [RUN_KEYS, RUN_KEYS]
    json.dumps(result, allow_nan=False)
    for run in result["runs"]:
        assert isinstance(run["seed"], int) and isinstance(run["steps"], int) and isinstance(run["diverged"], bool)


def test_outcomes_match_the_torch_runner(jax_run):
    result, _ = jax_run
    none, norm = result["runs"]
    steps_per_epoch = math.ceil(1000 / get_task("regression").batch_size)
    assert none["method"] == "none" and none["outcome"] == "diverged" and none["final_loss"] is None
    assert none["first_nonfinite_step"] is not None and none["first_nonfinite_step"] < 2 * steps_per_epoch
    assert norm["method"] == "norm:1.0" and norm["outcome"] == "ok" and not norm["diverged"]
    assert norm["steps"] == 50 * steps_per_epoch
    assert norm["final_loss"] < norm["initial_loss"] / 50
    assert 0.0 < norm["clipped_fraction"] <= 1.0 and norm["max_grad_norm"] > 1.0
    assert none["initial_loss"] == pytest.approx(norm["initial_loss"])  # same seed, same initial weights


def test_step_logs_carry_stats_and_per_leaf_norms(jax_run):
    _, logs = jax_run
    lines = [json.loads(x) for x in (logs / "regression__norm_1.0__seed0.jsonl").read_text().splitlines()]
    assert lines[0]["event"] == "start" and lines[0]["framework"] == "jax"
    assert lines[-1]["event"] == "end" and lines[-1]["outcome"] == "ok"
    steps = lines[1:-1]
    assert [r["step"] for r in steps] == list(range(400))
    assert set(steps[0]["layers"]) == {"dense0.kernel", "dense0.bias", "dense1.kernel", "dense1.bias"}
    for rec in steps:
        assert rec["clipped_norm"] <= 1.0 + 1e-5 or not rec["clipped"]
        per_leaf = math.sqrt(sum(v["grad_norm"] ** 2 for v in rec["layers"].values()))
        assert per_leaf == pytest.approx(rec["norm"], rel=1e-4)


def test_a_non_finite_step_moves_neither_weights_nor_momentum(jax_run):
    import gradclip.jax as gcj
    from gradclip.experiments import _jax

    task = get_task("regression")
    tx, step = _jax._program(task, "norm:1.0")  # compiled by the CLI run above
    params = _jax.init_params(task, 0)
    x, y, w = np.ones((128, 20), np.float32), np.ones((128, 1), np.float32), np.ones(128, np.float32)
    params, state, _ = step(params, tx.init(params), x, y, w)  # one good step: momentum is non-zero
    x[3, 4] = np.nan
    new_params, new_state, loss = step(params, state, x, y, w)
    stats = gcj.stats(new_state)
    assert not math.isfinite(float(loss)) and bool(stats.nonfinite) and bool(stats.skipped)
    for a, b in zip(jax_leaves(params) + jax_leaves(state.inner), jax_leaves(new_params) + jax_leaves(new_state.inner)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def jax_leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_an_unknown_framework_names_jax_among_the_valid_ones(capsys):
    assert cli.main(["compare", "--framework", "flax", "--seeds", "0"]) == 2
    assert "torch, keras, tensorflow, jax" in capsys.readouterr().err
