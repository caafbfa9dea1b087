"""``gradclip compare --task dp-digits``: DP-SGD methods through the CLI, their JSON and logs."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("opacus")
pytest.importorskip("sklearn")

from gradclip.cli import main
from gradclip.experiments import TASKS, RunResult, compare
from gradclip.experiments._dp import METHODS

PRIVACY = ("epsilon", "delta", "noise_multiplier", "clip", "fraction_clipped")
DP_KEYS = {"fraction_clipped", "norm_p10", "norm_p50", "norm_p90", "clip", "epsilon"}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One CLI run of three methods for 2 epochs (44 steps each), seed 0: its JSON and stdout."""
    import torch

    mp = pytest.MonkeyPatch()
    mp.setitem(TASKS, "dp-digits", dataclasses.replace(TASKS["dp-digits"], epochs=2))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead (on a busy CI machine, a lot)
    out = tmp_path_factory.mktemp("dp") / "out.json"
    try:
        import contextlib
        import io

        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            code = main(["compare", "--task", "dp-digits", "--method", "nonprivate,flat,flat-ghost", "--seeds", "0",
                         "--json", str(out), "--no-report", "-q"])
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    assert code == 0
    return json.loads(out.read_text()), text.getvalue()


def _run(result, method):
    return next(r for r in result["runs"] if r["method"] == method)


def _records(run):
    with open(run["log"], encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_schema_has_the_run_fields_and_the_privacy_fields(short_run):
    result, _ = short_run
    assert result["task"] == "dp-digits" and result["config"]["privacy"] == {
        "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}
    base = set(RunResult("m", 0, 1.0, 1.0, False, None, 1, 0.0, None, 1.0).to_json())
    for run in result["runs"]:
        assert base | set(PRIVACY) | {"peak_rss_mb", "peak_rss_growth_mb", "log"} == set(run)
        assert run["steps"] == 44 and run["outcome"] == "ok" and run["seconds"] > 0
        assert run["peak_rss_mb"] > 0 and run["peak_rss_growth_mb"] >= 0


def test_epsilon_only_for_private_runs(short_run):
    result, _ = short_run
    plain = _run(result, "nonprivate")
    assert all(plain[k] is None for k in PRIVACY)
    assert plain["test_accuracy"] > 0.9
    for method in ("flat", "flat-ghost"):
        run = _run(result, method)
        assert run["epsilon"] > 0 and run["delta"] == 1e-5 and run["noise_multiplier"] == 1.0 and run["clip"] == 1.0
        assert 0 <= run["fraction_clipped"] <= 1 and run["test_accuracy"] > 0.8


def test_step_records_carry_the_dp_object(short_run):
    result, _ = short_run
    recs = _records(_run(result, "flat"))
    steps = [r for r in recs if "step" in r]
    assert recs[0]["event"] == "start" and recs[-1]["event"] == "end" and len(steps) == 44
    assert all(set(r["dp"]) == DP_KEYS for r in steps)
    eps = [r["dp"]["epsilon"] for r in steps]
    assert all(a < b for a, b in itertools.pairwise(eps))  # privacy spent grows every step
    assert eps[-1] == pytest.approx(recs[-1]["epsilon"], rel=1e-9)  # the accountant's own number
    assert all(r["dp"]["norm_p10"] <= r["dp"]["norm_p50"] <= r["dp"]["norm_p90"] for r in steps)
    assert all("dp" not in r and r["norm"] > 0 for r in _records(_run(result, "nonprivate")) if "step" in r)


def test_flat_and_flat_ghost_give_the_same_numbers(short_run):
    result, _ = short_run
    flat, ghost = _run(result, "flat"), _run(result, "flat-ghost")
    assert ghost["test_accuracy"] == flat["test_accuracy"] and ghost["epsilon"] == flat["epsilon"]
    assert ghost["final_loss"] == pytest.approx(flat["final_loss"], rel=1e-5)
    for a, b in zip(_records(flat), _records(ghost)):
        if "dp" in a:
            assert a["batch_size"] == b["batch_size"]
            for key in ("norm_p10", "norm_p50", "norm_p90", "fraction_clipped"):
                assert b["dp"][key] == pytest.approx(a["dp"][key], rel=1e-5, abs=1e-6)


def test_table_shows_accuracy_and_epsilon(short_run):
    result, text = short_run
    assert "test acc" in text and "epsilon" in text and "(delta 1e-05)" in text
    flat = _run(result, "flat")
    assert f"{flat['epsilon']:.3g}" in text


def test_default_methods_are_the_five_dp_methods():
    assert TASKS["dp-digits"].methods == METHODS == ("nonprivate", "flat", "per-layer", "adaptive", "flat-ghost")
    assert math.isclose(TASKS["dp-digits"].privacy["delta"], 1e-5)


@pytest.mark.parametrize("argv, needle", [
    (["--method", "norm:1.0"], "Unknown method for task dp-digits"),
    (["--framework", "jax"], "trains with PyTorch in one process"),
    (["--nproc", "2"], "trains with PyTorch in one process"),
])
def test_bad_options_fail_before_training(argv, needle, capsys):
    assert main(["compare", "--task", "dp-digits", *argv, "--no-report", "-q"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_clipping_methods_are_still_checked_on_other_tasks():
    from gradclip._errors import ConfigError

    with pytest.raises(ConfigError):
        compare("regression", ["flat"], [0])
