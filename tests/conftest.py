"""Shared helpers for the core and torch-adapter tests (kept small; no fixtures with hidden state)."""

from __future__ import annotations

import os

# Keras picks its backend once, at import. The main test process runs gradclip.keras under
# TensorFlow; tests/test_keras_backends.py runs tests/test_keras.py again under the others.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import pytest
from hypothesis import settings

# Hypothesis profiles: "gradclip" (default, sized for `make test` on 2 cores) and "long" for a local
# soak: `pytest --hypothesis-profile=long tests/test_fuzz.py`. Tests that set max_examples keep theirs.
settings.register_profile("gradclip", deadline=None, max_examples=100)
settings.register_profile("long", deadline=None, max_examples=3000)
settings.load_profile(os.environ.get("GRADCLIP_HYPOTHESIS_PROFILE", "gradclip"))

try:  # the torch helpers below are only used by the torch tests, which skip without torch
    import torch
except ImportError:  # pragma: no cover
    torch = None

_INT_VIEW = (
    {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    if torch is not None
    else {}
)


def assert_bitwise(a, b) -> None:
    """Same dtype, device, shape and bits (every NaN counts as equal to every NaN)."""
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), (type(a), type(b))
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.device == b.device, (a.device, b.device)
    assert a.shape == b.shape, (a.shape, b.shape)
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    assert torch.equal(nan_a, nan_b), "NaN positions differ"
    a0, b0 = torch.where(nan_a, 0, a), torch.where(nan_b, 0, b)
    view = _INT_VIEW.get(a.dtype)
    if view is not None:
        assert torch.equal(a0.view(view), b0.view(view)), f"bits differ:\n{a}\n{b}"
    else:
        assert torch.equal(a0, b0)


def make_params(shapes, dtypes, *, seed: int = 0, scale: float = 1.0, none_at=()):
    """Parameters with random gradients. ``dtypes`` is one dtype or a list cycled over the shapes."""
    if not isinstance(dtypes, (list, tuple)):
        dtypes = [dtypes]
    gen = torch.Generator().manual_seed(seed)
    params = []
    for i, shape in enumerate(shapes):
        dtype = dtypes[i % len(dtypes)]
        p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
        if i not in none_at:
            p.grad = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
        params.append(p)
    return params


def clone_params(params):
    """Independent copies of parameters and their gradients."""
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.detach().clone()
        out.append(q)
    return out


def grads_of(params):
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def assert_same_grads(params_a, params_b) -> None:
    assert len(params_a) == len(params_b)
    for pa, pb in zip(params_a, params_b):
        if pa.grad is None or pb.grad is None:
            assert pa.grad is None and pb.grad is None
        else:
            assert_bitwise(pa.grad, pb.grad)


def to64(tensors):
    """Float64 NumPy copies of tensors (bf16 goes through float32 exactly)."""
    return [t.detach().to(torch.float64).numpy().copy() for t in tensors]  # copy: never share memory


def assert_close_np(actual, expected, rtol: float) -> None:
    """Relative closeness scaled by the largest magnitude of ``expected`` (NaN equal to NaN)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    finite = np.isfinite(expected)
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    assert np.array_equal(actual[~finite & ~np.isnan(expected)], expected[~finite & ~np.isnan(expected)])
    if finite.any():
        scale = float(np.max(np.abs(expected[finite]))) or 1.0
        err = float(np.max(np.abs(actual[finite] - expected[finite])))
        assert err <= rtol * scale, f"max abs error {err} > {rtol} * {scale}"


def tiny_model(seed: int = 0):
    """A 2-layer MLP with gradients from one backward pass (parameter names 0.weight ... 2.bias)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = torch.randn(8, 4)
    (model(x) ** 2).sum().mul(10).backward()
    return model


@pytest.fixture
def model():
    return tiny_model()


def tanh_mlp():
    """A 4-8-2 Tanh MLP, seed 0 (the compile and host-read tests)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def set_scaled_grads(model, step: int, scales, poison: bool = False) -> None:
    """Deterministic gradients of size ``scales[step % len(scales)]`` (no autograd); NaN in one entry with ``poison``."""
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * scales[step % len(scales)]
    if poison:
        model[0].weight.grad[0, 0] = float("nan")
