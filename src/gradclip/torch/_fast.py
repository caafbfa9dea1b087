"""Fast CPU kernels for the torch "measure" and "apply" steps, chosen by measurement.

Clipping is memory-bound, so every kernel here is picked for the bytes it moves and the calls it
makes. Measured with torch 2.13 on a 2-core AMD EPYC (``benchmarks/``, ``BENCHMARKS.md``):

- **Squared 2-norm.** ``torch.dot`` of a flat tensor with itself reads at 24-26 GB/s with 2
  threads, torch's norm kernel at ~16 GB/s (about the same with 1 thread). Taken in blocks of
  ``BLOCK`` = 2**22 elements, the float32 error stays near 1e-5 of the norm on a 38M-element
  tensor, where torch's kernel is off by ~3e-3 and one dot over all of it by ~3e-4. Blocks are
  not smaller because every call opens a parallel region, and on a busy machine each one can
  wait a scheduler time slice for its second thread; for the same reason tensors under
  ``DOT_MIN`` = 2**16 elements take torch's foreach norm (MKL threads even small dots, torch
  does not). With one thread ``dot`` is 10-25% slower than torch's norm kernel, so there torch's
  kernel runs, in blocks of ``NORM_BLOCK`` = 2**20 (for accuracy).
- **bf16/fp16 gradients, float32 norm.** ``vector_norm(g, dtype=torch.float32)`` takes torch's
  casting path, ~13x slower than the bf16 norm. Converting ``CONVERT_BLOCK`` = 2**21 elements at
  a time into a float32 scratch buffer that stays in the last-level cache, and taking the dot
  there, costs about what the bf16 norm costs (with 2 threads; ~2x with 1).
- **Many small tensors.** Gradients that are adjacent views of one buffer (a flat gradient
  buffer, DDP's ``gradient_as_bucket_view``) are processed as one flat tensor: one kernel instead
  of one per tensor (~5 µs each).
- **Value clipping.** One ``clamp_(lo, hi)`` per tensor reads and writes once; foreach
  ``clamp_min_`` then ``clamp_max_`` does it twice.
- **Not done: Python threads across small tensors.** torch runs a tensor under 2**15 elements on
  one thread, so 2000 small gradients use one core of two. Splitting a foreach call across a
  thread pool looked 1.3-2x faster in isolation, but each pool thread that touches a larger tensor
  starts its own OpenMP team: measured interleaved with torch, the split call was 2.3x slower
  than torch's and left torch's next calls 2.7x slower (oversubscribed cores). Rejected.

Everything here is elementwise-identical to torch's kernels except the norm (another summation
order), which callers use only when asked (``fast=True``) or where torch would have to convert.
"""

from __future__ import annotations

import threading

import torch

from gradclip._errors import ConfigError

BLOCK = 1 << 22
CONVERT_BLOCK = 1 << 21
NORM_BLOCK = 1 << 20
DOT_MIN = 1 << 16
_REAL = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ACC = (torch.float32, torch.float64)
_local = threading.local()

#: Whether the CPU path may read a value on the host to take a shortcut (skip a multiply by exactly
#: 1, look for offenders only when the norm is non-finite). On the CPU such a read waits for no
#: device, so a branch is cheaper than the work it saves. On accelerators and under
#: ``torch.compile`` every step is branch-free instead (no sync, no graph break); setting this to
#: False runs that path on CPU tensors too (the tests that count host reads do).
HOST_READS = True


def host_reads(device: torch.device) -> bool:
    """Whether a step on ``device`` takes the CPU path with host reads (eager CPU, ``HOST_READS``)."""
    return HOST_READS and device.type == "cpu" and not torch.compiler.is_compiling()


def flag(value: object, *, auto: bool) -> bool | None:
    """Check a ``fast=`` argument: a bool, or ``None`` ("auto") where ``auto`` is allowed.

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, bool) or (auto and value is None):
        return value  # type: ignore[return-value]
    allowed = "True, False or None (automatic)" if auto else "True or False"
    raise ConfigError(f"fast must be {allowed}. Received: {value!r} ({type(value).__name__}).")


def applies(p: float, device: torch.device, dtype: torch.dtype, acc: torch.dtype) -> bool:
    """Whether the blocked-dot norm serves a (device, dtype) group: 2-norm of real floats on the CPU.

    Not under ``torch.compile``: its per-thread scratch buffers and MKL dots are eager-only tricks.
    """
    return (p == 2.0 and device.type == "cpu" and dtype in _REAL and acc in _ACC
            and not torch.compiler.is_compiling())


def wanted(fast: bool | None, dtype: torch.dtype, acc: torch.dtype) -> bool:
    """``fast=None`` ("auto") takes the fast norm only where torch's kernel would convert dtypes."""
    return bool(fast) if fast is not None else dtype != acc


def _scratch(dtype: torch.dtype, device: torch.device, n: int) -> torch.Tensor:
    """A reusable buffer of at least ``n`` elements (one per thread, dtype and device)."""
    cache = _local.__dict__.setdefault("scratch", {})
    buf = cache.get((dtype, device))
    if buf is None or buf.numel() < n:
        buf = cache[(dtype, device)] = torch.empty(max(n, 1 << 16), dtype=dtype, device=device)
    return buf[:n]


