"""Monitor records of DP-SGD steps: the ``dp`` object from a real PrivateStep, in every sink and back."""

from __future__ import annotations

import csv
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("opacus")

from gradclip._errors import ConfigError, InputTypeError
from gradclip.monitor import SCALAR_KEYS, Monitor, read_jsonl, scalars
from gradclip.monitor._record import DP_KEYS
from gradclip.privacy import AdaptiveClip, PrivateStep


def _train(monitor, steps=4, adaptive=None, delta=1e-5, how="stats"):
    """A tiny DP-SGD run; ``monitor.step`` after each ``PrivateStep.step``. Returns the PrivacyStats seen."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs = {"adaptive": adaptive} if adaptive is not None else {"max_grad_norm": 0.5}
    seen = []
    with PrivateStep(model, opt, noise_multiplier=1.0, expected_batch_size=16, sample_rate=0.05, delta=delta,
                     generator=torch.Generator().manual_seed(1), **kwargs) as step:
        for _ in range(steps):
            x, y = torch.randn(16, 4), torch.randn(16, 1)
            losses = torch.nn.functional.mse_loss(model(x), y, reduction="none").mean(1)
            loss = step.backward(losses)
            step.step()
            seen.append(step.last_stats())
            monitor.step(privacy=step if how == "step" else step.last_stats(), loss=loss, lr=0.1)
    return seen


def test_dp_record_from_a_real_private_step_in_jsonl_and_csv(tmp_path):
    got = []
    with Monitor(sinks=[f"jsonl:{tmp_path / 'a.jsonl'}", f"csv:{tmp_path / 'a.csv'}", got.append]) as monitor:
        seen = _train(monitor)
    assert [tuple(r["dp"]) for r in got] == [DP_KEYS] * 4
    for r, s in zip(got, seen):
        assert r["dp"] == {"fraction_clipped": s.fraction_clipped, "norm_p10": s.norm_p10, "norm_p50": s.norm_p50,
                           "norm_p90": s.norm_p90, "clip": s.max_grad_norm, "epsilon": s.epsilon}
        assert 0 <= r["dp"]["fraction_clipped"] <= 1 and r["dp"]["norm_p10"] <= r["dp"]["norm_p90"]
        # per-example clipping has no global norm: missing (not null, which reads as non-finite)
        assert "norm" not in r and r["threshold"] == 0.5 and r["nonfinite"] is False
        assert r["clipped"] == (s.fraction_clipped > 0)
    eps = [r["dp"]["epsilon"] for r in got]
    assert all(e > 0 for e in eps) and eps == sorted(eps)
    assert read_jsonl(tmp_path / "a.jsonl").records == got  # the reader keeps them
    with open(tmp_path / "a.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == SCALAR_KEYS and len(rows) == 4
    for row, r in zip(rows, got):
        assert {k: json.loads(row[f"dp.{k}"]) for k in DP_KEYS} == r["dp"]


def test_adaptive_clip_moves_and_private_step_itself_is_accepted():
    got = []
    with Monitor(sinks=[got.append]) as monitor:
        _train(monitor, steps=5, adaptive=AdaptiveClip(initial=5.0, learning_rate=0.5), delta=None, how="step")
    clips = [r["dp"]["clip"] for r in got]
    assert clips[0] == 5.0 and len(set(clips)) > 1  # C moves; the C of each step is the one it used
    assert all(r["dp"]["epsilon"] is None for r in got)  # no delta: no epsilon


def test_dp_scalars_for_dashboards_and_tensorboard(tmp_path):
    record = {"step": 0, "dp": {"fraction_clipped": 0.25, "norm_p10": 0.1, "norm_p50": 0.5, "norm_p90": 2.0,
                                "clip": 1.0, "epsilon": None}}
    assert scalars(record) == {"dp/fraction_clipped": 0.25, "dp/norm_p10": 0.1, "dp/norm_p50": 0.5,
                               "dp/norm_p90": 2.0, "dp/clip": 1.0}
    pytest.importorskip("tensorboardX")
    from test_sinks import _events

    got = []
    with Monitor(sinks=[f"tensorboard:{tmp_path / 'tb'}", got.append]) as monitor:
        _train(monitor, steps=2)
    written = {(v.tag, e.step): v.simple_value for e in _events(tmp_path / "tb") for v in e.summary.value}
    for r in got:
        for key in DP_KEYS:
            assert written[(f"dp/{key}", r["step"])] == pytest.approx(r["dp"][key], rel=1e-6)


def test_dp_with_a_clipper_record_and_bad_privacy_values():
    import gradclip.torch as gct

    got = []
    model = torch.nn.Linear(3, 1)
    model(torch.ones(2, 3)).sum().backward()
    dp = {"fraction_clipped": 0.5, "norm_p10": 0.1, "norm_p50": 0.2, "norm_p90": float("nan"), "clip": 1.0}
    with Monitor(sinks=[got.append]) as monitor:
        monitor.step(model, clip_stats=gct.Clipper("norm:1.0").step(model), privacy=dp)
        with pytest.raises(InputTypeError, match="privacy"):
            monitor.step(privacy=3.0)
        with pytest.raises(InputTypeError, match="without"):
            monitor.step(privacy={"clip": 1.0})
        with pytest.raises(InputTypeError, match="privacy.clip"):
            monitor.step(privacy={**dp, "clip": "1.0"})
        with pytest.raises(ConfigError):
            monitor.step()
    assert len(got) == 1 and got[0]["norm"] is not None  # the clipper's values stay
    assert got[0]["dp"] == {**dp, "norm_p90": None, "epsilon": None}
