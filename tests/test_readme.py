"""README's "Write your own policy" runs as written, and its policy runs in the adapters."""

from __future__ import annotations

import doctest
import pathlib

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## Write your own policy"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no section {HEADING!r}"
    body = text.split(HEADING, 1)[1]
    return body.split("\n## ", 1)[0]


def _run_section() -> dict:
    """Run the section's ``>>>`` examples as a doctest; return the names they defined."""
    globs: dict = {"__name__": "readme"}
    test = doctest.DocTestParser().get_doctest(_section(), globs, "README: write your own policy", str(README), 0)
    assert test.examples, "the section has no >>> examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test, clear_globs=False)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} README example(s) failed (see the output above)"
    return test.globs


def test_readme_custom_policy_section_runs_as_a_doctest():
    globs = _run_section()
    assert "FractionOfMax" in globs


def _numpy_steps(policy, norms):
    """``[threshold, coef, threshold, coef, ...]`` of the policy's NumPy decisions on these norms."""
    from gradclip.policy import Measurement, NumpyOps

    state = policy.init_state(np.float32(0.0), NumpyOps)
    out = []
    for n in norms:
        d, state = policy.decide(Measurement(norm=np.float32(n), finite=np.True_), state, NumpyOps)
        out.extend([float(d.threshold), float(d.coef)])
    return out


def test_readme_policy_runs_in_the_torch_clipper_and_clipped_optimizer():
    torch = pytest.importorskip("torch")
    import gradclip.torch as gct

    policy = _run_section()["FractionOfMax"](0.5)
    w = torch.nn.Parameter(torch.zeros(3))
    clipper = gct.Clipper(policy)
    got, norms = [], []
    for scale in [4.0, 2.0, 10.0]:
        w.grad = torch.tensor([scale, 0.0, 0.0])
        stats = clipper.step([w])
        norms.append(scale)
        got.extend([float(stats.threshold), float(stats.coef)])
        assert torch.allclose(w.grad, torch.tensor([scale * float(stats.coef), 0.0, 0.0]))
    assert got == pytest.approx(_numpy_steps(policy, norms))
    assert clipper.last_stats() is stats
    assert float(clipper.state_dict()["state"]["max"]) == 10.0

    opt = gct.clipped(torch.optim.SGD([w], lr=0.1), policy)
    w.grad = torch.tensor([4.0, 0.0, 0.0])
    opt.step()
    assert float(opt.last_stats().clipped_norm) == pytest.approx(2.0)


def test_readme_policy_runs_in_the_tensorflow_clipper():
    tf = pytest.importorskip("tensorflow")
    import gradclip.tensorflow as gtf

    policy = _run_section()["FractionOfMax"](0.5)
    w = tf.Variable([0.0, 0.0], name="w")
    clipper = gtf.Clipper(policy)
    @tf.function
    def step(g):
        stats = clipper([g], [w])[1]
        return stats.threshold, stats.coef

    got = [float(v) for scale in [4.0, 2.0, 10.0] for v in step(tf.constant([scale, 0.0]))]
    assert got == pytest.approx(_numpy_steps(policy, [4.0, 2.0, 10.0]))
    assert float(clipper.last_stats().threshold) == pytest.approx(5.0)


def test_readme_policy_runs_in_a_keras_clipped_optimizer():
    keras = pytest.importorskip("keras")
    import gradclip.keras as gck

    policy = _run_section()["FractionOfMax"](0.5)
    opt = gck.clipped(keras.optimizers.SGD(0.1), policy)
    var = keras.Variable(np.zeros((2,), np.float32), name="w")
    got = []
    for scale in [4.0, 2.0, 10.0]:
        opt.apply([keras.ops.convert_to_tensor(np.array([scale, 0.0], np.float32))], [var])
        stats = opt.last_stats()
        got.extend([float(stats.threshold), float(stats.coef)])
    assert got == pytest.approx(_numpy_steps(policy, [4.0, 2.0, 10.0]))
