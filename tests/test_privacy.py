"""gradclip.privacy: DP-SGD parity with Opacus 1.6, the float64 formulas, accounting, errors."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
opacus = pytest.importorskip("opacus")

import gradclip.privacy as gp
from gradclip._errors import ConfigError, InputTypeError
from gradclip.privacy import PrivateStep, clip_coef

B, D_IN, D_OUT = 8, 5, 3


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, 7), torch.nn.Tanh(), torch.nn.Linear(7, D_OUT))


def _data(seed: int = 1, n: int = B, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g) * scale
    y = torch.randint(0, D_OUT, (n,), generator=g)
    return x, y


def _losses(model, x, y):
    return torch.nn.functional.cross_entropy(model(x), y, reduction="none")


def _ours(model, *, steps_data, lr=1.0, **kw) -> torch.nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    kw.setdefault("noise_multiplier", 0.0)
    kw.setdefault("expected_batch_size", B)
    with PrivateStep(model, opt, **kw) as step:
        for batches in steps_data:
            for x, y in batches:
                step.backward(_losses(model, x, y))
            step.step()
    return model


def _opacus(model, x, y, *, C, sigma=0.0, clipping="flat", mode="hooks", seed=None, steps=1, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=B)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = opacus.PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=sigma, max_grad_norm=C,
            poisson_sampling=False, clipping=clipping, grad_sample_mode=mode, noise_generator=gen,
            criterion=torch.nn.CrossEntropyLoss(), **kw)
    dp_model, dp_opt = out[0], out[1]
    model.dp_optimizer = dp_opt
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    for _ in range(steps):
        dp_opt.zero_grad()
        out_ = dp_model(x)
        if mode == "ghost":
            loss = out[2](out_, y)
        else:
            loss = torch.nn.functional.cross_entropy(out_, y)
        loss.backward()
        dp_opt.step()
    return model


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


# --- parity with Opacus 1.6 -------------------------------------------------------------------

@pytest.mark.parametrize("C", [0.1, 1.0, 100.0])
def test_flat_matches_opacus_hooks(C):
    x, y = _data()
    ref = _opacus(_mlp(), x, y, C=C)
    ours = _ours(_mlp(), steps_data=[[(x, y)]], max_grad_norm=C)
    assert _max_diff(ours, ref) < 1e-6


def test_flat_matches_opacus_ghost():
    x, y = _data()
    try:
        ref = _opacus(_mlp(), x, y, C=0.5, mode="ghost")
    except Exception as exc:  # noqa: BLE001  # pragma: no cover - depends on the Opacus build
        pytest.skip(f"Opacus ghost clipping does not run here: {exc}")
    for ghost in (None, True):
        ours = _ours(_mlp(), steps_data=[[(x, y)]], max_grad_norm=0.5, ghost=ghost)
        assert _max_diff(ours, ref) < 1e-6


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("C", [0.1, 10.0])
def test_cnn_with_groupnorm_matches_opacus(C):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(B, 2, 6, 6, generator=g), torch.randint(0, 3, (B,), generator=g)
    ref = _opacus(_cnn(), x, y, C=C, sigma=1.0, seed=3, steps=2)
    ours = _ours(_cnn(), steps_data=[[(x, y)], [(x, y)]], max_grad_norm=C, noise_multiplier=1.0,
                 generator=torch.Generator().manual_seed(3))
    assert _max_diff(ours, ref) < 1e-6


def test_float64_model_matches_opacus():
    x, y = _data()
    ref = _opacus(_mlp().double(), x.double(), y, C=0.5)
    ours = _ours(_mlp().double(), steps_data=[[(x.double(), y)]], max_grad_norm=0.5)
    assert _max_diff(ours, ref) < 1e-12


def test_per_layer_matches_opacus():
    x, y = _data()
    cs = [0.3, 0.2, 0.5, 0.1]
    ref = _opacus(_mlp(), x, y, C=cs, clipping="per_layer")
    ours = _ours(_mlp(), steps_data=[[(x, y)]], max_grad_norm=cs, mode="per_layer")
    assert _max_diff(ours, ref) < 1e-6
    names = [n for n, _ in _mlp().named_parameters()]
    ours_dict = _ours(_mlp(), steps_data=[[(x, y)]], max_grad_norm=dict(zip(names, cs)), mode="per_layer")
    assert _max_diff(ours_dict, ref) < 1e-6


@pytest.mark.parametrize("clipping", ["flat", "per_layer"])
def test_noisy_steps_match_opacus_with_the_same_generator(clipping):
    # Same generator seed, same draw order (optimizer's parameter order): the noise is identical.
    x, y = _data()
    C = 0.5 if clipping == "flat" else [0.5, 0.1, 0.2, 0.3]
    ref = _opacus(_mlp(), x, y, C=C, sigma=1.3, clipping=clipping, seed=7, steps=2)
    gen = torch.Generator().manual_seed(7)
    ours = _ours(_mlp(), steps_data=[[(x, y)], [(x, y)]], max_grad_norm=C, noise_multiplier=1.3,
                 mode=clipping, generator=gen)
    assert _max_diff(ours, ref) < 1e-6


def test_adaptive_clipping_matches_opacus_adaclip():
    # Same bound sequence and noise as Opacus's AdaClipDPOptimizer over three noisy steps.
    x, y = _data()
    ada = {"target_unclipped_quantile": 0.5, "clipbound_learning_rate": 0.2, "max_clipbound": 10.0,
               "min_clipbound": 0.01, "unclipped_num_std": 1.0}
    ref = _opacus(_mlp(), x, y, C=0.5, sigma=1.0, clipping="adaptive", seed=5, steps=3, **ada)
    clip = gp.AdaptiveClip(target_quantile=0.5, learning_rate=0.2, count_noise_multiplier=1.0,
                           initial=0.5, min_clip=0.01, max_clip=10.0)
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    step = PrivateStep(model, opt, adaptive=clip, noise_multiplier=1.0, expected_batch_size=B,
                       generator=torch.Generator().manual_seed(5))
    for _ in range(3):
        step.backward(_losses(model, x, y))
        step.step()
    assert abs(step.max_grad_norm - float(ref.dp_optimizer.max_grad_norm)) < 1e-6
    assert step.max_grad_norm != 0.5
    assert _max_diff(model, ref) < 1e-6
    step.close()


# --- each semantics against its formula in float64 -------------------------------------------

def _ref_coef(n: np.ndarray, C: float, semantics: str) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        if semantics == "opacus":
            return np.minimum(C / (n + 1e-6), 1.0)
        if semantics == "optax":
            return np.nan_to_num(np.minimum(C / n, 1.0), nan=1.0)
        return C * np.minimum(1.0 / n, 1.0 / C) + (n - n)


@pytest.mark.parametrize("semantics", ["opacus", "optax", "tf"])
def test_clip_coef_matches_float64_formula(semantics):
    n = np.array([0.0, 1e-9, 0.3, 1.0, 1.0 + 1e-7, 2.5, 1e30, np.inf, np.nan])
    got = clip_coef(torch.tensor(n, dtype=torch.float64), 1.0, semantics).numpy()
    np.testing.assert_allclose(got, _ref_coef(n, 1.0, semantics), rtol=1e-15, atol=0)
    assert np.all((got[:-2] >= 0) & (got[:-2] <= 1))


def _per_example_grads64(model, x, y):
    """Each example's gradient, one backward per example on a float64 copy: the reference."""
    ref64 = copy.deepcopy(model).double()
    per_ex = []
    for i in range(B):
        loss = _losses(ref64, x[i:i + 1].double(), y[i:i + 1]).sum()
        per_ex.append([g.detach() for g in torch.autograd.grad(loss, list(ref64.parameters()))])
    return per_ex


