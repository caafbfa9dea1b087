"""``gradclip reproduce optimizers --quick``: SGD needs clipping on regression, the adaptive optimizers do not."""

from __future__ import annotations

import json

import pytest

from gradclip.reproduce import reproduce

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("optimizers")
    return reproduce("optimizers", quick=True, out=out), out


def summary(result, key):
    return result.numbers["summary"][f"regression/{key}"]


def test_plain_sgd_fails_unclipped_and_trains_clipped(quick):
    result, _ = quick
    for name in ("sgd", "momentum"):
        s = summary(result, name)
        assert s["none"]["failed"] == s["none"]["runs"] == 1  # diverged or exploded
        assert s["norm:1.0"]["ok"] == 1 and s["needs_clipping"]
    assert result.numbers["summary"]["informative_tasks"] == ["regression"]


def test_adaptive_optimizers_train_without_clipping(quick):
    result, _ = quick
    for name in ("adam", "rmsprop", "adagrad"):
        s = summary(result, name)
        assert s["none"]["ok"] == 1 and not s["needs_clipping"], (name, s)
        assert s["none"]["final_loss"] < s["none"]["runs"] * 0.01 * 23_000  # well below the initial loss
    assert result.verdict == "reproduced" and result.numbers["summary"]["agree"] == dict.fromkeys(
        ("adam", "rmsprop", "adagrad"), True)


def test_every_run_is_in_the_table_and_the_files_exist(quick):
    result, out = quick
    runs = result.numbers["runs"]
    assert len(runs) == 10 and {r["optimizer"] for r in runs} == {"sgd", "momentum", "adam", "rmsprop", "adagrad"}
    assert len(result.rows) == 10 and result.columns[-2:] == ["needs clipping", "clipping helps"]
    assert {r["lr"] for r in runs if r["optimizer"] == "adam"} == {0.1}
    data = json.loads((out / "results.json").read_text())
    assert data["verdict"] == result.verdict and data["config"]["quick"] is True
    assert data["config"]["epochs"] == {"regression": 50}
    assert (out / "report.html").stat().st_size > 1000
    assert {p.name for p in result.plots} == {"optimizers-quality.png", "optimizers-curves.png"}
    assert all(p.stat().st_size > 1000 for p in result.plots)
    start = json.loads(result.logs[0].read_text().splitlines()[0])
    assert start["event"] == "start" and start["optimizer"] == "sgd" and start["lr"] == 0.07


def test_the_rule_separates_need_from_help():
    from gradclip.reproduce._optimizers import clipping_helps, needs_clipping

    failed, ok = {"ok": 0, "test_accuracy": None, "final_loss": None}, {"ok": 1, "test_accuracy": None, "final_loss": 5.0}
    worse = {"ok": 1, "test_accuracy": None, "final_loss": 50.0}
    assert needs_clipping(failed, ok) and not needs_clipping(worse, ok) and clipping_helps(worse, ok)
    assert needs_clipping({"ok": 2, "test_accuracy": 0.85}, {"ok": 2, "test_accuracy": 0.9})
    assert not needs_clipping({"ok": 2, "test_accuracy": 0.88}, {"ok": 2, "test_accuracy": 0.9})
