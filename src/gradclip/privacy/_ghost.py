"""Per-layer formulas for per-example gradient norms and weighted gradient sums (measure, DP-SGD).

Every formula works from what a layer saw in the forward pass (its input ``a``) and in the
backward pass (the gradient of the summed loss with respect to its output, ``g``), both with the
batch on axis 0. None of them builds the per-example gradients of a large weight unless that is
the cheaper way (``_pick_gram``): the norms are "ghost" norms.

For a linear map applied at T positions (a sequence, or the patches of a convolution) the
per-example weight gradient is ``G_i = sum_t g_it a_it^T``, so

    ||G_i||^2 = sum_{t,s} (a_it . a_is)(g_it . g_is)      (the Gram trick, cost B T^2 (d_in + d_out))

or, with T = 1, ``||g_i|| ||a_i||``. The weighted sum ``sum_i c_i G_i`` is one ``einsum``.

Example:
    >>> import torch
    >>> a, g = torch.randn(4, 3), torch.randn(4, 2)
    >>> sq = linear_weight_sq_norms(seq(a), seq(g))
    >>> ref = torch.stack([torch.outer(g[i], a[i]).pow(2).sum() for i in range(4)])
    >>> bool(torch.allclose(sq, ref))
    True

References:
    Goodfellow, "Efficient per-example gradient computations", arXiv:1510.01799, 2015.
    Lee & Kifer, "Scaling up differentially private deep learning with fast per-example gradient
    clipping", arXiv:2009.03106, 2020.
    Li, Tramer, Liang & Hashimoto, "Large language models can be strong differentially private
    learners" (ghost clipping), arXiv:2110.05679, 2021.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "conv_patches", "embedding_sq_norms", "linear_weight_sq_norms", "normalised", "seq",
    "sum_sq",
]


def seq(x: torch.Tensor) -> torch.Tensor:
    """View ``x`` of shape (B, ..., d) as (B, T, d), T the product of the middle axes (1 if none)."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def sum_sq(x: torch.Tensor) -> torch.Tensor:
    """Per-example sum of squares: (B, ...) -> (B,)."""
    return x.reshape(x.shape[0], -1).pow(2).sum(1)


def _pick_gram(t: int, d_in: int, d_out: int) -> bool:
    # Gram: B*T^2 memory, B*T^2*(d_in+d_out) flops; materialised: B*d_in*d_out memory,
    # B*T*d_in*d_out flops. Take the smaller memory; ties go to Gram (no weight-sized buffer).
    return t * t <= d_in * d_out


def linear_weight_sq_norms(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Squared per-example norms of ``sum_t g_t a_t^T`` for a (B, T, d_in), g (B, T, d_out)."""
    _, t, d_in = a.shape
    d_out = g.shape[-1]
    if t == 1:
        return sum_sq(a) * sum_sq(g)
    if _pick_gram(t, d_in, d_out):
        return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    return sum_sq(torch.bmm(g.transpose(1, 2), a))


def embedding_sq_norms(idx: torch.Tensor, g: torch.Tensor, num: int) -> torch.Tensor:
    """Squared per-example norms of an embedding table's gradient.

    Args:
        idx: (B, T) indices, positions to ignore (``padding_idx``) set to -1.
        g: (B, T, D) gradients of the looked-up rows.
        num: Rows in the table; the per-example gradients are built instead when num*D < T^2.
    """
    b, t, d = g.shape
    if num * d < t * t:
        flat = (idx.clamp(min=0) + num * torch.arange(b, device=idx.device)[:, None]).reshape(-1)
        g = g * (idx >= 0).unsqueeze(-1).to(g.dtype)
        rows = g.new_zeros(b * num, d).index_add_(0, flat, g.reshape(-1, d))
        return sum_sq(rows.view(b, num, d))
    same = (idx[:, :, None] == idx[:, None, :]) & (idx >= 0)[:, :, None]
    return (torch.bmm(g, g.transpose(1, 2)) * same.to(g.dtype)).sum((1, 2))


def conv_patches(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The patches a Conv1d/Conv2d (zeros padding, int padding) multiplies: (B, L, C_in*k)."""
    if isinstance(module, torch.nn.Conv1d):
        x = x.unsqueeze(-2)
        k, s, p, dl = ((1, module.kernel_size[0]), (1, module.stride[0]),
                       (0, module.padding[0]), (1, module.dilation[0]))
    else:
        k, s, p, dl = module.kernel_size, module.stride, module.padding, module.dilation
    return F.unfold(x, k, dilation=dl, padding=p, stride=s).transpose(1, 2)


def normalised(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The normalised input x_hat of a LayerNorm or RMSNorm (before weight and bias)."""
    dims = tuple(range(-len(module.normalized_shape), 0))
    if isinstance(module, torch.nn.LayerNorm):
        var, mean = torch.var_mean(x, dims, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + module.eps)
    eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
    return x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
