"""The fast torch path: blocked-dot norms, the CPU scale-skip, one-pass value clipping, flat runs.

Numbers are checked against the float64 oracle (``gradclip._reference``) and, where the fast path
promises torch's exact results (skipping a multiply by 1, one-pass clamps, flat runs), bit for bit
against ``torch.nn.utils``. ``_fast.BLOCK`` is made small so that blocking is exercised on small
tensors. No timing is asserted here: speed is measured by ``benchmarks/``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gradclip  # noqa: E402
import gradclip.torch as gct  # noqa: E402
from gradclip import _reference as ref  # noqa: E402
from gradclip.torch import _fast, _measure  # noqa: E402
from conftest import assert_bitwise, assert_close_np, assert_same_grads, clone_params, make_params, to64  # noqa: E402

TU = torch.nn.utils
SHAPES = [(), (7,), (3, 5), (2, 3, 40), (0,), (130,), (50, 41)]
REL = {torch.float32: 2e-6, torch.float64: 1e-13, torch.bfloat16: 2e-6, torch.float16: 2e-6}


@pytest.fixture(autouse=True)
def small_block(monkeypatch):
    monkeypatch.setattr(_fast, "BLOCK", 64)
    monkeypatch.setattr(_fast, "CONVERT_BLOCK", 48)
    monkeypatch.setattr(_fast, "NORM_BLOCK", 32)
    monkeypatch.setattr(_fast, "DOT_MIN", 20)


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"], autouse=True)
def threads(request):
    """Both kernel choices: torch's norm kernel with one thread, dot products with more."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _flat_params(sizes, dtype=torch.float32, seed=0, scale=1.0):
    """Parameters whose gradients are adjacent views of one buffer, as DDP's bucket views are."""
    gen = torch.Generator().manual_seed(seed)
    buf = (torch.randn(sum(sizes), generator=gen, dtype=torch.float64) * scale).to(dtype)
    params = []
    for g in buf.split(sizes):
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=dtype))
        p.grad = g
        params.append(p)
    return params, buf


