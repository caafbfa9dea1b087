"""Unusual inputs to the torch adapter: typed errors, torch's wording, each tensor counted once."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402


def _param(values) -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(len(values)))
    p.grad = torch.tensor(values, dtype=torch.float32)
    return p


def _torch_message(values) -> str:
    try:
        torch.nn.utils.clip_grad_norm_([_param(values)], 1.0, error_if_nonfinite=True)
    except RuntimeError as exc:
        return str(exc)
    raise AssertionError("torch did not raise")


@pytest.mark.parametrize("call", [
    lambda ps: gct.clip_grad_norm_(ps, 1.0, error_if_nonfinite=True),
    lambda ps: gct.Clipper("norm:1.0", nonfinite="error").step(ps),
    lambda ps: gct.Clipper("zclip", nonfinite="error").step(ps),
])
def test_nonfinite_error_starts_with_torchs_own_sentence(call):
    first_sentence = _torch_message([1.0, float("nan")]).split(". ")[0] + "."
    with pytest.raises(RuntimeError) as info:
        call([_param([1.0, float("nan")])])
    assert str(info.value).startswith(first_sentence), (str(info.value), first_sentence)
    assert isinstance(info.value, gradclip.NonFiniteError) and "param[0]" in str(info.value)


def _complex_param() -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    p.grad = torch.tensor([3 + 4j, 1j, 0], dtype=torch.complex64)
    return p


@pytest.mark.parametrize("spec", ["norm:1.0", "norm:1.0,norm_type=inf", "pertensor:1.0", "zclip", "autoclip:p=10",
                                  "adagc", "spikeguard", "maxhist:5"])
def test_complex_gradients_are_clipped_by_the_norm_of_their_moduli(spec):
    a, b = _complex_param(), _complex_param()
    stats = gct.Clipper(spec).step([a])
    p = 2.0 if "inf" not in spec else float("inf")
    expected = float(torch.linalg.vector_norm(b.grad, p))
    assert float(stats.norm) == pytest.approx(expected, rel=1e-6)
    assert float(torch.linalg.vector_norm(a.grad, p)) == pytest.approx(float(stats.clipped_norm), rel=1e-5)
    assert torch.allclose(a.grad / a.grad.abs().max(), b.grad / b.grad.abs().max())  # direction kept
    if spec == "norm:1.0":  # the drop-in and torch give the same norm and the same gradients
        c = _complex_param()
        assert float(gct.clip_grad_norm_([c], 1.0)) == pytest.approx(float(torch.nn.utils.clip_grad_norm_([b], 1.0)))
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("spec", ["value:1.0", "agc:0.01"])
def test_complex_gradients_with_a_real_only_policy_are_refused_untouched(spec):
    a = _complex_param()
    before = a.grad.clone()
    with pytest.raises(gradclip.InputTypeError, match="complex"):
        gct.Clipper(spec).step([a])
    assert torch.equal(a.grad, before)


def test_a_tensor_listed_twice_is_counted_once_by_the_clipper():
    w = torch.nn.Parameter(torch.zeros(4))
    w.grad = torch.full((4,), 3.0)
    stats = gct.Clipper("norm:1.0").step([w, w])
    assert float(stats.norm) == pytest.approx(6.0)
    assert float(stats.clipped_norm) == pytest.approx(float(w.grad.norm()), rel=1e-5)
    assert float(w.grad.norm()) == pytest.approx(1.0, rel=1e-5)  # scaled once, not twice


def test_an_exhausted_generator_after_real_steps_warns_once():
    model = torch.nn.Linear(3, 1)
    model(torch.ones(2, 3)).sum().backward()
    clipper = gct.Clipper("norm:1.0")
    params = model.parameters()
    clipper.step(params)
    with pytest.warns(UserWarning, match="exhausted generator"):
        stats = clipper.step(params)  # the generator is used up: no gradient at all
    assert float(stats.norm) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clipper.step(params)  # once is enough
    fresh = gct.Clipper("norm:1.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.step([])  # never saw a gradient: nothing to warn about


@pytest.mark.parametrize(("value", "error"), [("float32", gradclip.InputTypeError), (32, gradclip.InputTypeError),
                                              (torch.int32, gradclip.ConfigError)])
def test_norm_dtype_must_be_a_floating_torch_dtype(value, error):
    w = _param([3.0, 4.0])
    with pytest.raises(error, match="norm_dtype"):
        gct.Clipper("norm:1.0", norm_dtype=value)
    with pytest.raises(error, match="norm_dtype"):
        gct.clip_grad_norm_([w], 1.0, norm_dtype=value)
    with pytest.raises(error, match="norm_dtype"):
        gct.get_total_norm([w.grad], norm_dtype=value)
    assert w.grad.tolist() == [3.0, 4.0]


def test_integer_gradients_get_a_typed_error_and_stay_untouched():
    w = torch.zeros(2, dtype=torch.int64)
    w.grad = torch.tensor([3, 4])
    for call in (lambda: gct.Clipper("norm:1.0").step([w]), lambda: gct.clip_grad_norm_([w], 1.0),
                 lambda: gct.get_total_norm([w.grad])):
        with pytest.raises(gradclip.InputTypeError, match="int64"):
            call()
    assert w.grad.tolist() == [3, 4]
