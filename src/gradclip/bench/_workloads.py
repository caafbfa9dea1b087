"""Benchmark workloads: gradient shapes of real models and of the cases that stress overhead."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Workload:
    """Parameters with gradients, plus a saved copy of the gradients to restore before each call."""

    name: str
    params: list[torch.nn.Parameter]
    saved: list[torch.Tensor]

    @property
    def grads(self) -> list[torch.Tensor]:
        return [p.grad for p in self.params]

    @property
    def grad_bytes(self) -> int:
        return sum(g.numel() * g.element_size() for g in self.grads)

    @property
    def param_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.params)

    @property
    def elements(self) -> int:
        return sum(p.numel() for p in self.params)

    def restore(self) -> None:
        """Copy the saved gradients back (one foreach copy per call)."""
        torch._foreach_copy_(self.grads, self.saved)

    def label(self) -> str:
        return f"{self.name} ({_count(self.elements)} in {len(self.params)})"


def _count(n: int) -> str:
    return f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}K" if n >= 1e3 else str(n)


def gpt2_shapes(scale: int = 1) -> list[tuple[int, ...]]:
    """GPT-2 small gradient shapes (124M elements, 148 tensors); ``scale`` divides the width."""
    d, v, ctx = 768 // scale, 50257 // scale, 1024
    shapes: list[tuple[int, ...]] = [(v, d), (ctx, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


def small_sizes(n: int = 2000, seed: int = 0) -> list[int]:
    """``n`` sizes between 1K and 64K elements, log-uniform (most tensors are small)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    return [int(2 ** (10 + 6 * float(x))) for x in u]


def make(name: str, shapes: list[tuple[int, ...]], dtype: torch.dtype, *, device: str = "cpu",
         one_buffer: bool = False, seed: int = 0) -> Workload:
    """Parameters of the given shapes with N(0, 1) gradients (``one_buffer``: views of one flat buffer)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sizes = [math.prod(s) for s in shapes]
    params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype, device=device)) for s in shapes]
    if one_buffer:
        flat = torch.randn(sum(sizes), generator=gen, device=device).to(dtype)
        for p, g in zip(params, flat.split(sizes)):
            p.grad = g.view(p.shape)
    else:
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, device=device).to(dtype)
    return Workload(name, params, [p.grad.clone() for p in params])


def clip_workloads(quick: bool, device: str = "cpu"):
    """The clipping workloads, made one at a time (each is freed before the next is built)."""
    scale, n_small, flat = (4, 500, 8_000_000) if quick else (1, 2000, 100_000_000)
    small = [(s,) for s in small_sizes(n_small)]
    yield lambda: make("gpt2 fp32", gpt2_shapes(scale), torch.float32, device=device)
    yield lambda: make(f"{n_small} small fp32", small, torch.float32, device=device)
    yield lambda: make(f"{n_small} small fp32, one buffer", small, torch.float32, device=device, one_buffer=True)
    yield lambda: make("flat fp32", [(flat,)], torch.float32, device=device)
    yield lambda: make("gpt2 bf16", gpt2_shapes(scale), torch.bfloat16, device=device)


def step_workload(quick: bool, device: str = "cpu") -> Workload:
    """The optimizer-step workload: GPT-2 shapes at half width (31M elements; an eighth when quick)."""
    return make("gpt2/2 fp32", gpt2_shapes(8 if quick else 2), torch.float32, device=device)
