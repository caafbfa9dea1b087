"""Safe defaults: every policy that learns its threshold protects the steps before it has learnt one.

The regression demo (``gradclip compare --task regression``) starts with gradient norms of 300-400
at a learning rate where any step left with such a norm blows the run up. A threshold learned from
the history of norms cannot clip the first steps (there is no history), nor a run whose every
norm is too large, so each adaptive policy also caps the global norm (``max_norm=1.0`` by
default, ZClip's official default; AdaGC's warm-up clip ``warmup_max_norm=1.0``).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import gradclip
from gradclip._ops import NumpyOps
from gradclip._outcome import classify
from gradclip._policies import Measurement

SEEDS = [0, 1, 2]
DEFAULT_SPECS = ["zclip", "autoclip:p=10"]


@pytest.mark.parametrize("spec", ["zclip", "autoclip", "autoclip:p=10", "maxhist:5", "spikeguard", "adagc"])
def test_a_large_first_step_is_clipped_to_norm_1_by_default(spec):
    policy = gradclip.parse_policy(spec)
    norms = np.array([200.0, 100.0, 50.0], dtype=np.float64)  # three tensors, global norm 229
    total = np.float64(np.linalg.norm(norms))
    m = Measurement(norm=total, tensor_norms=norms, finite=np.bool_(True), names=("a", "b", "c"))
    decision, _ = policy.decide(m, policy.init_state(total, NumpyOps), NumpyOps)
    coefs = decision.coefs if decision.coef is None else np.full(3, decision.coef)
    assert float(np.linalg.norm(norms * coefs)) == pytest.approx(1.0, rel=1e-5), spec
    assert not (decision.skip is not None and bool(decision.skip))


@pytest.mark.parametrize("spec", ["zclip", "autoclip", "maxhist", "spikeguard"])
def test_the_uncapped_published_rule_stays_one_argument_away(spec):
    uncapped = gradclip.parse_policy(f"{spec}:max_norm=none")
    assert uncapped.max_norm is None and gradclip.parse_policy(spec).max_norm == 1.0
    assert gradclip.parse_policy(uncapped.spec()) == uncapped
    total = np.float64(300.0)
    decision, _ = uncapped.decide(Measurement(norm=total), uncapped.init_state(total, NumpyOps), NumpyOps)
    assert float(decision.coef if decision.coef is not None else 1.0) == 1.0  # no history: not clipped


@functools.lru_cache(maxsize=1)
def _regression_runs() -> tuple[dict, ...]:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from gradclip.experiments import compare

    return tuple(compare("regression", DEFAULT_SPECS, SEEDS)["runs"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("spec", DEFAULT_SPECS)
def test_defaults_neither_diverge_nor_explode_on_the_regression_demo(spec, seed):
    """Before the caps: zclip diverged at step 4 (like no clipping), autoclip:p=10 ended at 1.8e12
    (seed 0) or never left the initial loss (seeds 1, 2)."""
    run = next(r for r in _regression_runs() if r["method"] == spec and r["seed"] == seed)
    outcome = classify(run["initial_loss"], run["final_loss"], nonfinite=run["diverged"])
    assert outcome not in ("diverged", "exploded"), (spec, seed, outcome, run["final_loss"])
    assert outcome == "ok", (spec, seed, outcome, run["final_loss"])  # and it trains: 2.3e4 -> below 1