def _dot(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    if x.dtype != acc:  # convert into cache-resident scratch memory, never a full-size copy
        s = _scratch(acc, x.device, x.numel())
        s.copy_(x)
        x = s
    return torch.dot(x, x)


def sumsq(g: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """Sum of the squares of ``g``, accumulated in ``acc`` (see :func:`sumsqs` for the kernels).

    Args:
        g: A real floating tensor, any shape.
        acc: ``torch.float32`` or ``torch.float64``.

    Returns:
        0-d tensor of dtype ``acc`` on ``g``'s device.

    Example:
        >>> import torch
        >>> from gradclip.torch._fast import sumsq
        >>> sumsq(torch.tensor([3.0, 4.0], dtype=torch.bfloat16), torch.float32)
        tensor(25.)
    """
    return sumsqs([g], acc)[0]


def sumsqs(ts: list[torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    """1-D tensor with the sum of squares of each tensor of one (device, dtype) group, in order.

    Tensors under ``DOT_MIN`` elements (or not contiguous) take torch's foreach norm kernel, all in
    one call: it opens no parallel region for them, where MKL's ``dot`` would open one per tensor.
    Larger ones take blocked dot products, or with one thread and no conversion torch's norm
    kernel in blocks of ``NORM_BLOCK`` (the faster of the two there).
    """
    one_thread = bool(ts) and ts[0].dtype == acc and torch.get_num_threads() == 1
    pieces, owners, dots, dot_owners = [], [], [], []
    for i, g in enumerate(ts):
        if g.numel() < DOT_MIN or not g.is_contiguous():
            pieces.append(g)
            owners.append(i)
        elif one_thread:
            blocks = g.view(-1).split(NORM_BLOCK)
            pieces.extend(blocks)
            owners.extend([i] * len(blocks))
        else:
            dots.append(_blocked_dot(g.view(-1), acc))
            dot_owners.append(i)
    squares = _foreach_squares(pieces, acc) if pieces else None
    if squares is not None and len(pieces) == len(ts):
        return squares
    out = torch.zeros(len(ts), dtype=acc, device=ts[0].device if ts else None)
    if squares is not None:
        out.index_add_(0, torch.tensor(owners, device=out.device), squares)
    if dots:
        out.index_add_(0, torch.tensor(dot_owners, device=out.device), torch.stack(dots))
    return out


def _foreach_squares(ts: list[torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    if ts[0].dtype in (acc, torch.float64):  # the same dtype, or float64 tensors with a narrower acc
        return torch.stack(torch._foreach_norm(ts)).to(acc).square()
    return torch.stack(torch._foreach_norm(ts, 2, dtype=acc)).square()


def _blocked_dot(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    block = BLOCK if x.dtype == acc else CONVERT_BLOCK
    if x.numel() <= block:
        return _dot(x, acc)
    return torch.stack([_dot(c, acc) for c in x.split(block)]).sum()


def total_sumsq(ts: list[torch.Tensor], acc: torch.dtype) -> torch.Tensor:
    """Sum of squares over all tensors, one flat kernel per run of adjacent views (0-d ``acc``)."""
    runs = flat_runs(ts)
    return sumsq(runs[0], acc) if len(runs) == 1 else sumsqs(runs, acc).sum()


def flat_runs(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    """Replace each run of contiguous views that tile one buffer back to back by one flat view.

    Tensors of one (device, dtype) group that are consecutive, contiguous views of the same base
    tensor, each starting where the previous one ends, are one block of memory: a flat 1-D view
    of it lets one kernel do the work of many. Other tensors are returned as they are. Every
    elementwise result (and every sum over a run) is unchanged; only the number of calls drops.
    """
    bases = [t._base for t in ts]
    if all(b is None for b in bases):  # the usual case: separate tensors, nothing to merge
        return ts
    out: list[torch.Tensor] = []
    i, n = 0, len(ts)
    while i < n:
        g, base, j = ts[i], bases[i], i + 1
        if base is not None and base.dtype == g.dtype and g.is_contiguous():
            size = g.element_size()
            end = g.data_ptr() + g.numel() * size
            while j < n and bases[j] is base and ts[j].data_ptr() == end and ts[j].is_contiguous():
                end += ts[j].numel() * size
                j += 1
        if j - i > 1:
            total = (end - g.data_ptr()) // g.element_size()
            out.append(base.as_strided((total,), (1,), g.storage_offset()))
        else:
            out.append(g)
        i = j
    return out


def clamp_(ts: list[torch.Tensor], lo: float | None, hi: float | None) -> None:
    """Clamp every element into ``[lo, hi]`` in one read-write pass per run (NaN stays NaN)."""
    if lo is None and hi is None:
        return
    for r in (ts if torch.compiler.is_compiling() else flat_runs(ts)):
        r.clamp_(min=lo, max=hi)


def foreach_mul_(ts: list[torch.Tensor], coef: torch.Tensor) -> None:
    """``torch._foreach_mul_`` over the flat runs of CPU tensors (one call for each run of views)."""
    if ts:
        torch._foreach_mul_(flat_runs(ts) if ts[0].is_cpu and not torch.compiler.is_compiling() else ts, coef)
