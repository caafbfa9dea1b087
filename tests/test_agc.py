"""AGC (Brock et al. 2021): unit-wise clipping relative to the weights, against the float64 oracle."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip import _reference as ref  # noqa: E402
from gradclip._policies._agc import AGC, unit_axes  # noqa: E402


def _param(shape, seed, scale=1.0, grad_scale=1.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype) * scale)
    p.grad = torch.randn(shape, generator=gen, dtype=dtype) * grad_scale
    return p


SHAPES = [(6, 5), (4, 3, 3, 3), (7,), (), (3, 2, 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("clip_factor", [0.01, 0.1, 1.0])
def test_matches_the_unit_by_unit_oracle(shape, clip_factor):
    p = _param(shape, seed=len(shape), grad_scale=0.3)
    grad0, w = p.grad.numpy().copy(), p.detach().numpy().copy()
    gct.Clipper(AGC(clip_factor)).step([p])
    expected = ref.agc(grad0, w, clip_factor, 1e-3, unit_axes(len(shape), "torch"))
    np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-12, atol=0)


def test_units_under_the_limit_are_bitwise_untouched_and_clipped_units_hit_the_limit():
    p = _param((8, 16), seed=1)
    with torch.no_grad():
        p.grad[:4] *= 1e-4  # rows 0-3 far under λ·‖W_i‖, rows 4-7 far over
    before = p.grad.clone()
    lam = 0.05
    gct.Clipper(AGC(lam)).step([p])
    assert torch.equal(p.grad[:4], before[:4])
    limit = lam * torch.linalg.vector_norm(p.detach(), dim=1)[4:]
    got = torch.linalg.vector_norm(p.grad[4:], dim=1)
    torch.testing.assert_close(got, limit, rtol=1e-12, atol=0)
    # direction of each clipped row is kept
    cos = torch.nn.functional.cosine_similarity(p.grad[4:], before[4:], dim=1)
    torch.testing.assert_close(cos, torch.ones(4, dtype=cos.dtype), rtol=0, atol=1e-12)


def test_never_scales_a_gradient_up():
    p = _param((5, 5), seed=2, grad_scale=1e-6)
    before = p.grad.clone()
    stats = gct.Clipper(AGC(0.01)).step([p])
    assert torch.equal(p.grad, before)
    assert not bool(stats.clipped)
    assert float(stats.clipped_norm) == pytest.approx(float(stats.norm), rel=1e-12)


def test_zero_initialised_weights_still_receive_gradient():
    p = torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))
    p.grad = torch.ones(3, 4, dtype=torch.float64)
    gct.Clipper(AGC(0.01, eps=1e-3)).step([p])
    row_norms = torch.linalg.vector_norm(p.grad, dim=1)
    torch.testing.assert_close(row_norms, torch.full((3,), 0.01 * 1e-3, dtype=torch.float64), rtol=1e-12, atol=0)


def test_torch_layout_equals_the_jax_layout_formula_on_the_transposed_weight():
    p = _param((6, 4), seed=3, grad_scale=0.5)
    g_jax, w_jax = p.grad.numpy().T.copy(), p.detach().numpy().T.copy()  # JAX/Keras kernel [in, out]
    gct.Clipper(AGC(0.05)).step([p])
    expected_jax = ref.agc(g_jax, w_jax, 0.05, 1e-3, unit_axes(2, "jax"))
    np.testing.assert_allclose(p.grad.numpy(), expected_jax.T, rtol=1e-12, atol=0)


def test_clip_stats_report_the_true_post_clip_norm():
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 3)).double()
    model(torch.randn(5, 2, 4, 4, dtype=torch.float64)).pow(2).sum().mul(50).backward()
    stats = gct.Clipper(AGC(0.01)).step(model)
    actual = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert bool(stats.clipped)
    assert float(stats.clipped_norm) == pytest.approx(float(actual), rel=1e-10)
    assert stats.coef is None and stats.threshold == 0.01


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).double()
    model(torch.randn(3, 4, dtype=torch.float64)).sum().mul(100).backward()
    return model


@pytest.mark.parametrize(
    "exclude",
    [("2.weight", "2.bias"), ("2.*",), (torch.nn.Linear,)],
    ids=["names", "glob", "module-type"],
)
def test_excluded_parameters_are_untouched(exclude):
    model = _model()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    gct.Clipper(AGC(0.001, exclude=exclude)).step(model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.grad, before[n])}
    if exclude == (torch.nn.Linear,):
        assert changed == set()
    else:
        assert changed == {"0.weight", "0.bias"}


def test_module_type_exclusion_needs_the_model():
    model = _model()
    with pytest.raises(gradclip.ConfigError, match="Pass the model"):
        gct.Clipper(AGC(0.01, exclude=(torch.nn.Linear,))).step(model.parameters())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("agc:0.01", AGC(0.01)), ("agc:0.02,eps=1e-4", AGC(0.02, eps=1e-4)),
     ("agc:0.05,exclude=head.*|fc.weight", AGC(0.05, exclude=("head.*", "fc.weight")))],
)
def test_spec_strings(spec, expected):
    policy = gradclip.parse_policy(spec)
    assert policy == expected
    assert gradclip.parse_policy(policy.spec()) == policy


@pytest.mark.parametrize(
    "kwargs", [{"clip_factor": 0.0}, {"clip_factor": -0.1}, {"clip_factor": float("nan")},
               {"clip_factor": float("inf")}, {"eps": -1.0}, {"exclude": (3,)}],
)
def test_bad_hyper_parameters_raise(kwargs):
    with pytest.raises(gradclip.ConfigError):
        AGC(**kwargs)


def test_unit_axes_conventions():
    assert unit_axes(2, "torch") == (1,) and unit_axes(2, "jax") == (0,)
    assert unit_axes(4, "torch") == (1, 2, 3) and unit_axes(4, "keras") == (0, 1, 2)
    assert unit_axes(1, "torch") is None and unit_axes(0, "jax") is None
    assert unit_axes(3, "torch", axis=-1) == (2,) and unit_axes(3, "torch", axis=(0, 1)) == (0, 1)


def test_float32_gradients_match_the_oracle_closely():
    p = _param((16, 32), seed=5, grad_scale=0.2, dtype=torch.float32)
    grad0, w = p.grad.numpy().astype(np.float64), p.detach().numpy().astype(np.float64)
    gct.Clipper(AGC(0.02)).step([p])
    np.testing.assert_allclose(p.grad.numpy(), ref.agc(grad0, w, 0.02, 1e-3, (1,)), rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("axis", [1, (0, 1), -1])
def test_axis_survives_its_spec_string_and_runs(axis):
    """``axis=1`` used to come back from its spec as the string '1' and crash the first step."""
    policy = AGC(0.01, axis=axis)
    back = gradclip.parse_policy(policy.spec())
    assert back == policy
    model = _model()
    gct.Clipper(back).step(model)


def test_exclude_by_type_has_no_spec_string():
    policy = AGC(0.01, exclude=(torch.nn.Linear,))
    with pytest.raises(gradclip.ConfigError, match=r"has no spec string: exclude by type \(Linear\)"):
        policy.spec()


@pytest.mark.parametrize("name", ["a+b", "a,b", "a|b"])
def test_exclude_with_a_separator_has_no_spec_string_and_a_glob_does(name):
    with pytest.raises(gradclip.ConfigError, match="glob pattern"):
        AGC(exclude=(name,)).spec()
    glob = AGC(exclude=(name.replace(name[1], "?"),))
    assert gradclip.parse_policy(glob.spec()) == glob and glob.excluded(name)


def test_keras_wrap_refuses_exclude_by_layer_type():
    """Keras' optimizer sees variables, not layers: a type used to be ignored without a word."""
    keras = pytest.importorskip("keras")
    import gradclip.keras as gck

    for policy in (AGC(exclude=(keras.layers.Dense,)), gradclip.chain(AGC(exclude=(keras.layers.Dense,)),
                                                                       gradclip.GlobalNorm(1.0))):
        with pytest.raises(gradclip.ConfigError, match="cannot exclude by type. Received: exclude=\\(Dense,\\)"):
            gck.wrap(keras.optimizers.SGD(0.1), policy)
    gck.wrap(keras.optimizers.SGD(0.1), AGC(exclude=("dense/*",)))  # names and globs pass