# ----------------------------------------------------------------------------- the kernels
@pytest.mark.parametrize("acc", [torch.float32, torch.float64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_sumsq_matches_the_float64_reference(dtype, acc):
    for shape in SHAPES + [(1000,), (8, 8, 9)]:
        g = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
        s = _fast.sumsq(g, acc)
        assert s.dtype == acc and s.ndim == 0
        exact = float((g.double() ** 2).sum())
        assert float(s) == pytest.approx(exact, rel=REL[acc], abs=1e-30)


def test_sumsq_of_a_non_contiguous_tensor_and_of_nonfinite_values():
    g = torch.randn(40, 30).t()
    assert float(_fast.sumsq(g, torch.float32)) == pytest.approx(float((g.double() ** 2).sum()), rel=2e-6)
    assert torch.isnan(_fast.sumsq(torch.tensor([1.0, float("nan")]), torch.float32))
    assert torch.isinf(_fast.sumsq(torch.tensor([1.0, float("-inf")]), torch.float32))


def test_sumsq_scratch_is_safe_across_threads():
    tensors = [torch.randn(1000, dtype=torch.float64).to(torch.bfloat16) * (i + 1) for i in range(4)]
    exact = [float((t.double() ** 2).sum()) for t in tensors]
    out: dict[int, list[float]] = {}

    def work(i):
        out[i] = [float(_fast.sumsq(tensors[i], torch.float32)) for _ in range(50)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert out[i] == pytest.approx([exact[i]] * 50, rel=2e-6)


def test_flat_runs_merge_adjacent_views_only():
    params, buf = _flat_params([5, 7, 3])
    other = torch.randn(4)
    views = [p.grad for p in params]
    runs = _fast.flat_runs(views)
    assert len(runs) == 1 and runs[0].data_ptr() == buf.data_ptr() and runs[0].numel() == 15
    assert len(_fast.flat_runs([views[0], other, views[1], views[2]])) == 3  # a stranger splits the run
    assert len(_fast.flat_runs([views[0], views[2]])) == 2  # a gap
    assert len(_fast.flat_runs([views[1], views[0]])) == 2  # out of order
    strided = buf[:10].view(5, 2).t()
    assert len(_fast.flat_runs([strided, views[2]])) == 2  # not contiguous
    shaped = [g.view(s) for g, s in zip(buf[:10].split([6, 4]), [(2, 3), (2, 2)])]
    assert len(_fast.flat_runs(shaped)) == 1 and _fast.flat_runs(shaped)[0].shape == (10,)


def test_flat_runs_cover_a_slice_of_the_buffer():
    buf = torch.randn(30)
    parts = list(buf[4:20].split([6, 10]))
    (run,) = _fast.flat_runs(parts)
    assert torch.equal(run, buf[4:20])


# ----------------------------------------------------------------------------- drop-ins, fast=True
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_get_total_norm_fast_matches_the_reference_in_the_grads_dtype(dtype):
    grads = [p.grad for p in make_params(SHAPES, dtype, seed=3, scale=2.0)]
    exact = ref.global_norm(to64(grads))
    norm = gct.get_total_norm(grads, fast=True)
    assert norm.dtype == dtype  # torch's result dtype
    rounding = {torch.bfloat16: 4e-3, torch.float16: 5e-4}.get(dtype, REL[dtype])
    assert float(norm) == pytest.approx(exact, rel=rounding)
    wide = gct.get_total_norm(grads, fast=True, norm_dtype=torch.float64)
    assert wide.dtype == torch.float64
    assert float(wide) == pytest.approx(exact, rel=1e-13)


def test_get_total_norm_fast_mixed_dtypes_and_flat_buffers():
    grads = [p.grad for p in make_params(SHAPES, [torch.float32, torch.bfloat16], seed=5)]
    norm = gct.get_total_norm(grads, fast=True)
    assert norm.dtype == torch.float32
    assert float(norm) == pytest.approx(ref.global_norm(to64(grads)), rel=2e-6)
    params, _ = _flat_params([70, 3, 200, 1], seed=1)
    grads = [p.grad for p in params]
    assert float(gct.get_total_norm(grads, fast=True)) == pytest.approx(ref.global_norm(to64(grads)), rel=2e-6)


@pytest.mark.parametrize("norm_type", [1.0, 3.0, float("inf")])
def test_fast_has_no_effect_on_other_norms(norm_type):
    ours, theirs = make_params(SHAPES[:4], torch.float32, seed=1), make_params(SHAPES[:4], torch.float32, seed=1)
    n_ours = gct.clip_grad_norm_(ours, 0.5, norm_type=norm_type, fast=True)
    assert_bitwise(n_ours, TU.clip_grad_norm_(theirs, 0.5, norm_type=norm_type))
    assert_same_grads(ours, theirs)


@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_fast_matches_the_reference(max_norm):
    params = make_params(SHAPES, torch.float32, seed=7, scale=2.0)
    expected, norm = ref.clip_global_norm(to64([p.grad for p in params]), max_norm)
    got = gct.clip_grad_norm_(params, max_norm, fast=True)
    assert float(got) == pytest.approx(norm, rel=2e-6)
    for p, e in zip(params, expected):
        assert_close_np(p.grad.numpy(), e, 4e-6)


def test_fast_must_be_a_bool():
    with pytest.raises(gradclip.ConfigError, match="fast must be True or False. Received: 'yes'"):
        gct.clip_grad_norm_(make_params([(3,)], torch.float32), 1.0, fast="yes")
    with pytest.raises(gradclip.ConfigError, match="or None"):
        gct.Clipper("norm:1.0", fast=1)


# ----------------------------------------------------------------------------- always on: same bits as torch
def _forbid(monkeypatch, name):
    def boom(*args, **kwargs):
        raise AssertionError(f"torch.{name} was called")

    monkeypatch.setattr(torch, name, boom)


@pytest.mark.parametrize("foreach", [None, True, False])
def test_no_clipping_needed_skips_the_scale_pass_on_cpu(monkeypatch, foreach):
    ours = make_params(SHAPES, torch.float32, seed=2)
    theirs = clone_params(ours)
    expected = TU.clip_grad_norm_(theirs, 1e6, foreach=foreach)
    _forbid(monkeypatch, "_foreach_mul_")
    monkeypatch.setattr(torch.Tensor, "mul_", lambda *a, **k: (_ for _ in ()).throw(AssertionError("mul_")))
    assert_bitwise(gct.clip_grad_norm_(ours, 1e6, foreach=foreach), expected)
    assert_same_grads(ours, theirs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nonfinite_coefficient_still_multiplies_like_torch(bad):
    ours = make_params(SHAPES[:4], torch.float32, seed=2)
    ours[1].grad[0] = bad
    theirs = clone_params(ours)
    for max_norm in (1.0, float("inf")):
        assert_bitwise(gct.clip_grad_norm_(ours, max_norm), TU.clip_grad_norm_(theirs, max_norm))
        assert_same_grads(ours, theirs)


@pytest.mark.parametrize("foreach", [None, True])
def test_clipping_flat_buffers_is_bitwise_torch(foreach):
    ours, _ = _flat_params([70, 3, 200, 1, 64], seed=4, scale=3.0)
    theirs = clone_params(ours)
    assert_bitwise(gct.clip_grad_norm_(ours, 1.0, foreach=foreach), TU.clip_grad_norm_(theirs, 1.0, foreach=foreach))
    assert_same_grads(ours, theirs)
    gct.clip_grad_value_(ours, 0.1, foreach=foreach)
    TU.clip_grad_value_(theirs, 0.1, foreach=foreach)
    assert_same_grads(ours, theirs)


def test_value_clipping_is_one_pass_on_cpu_and_bitwise_torch(monkeypatch):
    ours = make_params(SHAPES, [torch.float32, torch.bfloat16], seed=8, scale=2.0)
    ours[2].grad[0, 0] = float("nan")
    theirs = clone_params(ours)
    TU.clip_grad_value_(theirs, 0.5)
    _forbid(monkeypatch, "_foreach_clamp_min_")
    _forbid(monkeypatch, "_foreach_clamp_max_")
    gct.clip_grad_value_(ours, 0.5)
    assert_same_grads(ours, theirs)


# ----------------------------------------------------------------------------- Clipper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_clipper_low_precision_takes_the_fast_norm_by_default(monkeypatch, dtype):
    params = make_params(SHAPES, dtype, seed=4, scale=2.0)
    exact = ref.global_norm(to64([p.grad for p in params]))
    tensor_exact = [ref.global_norm([g]) for g in to64([p.grad for p in params])]
    calls = []
    monkeypatch.setattr(_fast, "sumsqs", lambda ts, acc, f=_fast.sumsqs: calls.append(len(ts)) or f(ts, acc))
    stats = gct.Clipper("norm:1.0").step(params)
    assert calls == [len(SHAPES)]
    assert stats.norm.dtype == torch.float32
    assert float(stats.norm) == pytest.approx(exact, rel=2e-6)
    assert stats.tensor_norms.tolist() == pytest.approx(tensor_exact, rel=2e-6)


def test_clipper_fast_modes():
    params = make_params(SHAPES, torch.float32, seed=6, scale=2.0)
    grads64 = to64([p.grad for p in params])
    expected, norm = ref.clip_global_norm(grads64, 1.0)
    a, b, c = params, clone_params(params), clone_params(params)
    stats = gct.Clipper("norm:1.0", fast=True).step(a)
    assert float(stats.norm) == pytest.approx(norm, rel=2e-6)
    for p, e in zip(a, expected):
        assert_close_np(p.grad.numpy(), e, 4e-6)
    exact_torch = TU.clip_grad_norm_(c, 1.0)
    assert_bitwise(gct.Clipper("norm:1.0", fast=False).step(b).norm, exact_torch)
    assert_same_grads(b, c)


def test_clipper_fast_with_float64_next_to_float32_accumulates_in_float64():
    params = make_params(SHAPES, [torch.float32, torch.float64], seed=9, scale=3.0)
    expected, norm = ref.clip_global_norm(to64([p.grad for p in params]), 1.0)
    stats = gct.Clipper("norm:1.0").step(params)  # fast=None: the float32 group is converted
    assert stats.norm.dtype == torch.float64
    assert float(stats.norm) == pytest.approx(norm, rel=1e-13)


def test_clipper_value_clipped_flag_with_nan_and_outliers():
    (w,) = make_params([(6,)], torch.float32)
    w.grad.copy_(torch.tensor([float("nan"), -5.0, 0.1, 0.2, 0.0, 0.3]))
    stats = gct.Clipper(gradclip.Value(1.0)).step([w])
    assert bool(stats.clipped) and w.grad[1] == -1.0 and torch.isnan(w.grad[0])
    (v,) = make_params([(4,)], torch.float32)
    v.grad.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    assert not bool(gct.Clipper(gradclip.Value(1.0)).step([v]).clipped)
    assert bool(gct.Clipper(gradclip.Value(max=0.25)).step([v]).clipped)


def test_norms_in_order_with_several_groups_keeps_parameter_order():
    params = make_params([(3,), (4,), (5,), (6,)], [torch.float32, torch.bfloat16], seed=2)
    grads = [p.grad for p in params]
    norms = _measure.norms_in_order(grads, 2.0, None, torch.float32)
    assert norms.tolist() == pytest.approx([ref.global_norm([g]) for g in to64(grads)], rel=2e-6)
    assert np.all(np.isfinite(norms.numpy()))


# ----------------------------------------------------------------------------- many tensors, one and two threads
def _many(dtype=torch.float32):
    # 100 small tensors, and a few above torch's grain size (2**15), which torch reduces in parallel
    sizes = [(1 + (i * 37) % 400,) for i in range(100)] + [(40_000,), (5, 9000), (33_000,)]
    return make_params(sizes, dtype, seed=11, scale=2.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_tensors_are_bitwise_torch(threads, dtype):
    ours = _many(dtype=dtype)
    theirs = clone_params(ours)
    assert_bitwise(gct.clip_grad_norm_(ours, 1.0), TU.clip_grad_norm_(theirs, 1.0))
    assert_same_grads(ours, theirs)
    gct.clip_grad_value_(ours, 0.01)
    TU.clip_grad_value_(theirs, 0.01)
    assert_same_grads(ours, theirs)
    grads = [p.grad for p in ours]
    assert_bitwise(gct.get_total_norm(grads, norm_type=3.0), TU.get_total_norm(grads, norm_type=3.0))
