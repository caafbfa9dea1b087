"""One handler per layer kind: per-example squared norms and coefficient-weighted gradient sums.

A handler receives the *uses* of its module recorded since the last step (one per call of the
module in the forward pass: the inputs it saw and the gradients of its outputs) and answers two
questions, for each trainable parameter it owns (by attribute name, ``"weight"``, ``"bias"``):

* ``sq_norms(uses)``: the squared norm of each example's gradient, shape (B,);
* ``weighted(uses, coefs)``: ``sum_i coefs[i] * grad_i``, the parameter's shape.

Ghost handlers (``Linear``, ``Conv1d``/``Conv2d`` with ``groups=1`` and zero padding, ``Embedding``)
never build per-example weight gradients (see ``_ghost``); ``Norm`` builds the small per-example
weight and bias gradients of ``LayerNorm``/``RMSNorm`` directly; ``Materialised`` builds any
layer's per-example gradients with ``torch.func`` (``vmap`` of ``vjp`` of ``functional_call``).
A module called several times in one forward pass (weight reuse) has several uses: a per-example
gradient is the sum over them, which every handler respects (ghost ones concatenate the positions).

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(3, 2)
    >>> x = torch.randn(4, 3)
    >>> use = Use((x,), {}, [torch.randn(4, 2)])
    >>> h = handler_for(lin, ["weight", "bias"], ghost=True)
    >>> type(h).__name__, tuple(h.sq_norms([use])["weight"].shape)
    ('LinearLike', (4,))

References:
    Lee & Kifer, arXiv:2009.03106, 2020; Li et al., arXiv:2110.05679, 2021 (ghost clipping).
    Opacus grad samplers, https://github.com/pytorch/opacus (the per-layer rules, materialised).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from gradclip.privacy import _ghost as gh

__all__ = ["LinearLike", "Materialised", "Norm", "Use", "handler_for"]

_LOW = (torch.float16, torch.bfloat16)


def _f(x: torch.Tensor) -> torch.Tensor:
    """Compute in float32 at least."""
    return x.float() if x.dtype in _LOW else x


@dataclass
class Use:
    """One call of a module: its positional and keyword inputs, and its outputs' gradients.

    ``grads[k]`` is the gradient of the summed loss with respect to the k-th tensor leaf of the
    output (``None`` until the backward pass reaches it, or if it never does).
    """

    args: tuple
    kwargs: dict
    grads: list = field(default_factory=list)


class Handler:
    """Base: holds the module and its trainable attribute names."""

    def __init__(self, module: torch.nn.Module, attrs: list[str]):
        self.module, self.attrs = module, list(attrs)

    def reset(self) -> None:
        """Forget anything cached for the current step."""


class LinearLike(Handler):
    """Linear and Conv1d/Conv2d: ghost norms from inputs (patches) and output gradients."""

    def _pairs(self, uses: list[Use]) -> tuple[torch.Tensor, torch.Tensor]:
        a_all, g_all = [], []
        for u in uses:
            x, g = u.args[0], u.grads[0]
            if isinstance(self.module, torch.nn.Linear):
                a = gh.seq(x)
                g = a.new_zeros(*a.shape[:2], self.module.out_features) if g is None else gh.seq(g)
            else:
                a = gh.conv_patches(self.module, x)
                g = (a.new_zeros(*a.shape[:2], self.module.out_channels) if g is None
                     else g.flatten(2).transpose(1, 2))
            a_all.append(_f(a))
            g_all.append(_f(g))
        return torch.cat(a_all, 1), torch.cat(g_all, 1)

    def sq_norms(self, uses: list[Use]) -> dict[str, torch.Tensor]:
        a, g = self._pairs(uses)
        out = {}
        if "weight" in self.attrs:
            out["weight"] = gh.linear_weight_sq_norms(a, g)
        if "bias" in self.attrs:
            out["bias"] = gh.sum_sq(g.sum(1))
        return out

    def weighted(self, uses: list[Use], coefs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, g = self._pairs(uses)
        out = {}
        if "weight" in self.attrs:
            c = coefs["weight"].to(g.dtype)
            w = torch.einsum("bto,bti->oi", g * c[:, None, None], a)
            out["weight"] = w.reshape(self.module.weight.shape)
        if "bias" in self.attrs:
            out["bias"] = torch.einsum("bto,b->o", g, coefs["bias"].to(g.dtype))
        return out


class Embedding(Handler):
    """nn.Embedding: ghost norms from the indices and the gradients of the looked-up rows."""

    def _pairs(self, uses: list[Use]) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.module
        idx_all, g_all = [], []
        for u in uses:
            idx = u.args[0].reshape(u.args[0].shape[0], -1)
            g = u.grads[0]
            g = (torch.zeros(*idx.shape, m.embedding_dim, dtype=m.weight.dtype, device=idx.device)
                 if g is None else g.reshape(*idx.shape, -1))
            if m.padding_idx is not None:
                idx = idx.masked_fill(idx == m.padding_idx, -1)
            idx_all.append(idx)
            g_all.append(_f(g))
        return torch.cat(idx_all, 1), torch.cat(g_all, 1)

    def sq_norms(self, uses: list[Use]) -> dict[str, torch.Tensor]:
        idx, g = self._pairs(uses)
        return {"weight": gh.embedding_sq_norms(idx, g, self.module.num_embeddings)}

    def weighted(self, uses: list[Use], coefs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        idx, g = self._pairs(uses)
        g = g * coefs["weight"].to(g.dtype)[:, None, None] * (idx >= 0).unsqueeze(-1).to(g.dtype)
        w = g.new_zeros(self.module.weight.shape)
        return {"weight": w.index_add_(0, idx.clamp(min=0).reshape(-1), g.reshape(-1, g.shape[-1]))}


class _PerExample(Handler):
    """Handlers that build per-example gradients (B, *shape); cached from norms to accumulate."""

    _cache: dict[str, torch.Tensor] | None = None

    def per_example(self, uses: list[Use]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _get(self, uses: list[Use]) -> dict[str, torch.Tensor]:
        if self._cache is None:
            self._cache = self.per_example(uses)
        return self._cache

    def reset(self) -> None:
        self._cache = None

    def sq_norms(self, uses: list[Use]) -> dict[str, torch.Tensor]:
        return {k: gh.sum_sq(v) for k, v in self._get(uses).items()}

    def weighted(self, uses: list[Use], coefs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: torch.einsum("b...,b->...", v, coefs[k].to(v.dtype))
                for k, v in self._get(uses).items()}


class Norm(_PerExample):
    """LayerNorm / RMSNorm: per-example weight and bias gradients from x_hat and the output grad."""

    def per_example(self, uses: list[Use]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        nd = len(self.module.normalized_shape)
        for u in uses:
            x = _f(u.args[0])
            g = u.grads[0]
            g = torch.zeros_like(x) if g is None else _f(g)
            lead = tuple(range(1, x.dim() - nd))
            parts = {"weight": g * gh.normalised(self.module, x), "bias": g}
            for k in self.attrs:
                v = parts[k].sum(lead) if lead else parts[k]
                out[k] = out[k] + v if k in out else v
        return out


class Materialised(_PerExample):
    """Any layer: per-example gradients with torch.func (vmap over the batch of a vjp)."""

    def per_example(self, uses: list[Use]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for u in uses:
            for k, v in self._one(u).items():
                out[k] = out[k] + v if k in out else v
        return out

    def _one(self, u: Use) -> dict[str, torch.Tensor]:
        module = self.module
        params = {k: getattr(module, k).detach() for k in self.attrs}
        leaves, spec = pytree.tree_flatten((u.args, u.kwargs))
        b = _batch_of(leaves)
        pos = [i for i, x in enumerate(leaves)
               if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == b]
        live = [k for k, g in enumerate(u.grads) if g is not None]
        if not live:
            return {k: torch.zeros(b, *p.shape, dtype=p.dtype, device=p.device)
                    for k, p in params.items()}
        cots = tuple(u.grads[k] for k in live)

        def one(p: dict, batched: list, cot: tuple) -> dict:
            full: list[Any] = list(leaves)
            for i, x in zip(pos, batched):
                full[i] = x.unsqueeze(0)
            args, kwargs = pytree.tree_unflatten(full, spec)

            def fn(q: dict) -> tuple:
                outs = pytree.tree_leaves(torch.func.functional_call(module, q, tuple(args), kwargs))
                return tuple(outs[k].squeeze(0) for k in live)

            _, vjp_fn = torch.func.vjp(fn, p)
            return vjp_fn(cot)[0]

        batched = [leaves[i] for i in pos]
        grads = torch.func.vmap(one, in_dims=(None, 0, 0))(params, batched, cots)
        return {k: _f(v) for k, v in grads.items()}


def _batch_of(leaves: list) -> int:
    for x in leaves:
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    raise ValueError("no batched tensor input")


def _plain(module: torch.nn.Module, *kinds: type) -> bool:
    """``module`` is one of ``kinds`` or a subclass that keeps its ``forward``."""
    return any(isinstance(module, k) and type(module).forward is k.forward for k in kinds)


def ghost_supported(module: torch.nn.Module) -> bool:
    """Whether a ghost / direct formula exists for this module's configuration."""
    nn = torch.nn
    if _plain(module, nn.Linear, nn.Embedding, nn.LayerNorm, nn.RMSNorm):
        return True
    if _plain(module, nn.Conv1d, nn.Conv2d):
        return (module.groups == 1 and module.padding_mode == "zeros"
                and not isinstance(module.padding, str))
    return False


def handler_for(module: torch.nn.Module, attrs: list[str], *, ghost: bool) -> Handler:
    """The handler for ``module``: a formula when ``ghost`` and one exists, else materialised."""
    if ghost and ghost_supported(module):
        if isinstance(module, torch.nn.Embedding):
            return Embedding(module, attrs)
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
            return Norm(module, attrs)
        return LinearLike(module, attrs)
    return Materialised(module, attrs)