@pytest.mark.parametrize("semantics", ["opacus", "optax", "tf"])
def test_accumulated_grad_matches_float64_reference(semantics):
    model, (x, y) = _mlp(), _data()
    per_ex = _per_example_grads64(model, x, y)
    norms = np.array([math.sqrt(sum(float(g.pow(2).sum()) for g in gs)) for gs in per_ex])
    C = float(np.median(norms))
    coef = _ref_coef(norms, C, semantics)
    assert 0 < (coef < 1 - 1e-9).sum() < B  # some clipped, some not
    want = [sum(coef[i] * per_ex[i][j] for i in range(B)) for j in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with PrivateStep(model, opt, max_grad_norm=C, noise_multiplier=0.0, expected_batch_size=B,
                     semantics=semantics) as step:
        step.backward(_losses(model, x, y))
        for p, w in zip(model.parameters(), want):
            torch.testing.assert_close(p.grad.double(), w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("semantics", ["opacus", "optax", "tf"])
def test_per_layer_grad_matches_float64_reference(semantics):
    model, (x, y) = _mlp(), _data()
    per_ex = _per_example_grads64(model, x, y)
    norms = np.array([[float(g.norm()) for g in gs] for gs in per_ex])  # (B, P)
    cs = np.median(norms, axis=0)
    coef = _ref_coef(norms, cs[None, :], semantics)
    want = [sum(coef[i, j] * per_ex[i][j] for i in range(B)) for j in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with PrivateStep(model, opt, max_grad_norm=[float(c) for c in cs], noise_multiplier=0.0,
                     expected_batch_size=B, mode="per_layer", semantics=semantics) as step:
        step.backward(_losses(model, x, y))
        for p, w in zip(model.parameters(), want, strict=True):
            torch.testing.assert_close(p.grad.double(), w, rtol=1e-5, atol=1e-6)


# --- accumulation, noise, accounting ----------------------------------------------------------

def test_two_micro_batches_equal_one_batch():
    x, y = _data()
    whole = _ours(_mlp(), steps_data=[[(x, y)]], max_grad_norm=0.4)
    split = _ours(_mlp(), steps_data=[[(x[:3], y[:3]), (x[3:], y[3:])]], max_grad_norm=0.4)
    assert _max_diff(whole, split) < 1e-6


def test_noise_std_is_sigma_c_over_batch():
    torch.manual_seed(0)
    model = torch.nn.Linear(200, 100)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sigma, C, batch = 2.0, 0.5, 4
    step = PrivateStep(model, opt, max_grad_norm=C, noise_multiplier=sigma, expected_batch_size=batch,
                       generator=torch.Generator().manual_seed(3))
    step.step()  # no examples: only noise
    delta = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])
    assert abs(delta.std().item() / (sigma * C / batch) - 1) < 0.03
    assert abs(delta.mean().item()) < 0.01
    assert step.last_stats().noise_std == sigma * C
    step.close()


def test_epsilon_equals_opacus_rdp_accountant():
    from opacus.accountants import RDPAccountant

    x, y = _data()
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sigma, q, delta = 1.1, 0.01, 1e-5
    step = PrivateStep(model, opt, max_grad_norm=1.0, noise_multiplier=sigma, expected_batch_size=B,
                       sample_rate=q, delta=delta, generator=torch.Generator().manual_seed(0))
    acc = RDPAccountant()
    for _ in range(3):
        step.backward(_losses(model, x, y))
        step.step()
        acc.step(noise_multiplier=sigma, sample_rate=q)
    assert step.epsilon(delta) == acc.get_epsilon(delta=delta)
    assert step.last_stats().epsilon == acc.get_epsilon(delta=delta)
    assert step.accountant.history == acc.history
    step.close()


def test_epsilon_equals_opacus_prv_accountant():
    from opacus.accountants import PRVAccountant

    model = _mlp()
    step = PrivateStep(model, torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=1.0,
                       noise_multiplier=0.9, expected_batch_size=B, sample_rate=0.02,
                       accountant="prv")
    acc = PRVAccountant()
    for _ in range(5):
        step.step()
        acc.step(noise_multiplier=0.9, sample_rate=0.02)
    assert step.epsilon(1e-5) == acc.get_epsilon(delta=1e-5)
    step.close()


def test_last_stats_reports_the_step():
    x, y = _data()
    model = _mlp()
    step = PrivateStep(model, torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=0.5,
                       noise_multiplier=0.0, expected_batch_size=B)
    assert step.last_stats() is None
    loss = step.backward(_losses(model, x, y))
    assert loss.ndim == 0
    step.step()
    s = step.last_stats()
    assert (s.steps, s.batch_size, s.max_grad_norm, s.epsilon) == (1, B, 0.5, None)
    assert 0 <= s.fraction_clipped <= 1 and s.norm_p10 <= s.norm_p50 <= s.norm_p90
    assert all(p.grad is None for p in model.parameters())
    step.close()


@pytest.mark.parametrize("mode", ["flat", "per_layer"])
def test_fraction_clipped_counts_norms_above_c(mode):
    x, y = _data()
    got = []
    for C in (1e-4, 1e4):
        model = _mlp()
        with PrivateStep(model, torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=C,
                         noise_multiplier=0.0, expected_batch_size=B, mode=mode) as step:
            step.backward(_losses(model, x[:3], y[:3]))
            step.backward(_losses(model, x[3:], y[3:]))
            step.step()
            got.append((step.last_stats().fraction_clipped, step.last_stats().batch_size))
    assert got == [(1.0, B), (0.0, B)]


def test_empty_poisson_batch_adds_only_noise():
    x, y = _data()
    model = _mlp()
    step = PrivateStep(model, torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=0.5,
                       noise_multiplier=0.0, expected_batch_size=B)
    loss = step.backward(_losses(model, x[:0], y[:0]))
    assert loss.item() == 0.0
    before = [p.detach().clone() for p in model.parameters()]
    step.step()
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert step.last_stats().batch_size == 0
    # The next (non-empty) micro-batch works as usual.
    step.backward(_losses(model, x, y))
    step.step()
    assert step.last_stats().batch_size == B
    step.close()


def test_poisson_loader_samples_each_example_independently():
    data = torch.utils.data.TensorDataset(torch.arange(1000.0))
    loader = gp.poisson_loader(data, 0.05, generator=torch.Generator().manual_seed(0))
    sizes = [len(b[0]) for b in loader]
    assert len(sizes) == 20 and len(set(sizes)) > 1 and abs(np.mean(sizes) - 50) < 10


# --- bad input: typed one-line errors, nothing changed -----------------------------------------

@pytest.mark.parametrize("kw, err", [
    ({"noise_multiplier": -0.1}, ConfigError),
    ({"noise_multiplier": float("nan")}, ConfigError),
    ({"max_grad_norm": 0.0}, ConfigError),
    ({"max_grad_norm": -1.0}, ConfigError),
    ({"max_grad_norm": float("nan")}, ConfigError),
    ({"max_grad_norm": "1"}, InputTypeError),
    ({"max_grad_norm": [1.0, 1.0]}, InputTypeError),          # a list needs mode="per_layer"
    ({"max_grad_norm": [1.0, 1.0], "mode": "per_layer"}, ConfigError),  # 4 parameters
    ({"expected_batch_size": 0}, ConfigError),
    ({"expected_batch_size": 2.5}, ConfigError),
    ({"expected_batch_size": True}, ConfigError),
    ({"sample_rate": 1.5}, ConfigError),
    ({"semantics": "jax"}, ConfigError),
    ({"mode": "layer"}, ConfigError),
    ({"accountant": "moments"}, ConfigError),
    ({"generator": 0}, InputTypeError),
    ({"adaptive": object()}, InputTypeError),
    ({"mode": "per_layer", "adaptive": gp.AdaptiveClip(initial=1.0)}, ConfigError),
    ({"max_grad_norm": 2.0, "adaptive": gp.AdaptiveClip(initial=1.0)}, ConfigError),
    ({"noise_multiplier": 3.0, "adaptive": gp.AdaptiveClip(count_noise_multiplier=1.0)}, ConfigError),
])
def test_bad_config_raises_before_anything_changes(kw, err):
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = {"max_grad_norm": 1.0, "noise_multiplier": 1.0, "expected_batch_size": B} | kw
    with pytest.raises(err) as info:
        PrivateStep(model, opt, **args)
    assert "\n" not in str(info.value) and "received" in str(info.value).lower()
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_batchnorm_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    with pytest.raises(ConfigError):
        PrivateStep(model, torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=1.0,
                    noise_multiplier=1.0, expected_batch_size=4)


def test_optimizer_must_hold_the_model_parameters():
    model = _mlp()
    opt = torch.optim.SGD(list(model.parameters())[:2], lr=0.1)
    with pytest.raises(ConfigError, match="optimizer"):
        PrivateStep(model, opt, max_grad_norm=1.0, noise_multiplier=1.0, expected_batch_size=B)


@pytest.mark.parametrize("bad", ["scalar", "2d", "int", "list"])
def test_bad_losses_leave_grads_untouched(bad):
    x, y = _data()
    model = _mlp()
    step = PrivateStep(model, torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=0.5,
                       noise_multiplier=0.0, expected_batch_size=B)
    step.backward(_losses(model, x, y))
    grads = [p.grad.clone() for p in model.parameters()]
    losses = _losses(model, x, y)
    value = {"scalar": losses.mean(), "2d": losses[:, None], "int": y, "list": losses.tolist()}[bad]
    with pytest.raises((ConfigError, InputTypeError)) as info:
        step.backward(value)
    assert "\n" not in str(info.value)
    for p, g in zip(model.parameters(), grads):
        assert torch.equal(p.grad, g)
    step.close()


def test_epsilon_needs_sample_rate_and_a_valid_delta():
    model = _mlp()
    step = PrivateStep(model, torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=1.0,
                       noise_multiplier=1.0, expected_batch_size=B)
    with pytest.raises(ConfigError, match="sample_rate"):
        step.epsilon(1e-5)
    with pytest.raises(ConfigError, match="delta"):
        step.epsilon(0.0)
    step.close()
