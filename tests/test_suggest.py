"""The threshold advisor: candidates and fractions vs NumPy, ZClip by hand, recommendation, --json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import gradclip
from gradclip._errors import LogError
from gradclip.monitor import RunLog
from gradclip.report import render_suggestion, suggest
from gradclip.report._suggest import zclip_end_threshold


def _log(norms, name: str = "warmup") -> RunLog:
    return RunLog(Path(f"{name}.jsonl"), [{"step": i, "norm": None if g is None else float(g)} for i, g in enumerate(norms)])


def _zclip_by_hand(norms, alpha=0.97, z=2.5, warmup=25):
    warm = norms[:warmup]
    mu, var = float(np.mean(warm)), float(np.var(warm))
    for g in norms[warmup:]:
        sigma = math.sqrt(var)
        zs = (g - mu) / (sigma + 1e-6)
        gstar = mu + z**2 / zs * sigma if zs > z else g
        mu = alpha * mu + (1 - alpha) * gstar
        var = alpha * var + (1 - alpha) * (gstar - mu) ** 2
    return mu + z * math.sqrt(var)


def test_candidates_match_numpy():
    norms = np.random.default_rng(0).lognormal(0.0, 0.5, 300)
    advice = suggest(_log(norms))
    cands = {c["name"]: c for c in advice["candidates"]}
    for p in (10, 25, 50, 90, 99):
        assert cands[f"p{p}"]["threshold"] == pytest.approx(np.percentile(norms, p), rel=1e-12)
    assert cands["mean_x5"]["threshold"] == pytest.approx(5 * norms.mean())
    assert cands["mean_x10"]["threshold"] == pytest.approx(10 * norms.mean())
    assert cands["zclip_z2.5"]["threshold"] == pytest.approx(_zclip_by_hand(norms), rel=1e-9)
    for c in advice["candidates"]:
        assert c["fraction_clipped"] == pytest.approx(np.mean(norms > c["threshold"]))
    assert advice["steps"] == 300 and advice["nonfinite_steps"] == 0
    assert advice["norm"]["mean"] == pytest.approx(norms.mean())


def test_healthy_unclipped_run_caps_only_the_spikes():
    # a healthy run: the pick must not clip ordinary steps (the old p90 pick clipped 10% and called them spikes)
    norms = np.random.default_rng(1).lognormal(0.0, 0.3, 300)
    norms[[120, 250]] = 40.0  # two real spikes
    advice = suggest(_log(norms))
    rec = advice["recommended"]
    assert advice["kind"] == ["unclipped"] and rec["name"] == "max_nonspike" and not rec["verified"]
    assert rec["fraction_clipped"] == pytest.approx(2 / 300)
    assert np.sort(norms)[-3] <= rec["threshold"] < 40.0
    policy = gradclip.parse_policy(rec["spec"])
    assert isinstance(policy, gradclip.GlobalNorm) and policy.max_norm == rec["threshold"]
    assert rec["python"] == f"gradclip.torch.Clipper(gradclip.GlobalNorm({rec['threshold']!r}))"
    assert "UNVERIFIED" in rec["reason"]


def test_python_line_runs():
    pytest.importorskip("torch")
    import gradclip.torch  # noqa: F401

    rec = suggest(_log([1.0, 2.0, 3.0, 4.0]))["recommended"]
    clipper = eval(rec["python"], {"gradclip": gradclip})  # noqa: S307 - our own generated line
    assert type(clipper).__name__ == "Clipper"


def test_exploding_run_is_called_diverged_and_never_gets_a_percentile_of_the_blowup():
    norms = [359.0, 3654.0, 67688.0, 12882.0, None]  # the regression demo's unclipped run
    advice = suggest(_log(norms))
    assert set(advice["kind"]) == {"diverged", "unclipped", "too short"}
    assert advice["nonfinite_steps"] == 1 and advice["steps"] == 4
    rec = advice["recommended"]
    assert rec["threshold"] < 359.0 and not rec["verified"]  # below every norm of the blow-up
    assert any("too short" in w for w in advice["warnings"])
    assert "WARNING" in render_suggestion(advice) and "UNVERIFIED" in render_suggestion(advice)


def test_clipped_run_is_not_read_as_unclipped_norms():
    # the regression demo's norm:1.0 run: pre-clip norms 300-2000 while the run trained fine at 1.0
    recs = [{"step": i, "norm": 300.0 + 4 * i, "clipped": True, "threshold": 1.0, "loss": 2e4 / (1 + i)}
            for i in range(400)]
    log = RunLog(Path("clipped.jsonl"), recs, meta={"event": "start", "policy": "norm:1.0", "framework": "torch"})
    advice = suggest(log)
    assert "clipped" in advice["kind"] and advice["outcome"] == "ok"
    assert advice["recommended"]["spec"] == "norm:1.0"  # not norm:990 (its p90)
    assert any("not the norms an unclipped run" in w for w in advice["warnings"])


@pytest.mark.parametrize(("framework", "needle"), [
    ("keras", "gradclip.keras.clipped(optimizer, gradclip.GlobalNorm("),
    ("tensorflow", "gradclip.tensorflow.Clipper(gradclip.GlobalNorm("),
    ("torch", "gradclip.torch.Clipper(gradclip.GlobalNorm("),
])
def test_snippet_is_for_the_framework_that_wrote_the_log(framework, needle):
    log = RunLog(Path("k.jsonl"), [{"step": i, "norm": 1.0 + i % 3} for i in range(30)],
                 meta={"event": "start", "framework": framework})
    advice = suggest(log)
    assert advice["framework"] == framework and advice["recommended"]["python"].startswith(needle)
    assert not any("does not say which framework" in w for w in advice["warnings"])


def test_verification_trains_the_candidates_and_picks_the_best_loss():
    calls = []

    def train(spec):  # a fake task whose loss is best at threshold 2.0 and that diverges above 50
        calls.append(spec)
        if spec in ("zclip", "autoclip:p=10"):
            return 5.0
        t = float(spec.split(":")[1])
        return float("nan") if t > 50 else 1.0 + abs(math.log10(t / 2.0))

    norms = np.random.default_rng(3).lognormal(3.0, 0.3, 100)
    advice = suggest(_log(norms), verify=train)
    rec = advice["recommended"]
    assert rec["verified"] and rec["threshold"] == pytest.approx(2.0, rel=0.35)
    trials = advice["verification"]["trials"]
    assert len(trials) == len(calls) and trials[0]["final_loss"] == min(t["final_loss"] or 99 for t in trials)
    assert {t["outcome"] for t in trials if t["threshold"] and t["threshold"] > 50} == {"diverged"}
    assert "verified" in render_suggestion(advice) and "UNVERIFIED" not in render_suggestion(advice)


def test_verify_auto_needs_a_log_that_names_its_task():
    with pytest.raises(gradclip.ConfigError, match="names none"):
        suggest(_log(np.ones(30)), verify="auto")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["none", "norm:1.0"])
def test_verified_pick_from_the_demo_logs_trains_within_2x_of_norm_1(tmp_path, method):
    from gradclip.experiments import compare

    compare("regression", [method], [0], log_dir=tmp_path)
    log = tmp_path / f"regression__{method.replace(':', '_')}__seed0.jsonl"
    advice = suggest(log, verify="auto")
    assert advice["recommended"]["verified"]
    check = compare("regression", [advice["recommended"]["spec"], "norm:1.0"], [0, 1, 2])["runs"]
    mean = lambda spec: np.mean([r["final_loss"] for r in check if r["method"] == spec])  # noqa: E731
    assert all(r["outcome"] == "ok" for r in check)
    assert mean(advice["recommended"]["spec"]) <= 2 * mean("norm:1.0")


def test_zclip_short_run_uses_the_whole_run_as_warmup():
    norms = np.array([1.0, 2.0, 3.0])
    assert zclip_end_threshold(norms) == pytest.approx(norms.mean() + 2.5 * norms.std())


def test_several_logs_are_pooled():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0]
    advice = suggest([_log(a, "a"), _log(b, "b")])
    assert advice["steps"] == 5 and advice["logs"] == ["a.jsonl", "b.jsonl"]
    assert advice["candidates"][2]["threshold"] == pytest.approx(np.percentile(a + b, 50))


def test_no_finite_norm_is_a_log_error():
    with pytest.raises(LogError, match="no finite 'norm'"):
        suggest(_log([None, None]))


def test_text_and_json_rendering():
    advice = suggest(_log(np.linspace(0.5, 2.0, 50)))
    text = render_suggestion(advice)
    assert "recommended: norm:2.0 (UNVERIFIED; max_nonspike" in text and "gradclip.GlobalNorm(" in text
    assert json.loads(render_suggestion(advice, as_json=True)) == json.loads(json.dumps(advice))


def _run(argv: list[str]) -> int:
    import argparse

    from gradclip.report._cli import add_suggest_parser, run_suggest

    parser = argparse.ArgumentParser(prog="gradclip")
    add_suggest_parser(parser.add_subparsers(dest="command"))
    return run_suggest(parser.parse_args(argv))


def test_cli_json_output_parses(tmp_path, capsys):
    norms = np.random.default_rng(2).lognormal(0.0, 0.4, 40)
    log = tmp_path / "run.jsonl"
    log.write_text("".join(json.dumps({"step": i, "norm": float(g)}) + "\n" for i, g in enumerate(norms)))
    assert _run(["suggest", str(log), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recommended"]["spec"].startswith("norm:") and len(data["candidates"]) == 9
    assert data["candidates"][0]["threshold"] == pytest.approx(np.percentile(norms, 10))
    assert _run(["suggest", str(log)]) == 0
    assert "recommended:" in capsys.readouterr().out


def test_replay_takes_the_worst_outcome_over_seeds(monkeypatch):
    import gradclip.experiments as experiments
    from gradclip.report._verify import replay

    runs = [{"method": "norm:1.0", "seed": 0, "outcome": "ok", "final_loss": 0.5},
            {"method": "norm:1.0", "seed": 1, "outcome": "diverged", "final_loss": None}]
    monkeypatch.setattr(experiments, "compare", lambda *a, **k: {"runs": runs})
    trial = replay("regression", seeds=(0, 1))(["norm:1.0"])[0]
    assert trial["outcome"] == "diverged" and trial["final_loss"] is None  # one bad seed fails the candidate
