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
    for p in (10, 25, 50, 90):
        assert cands[f"p{p}"]["threshold"] == pytest.approx(np.percentile(norms, p), rel=1e-12)
    assert cands["mean_x5"]["threshold"] == pytest.approx(5 * norms.mean())
    assert cands["mean_x10"]["threshold"] == pytest.approx(10 * norms.mean())
    assert cands["zclip_z2.5"]["threshold"] == pytest.approx(_zclip_by_hand(norms), rel=1e-9)
    for c in advice["candidates"]:
        assert c["fraction_clipped"] == pytest.approx(np.mean(norms > c["threshold"]))
    assert advice["steps"] == 300 and advice["nonfinite_steps"] == 0
    assert advice["norm"]["mean"] == pytest.approx(norms.mean())


def test_stable_run_recommends_p90_and_the_spec_is_usable():
    norms = np.random.default_rng(1).lognormal(0.0, 0.3, 200)
    advice = suggest(_log(norms))
    rec = advice["recommended"]
    assert not advice["exploded"] and rec["name"] == "p90"
    assert rec["threshold"] == pytest.approx(np.percentile(norms, 90), rel=5e-3)
    assert rec["fraction_clipped"] == pytest.approx(np.mean(norms > rec["threshold"]))
    policy = gradclip.parse_policy(rec["spec"])
    assert isinstance(policy, gradclip.GlobalNorm) and policy.max_norm == rec["threshold"]
    assert rec["python"] == f"gradclip.torch.Clipper(gradclip.GlobalNorm({rec['threshold']!r}))"
    assert rec["reason"].endswith(".") and "90th percentile" in rec["reason"]


def test_python_line_runs():
    pytest.importorskip("torch")
    import gradclip.torch  # noqa: F401

    rec = suggest(_log([1.0, 2.0, 3.0, 4.0]))["recommended"]
    clipper = eval(rec["python"], {"gradclip": gradclip})  # noqa: S307 - our own generated line
    assert type(clipper).__name__ == "Clipper"


def test_exploding_run_recommends_p10_and_ignores_nulls():
    norms = [1.0, 1.2, 0.9, 1.1, 1.0, 5.0, 1e3, 1e6, None, None]
    advice = suggest(_log(norms))
    finite = np.array([g for g in norms if g is not None])
    assert advice["exploded"] and advice["nonfinite_steps"] == 2 and advice["steps"] == 8
    assert advice["recommended"]["name"] == "p10"
    assert advice["candidates"][0]["threshold"] == pytest.approx(np.percentile(finite, 10))
    assert advice["recommended"]["adaptive_spec"] == "autoclip:10"


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
    assert "recommended: p90" in text and "policy spec: norm:" in text and "gradclip.GlobalNorm(" in text
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
    assert data["recommended"]["spec"].startswith("norm:") and len(data["candidates"]) == 7
    assert data["candidates"][0]["threshold"] == pytest.approx(np.percentile(norms, 10))
    assert _run(["suggest", str(log)]) == 0
    assert "recommended:" in capsys.readouterr().out
