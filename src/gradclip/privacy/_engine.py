"""Per-example gradient norms and clipped-gradient sums for DP-SGD, from one backward pass.

:class:`PerExampleGrads` hooks every layer that owns trainable parameters, records what each saw
in the forward pass (its inputs) and in the backward pass (its outputs' gradients, through tensor
hooks), and from that computes each example's gradient norm per parameter (``norms``) and then
``sum_i c_i g_i`` into ``p.grad`` (``accumulate``): the two halves of DP-SGD's clipping step,
without a second backward pass and, for the layers with a formula, without ever building the
per-example gradients ("ghost" norms). See ``_layers`` for which layers have one.

Example:
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> x, y = torch.randn(16, 4), torch.randn(16, 1)
    >>> with PerExampleGrads(model) as pe:
    ...     losses = torch.nn.functional.mse_loss(model(x), y, reduction="none").sum(1)
    ...     norms = pe.norms(losses)                           # (16, 4): one column per parameter
    ...     total = norms.pow(2).sum(1).sqrt()                 # each example's gradient norm
    ...     pe.accumulate((1.0 / total).clamp(max=1.0))        # p.grad += sum_i c_i g_i
    >>> tuple(norms.shape), model[0].weight.grad.shape
    ((16, 4), torch.Size([8, 4]))

References:
    Abadi et al., "Deep learning with differential privacy" (DP-SGD), arXiv:1607.00133, 2016.
    Lee & Kifer, "Scaling up differentially private deep learning with fast per-example gradient
    clipping", arXiv:2009.03106, 2020.
    Li, Tramer, Liang & Hashimoto, "Large language models can be strong differentially private
    learners" (ghost clipping), arXiv:2110.05679, 2021.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Self

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils import _pytree as pytree

from gradclip._errors import ConfigError, InputTypeError
from gradclip.privacy._layers import Handler, Materialised, Use, ghost_supported, handler_for

__all__ = ["PerExampleGrads"]

_HINT = "pass the per-example losses, e.g. loss_fn(reduction='none')"


@dataclass
class _Layer:
    name: str
    module: torch.nn.Module
    handler: Handler
    index: dict[str, int]  # attribute -> column in norms() / position in .params
    uses: list[Use] = field(default_factory=list)


class PerExampleGrads:
    """Per-example gradient norms and coefficient-weighted gradient sums of a PyTorch model.

    The batch is axis 0 of every layer's input. Per step: run the forward pass, call
    :meth:`norms` with the per-example losses, then :meth:`accumulate` with the clipping
    coefficients; repeat over micro-batches to accumulate (``p.grad`` adds up, as with
    ``backward()``). A layer called several times in one forward pass (reused weights) is handled:
    its per-example gradient is the sum over the calls.

    Args:
        model: The model. Every trainable parameter must be owned by a leaf module (a parent
            may alias it, as ``opacus.layers.DPLSTM`` does), no parameter may be owned by two
            leaves (tie weights by calling one module twice instead), and batch-norm layers and
            ``nn.RNN``/``LSTM``/``GRU`` are refused (use ``opacus.layers.DPLSTM`` etc.).
        ghost: ``None`` (default): ghost norms for the layers with a formula (Linear, Conv1d/2d
            with ``groups=1`` and zero padding, Embedding, LayerNorm, RMSNorm), per-example
            gradients built with ``torch.func`` for the others, with one ``UserWarning`` naming
            them. ``True``: refuse (``ConfigError``) any layer without a formula. ``False``:
            build every layer's per-example gradients (the reference path).

    Attributes:
        params: The trainable parameters, ``[(name, parameter), ...]`` in
            ``model.named_parameters()`` order: the columns of :meth:`norms`.
        fallback: Names of the modules whose per-example gradients are built.

    Memory: between ``norms`` and ``accumulate`` every hooked layer's inputs and output
    gradients are held (as a backward pass holds them), and a materialised layer's per-example
    gradients (B times its parameters).

    Raises:
        ConfigError: For a batch-norm or RNN layer, a parameter the hooks cannot see, a sparse or
            ``scale_grad_by_freq`` embedding, no trainable parameter, a bad ``ghost``, or
            ``ghost=True`` with a layer that has no formula.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> pe = PerExampleGrads(model)
        >>> n = pe.norms(model(torch.randn(5, 3)).sum(1))
        >>> pe.accumulate(torch.ones(5)); pe.close()
        >>> tuple(n.shape), model.weight.grad is not None
        ((5, 2), True)

    References:
        Lee & Kifer, arXiv:2009.03106, 2020; Li et al., arXiv:2110.05679, 2021.
    """

    def __init__(self, model: torch.nn.Module, *, ghost: bool | None = None):
        if ghost not in (None, True, False):
            raise ConfigError(f"ghost must be None, True or False; received {ghost!r}.")
        if not isinstance(model, torch.nn.Module):
            raise InputTypeError(
                f"model must be a torch.nn.Module; received {type(model).__name__}.")
        self.model = model
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise ConfigError("the model has no trainable parameter; nothing to clip.")
        self._layers = self._find_layers(model, ghost)
        slow = [l for l in self._layers if isinstance(l.handler, Materialised)]
        self.fallback = [l.name for l in slow]
        if ghost is None and slow:
            warnings.warn(
                "PerExampleGrads: no ghost-norm formula for "
                + ", ".join(f"{l.name} ({type(l.module).__name__})" for l in slow)
                + "; their per-example gradients are built with torch.func (more memory).",
                UserWarning, stacklevel=2)
        self._targets = _grad_targets(self._layers, self.params)
        self._hooks = [l.module.register_forward_hook(self._hook(l), with_kwargs=True)
                       for l in self._layers]
        self._paused = False
        self._recording = False
        self._normed = False
        self._batch: int | None = None

    # ---------------------------------------------------------------- construction
    def _find_layers(self, model: torch.nn.Module, ghost: bool | None) -> list[_Layer]:
        column = {id(p): i for i, (_, p) in enumerate(self.params)}
        owner: dict[int, str] = {}
        found = []
        for name, m in model.named_modules():
            _check_module(name or "<model>", m)
            own = [(a, p) for a, p in m.named_parameters(recurse=False) if p.requires_grad]
            if own and next(m.children(), None) is None:
                for a, p in own:
                    if id(p) in owner:
                        raise ConfigError(
                            f"parameter {name}.{a} is shared with {owner[id(p)]}; tied weights "
                            "across modules are not supported: reuse one module (call it twice).")
                    owner[id(p)] = f"{name}.{a}"
                found.append((name or "<model>", m, own))
        for name, m in model.named_modules():  # a parent may alias its leaves' parameters (DPLSTM)
            stray = [a for a, p in m.named_parameters(recurse=False)
                     if p.requires_grad and id(p) not in owner]
            if stray:
                raise ConfigError(
                    f"module {name or '<model>'!r} ({type(m).__name__}) owns parameter "
                    f"{stray[0]!r} and also has submodules, so its per-example gradient cannot be "
                    "captured; move the parameter into a leaf module (for nn.MultiheadAttention "
                    "use opacus.layers.DPMultiheadAttention).")
        bad = [n for n, m, _ in found if not ghost_supported(m)]
        if ghost is True and bad:
            raise ConfigError(
                f"ghost=True but no ghost-norm formula for {', '.join(bad)}; pass ghost=None "
                "to build their per-example gradients instead.")
        return [_Layer(n, m, handler_for(m, [a for a, _ in own], ghost=ghost is not False),
                       {a: column[id(p)] for a, p in own}) for n, m, own in found]

    # ---------------------------------------------------------------- hooks
    def _hook(self, layer: _Layer) -> Any:
        def forward_hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if self._paused or not torch.is_grad_enabled():
                return
            if self._normed:  # a new forward pass without accumulate(): drop the old step
                self._clear()
            leaves = pytree.tree_leaves(output)
            use = Use(*pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, (args, kwargs)),
                      [None] * len(leaves))
            for k, leaf in enumerate(leaves):
                if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
                    leaf.register_hook(self._grad_hook(use, k))
            b = _batch_size(args, kwargs)
            if b is not None:
                self._batch = b if self._batch is None else self._batch
            layer.uses.append(use)
        return forward_hook

    def _grad_hook(self, use: Use, k: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            if self._recording:
                use.grads[k] = grad.detach()
        return hook

    @contextlib.contextmanager
    def _pause(self) -> Iterator[None]:
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def _clear(self) -> None:
        for l in self._layers:
            l.uses.clear()
            l.handler.reset()
        self._normed = False
        self._batch = None

    # ---------------------------------------------------------------- public
    def norms(self, per_example_losses: torch.Tensor) -> torch.Tensor:
        """Each example's gradient norm for each trainable parameter.

        Runs one backward pass of ``per_example_losses.sum()`` (keeping the graph; ``p.grad`` is
        not touched) and computes the norms from what the hooks recorded. The backward pass
        differentiates for one parameter per formula layer, its smallest (a Linear's bias), so
        the weights' gradients are never computed: about a third of a backward pass saved.

        Args:
            per_example_losses: Shape (B,), B the batch size of the last forward pass.

        Returns:
            Tensor (B, P), P = ``len(self.params)``, float32 (float64 for float64 parameters):
            column j is the norm of the per-example gradient of ``self.params[j]`` (0 where the
            parameter was not used). The global per-example norm is ``norms.pow(2).sum(1).sqrt()``.

        Raises:
            InputTypeError: For a non-tensor, a scalar, or a length other than B.
            ConfigError: When no forward pass was recorded since the last ``accumulate()``, when
                a parameter got a gradient though its module was never called (a parent used
                it directly), or when torch.func cannot vmap a materialised layer.
        """
        b = self._check_losses(per_example_losses)
        ps = [p for _, p in self.params]
        for l in self._layers:  # norms() twice on one forward pass: recompute
            l.handler.reset()
        idle = [(l, j) for l in self._layers if not l.uses for j in l.index.values()]
        self._recording = True
        try:
            got = torch.autograd.grad(per_example_losses.sum(),
                                      self._targets + [ps[j] for _, j in idle],
                                      retain_graph=True, allow_unused=True)
        finally:
            self._recording = False
        for (l, j), g in zip(idle, got[len(self._targets):]):
            if g is not None:
                raise ConfigError(
                    f"parameter {self.params[j][0]} has a gradient but its module {l.name!r} "
                    "was never called (a parent uses the parameter directly, as "
                    "nn.MultiheadAttention does); per-example gradients cannot be captured.")
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in ps) else torch.float32
        sq = torch.zeros(b, len(ps), dtype=dtype, device=per_example_losses.device)
        with self._pause(), torch.no_grad():
            for l in self._layers:
                if l.uses:
                    for a, v in _guarded(l, l.handler.sq_norms).items():
                        sq[:, l.index[a]] = v.to(dtype)
        self._normed = True
        return sq.sqrt()

    def accumulate(self, coefs: torch.Tensor) -> None:
        """Add ``sum_i coefs[i] * g_i`` (each example's gradient, weighted) into every ``p.grad``.

        Args:
            coefs: Shape (B,) (one coefficient per example, e.g. ``min(1, C / norm_i)``) or
                (B, P) (one per example and parameter, in ``self.params`` order).

        Raises:
            ConfigError: When :meth:`norms` was not called since the last forward pass.
            InputTypeError: For a non-tensor or a shape other than (B,) or (B, P).
        """
        if not self._normed:
            raise ConfigError("accumulate() needs the gradients recorded by norms(); call "
                              "model(x), then norms(losses), then accumulate(coefs).")
        b, n = self._batch, len(self.params)
        if not isinstance(coefs, torch.Tensor) or tuple(coefs.shape) not in ((b,), (b, n)):
            got = tuple(coefs.shape) if isinstance(coefs, torch.Tensor) else type(coefs).__name__
            raise InputTypeError(f"coefs must be a tensor of shape ({b},) or ({b}, {n}); "
                                 f"received {got}.")
        coefs = coefs.detach()
        if coefs.dim() == 1:
            coefs = coefs[:, None].expand(b, n)
        with self._pause(), torch.no_grad():
            for l in self._layers:
                if not l.uses:
                    continue
                cols = {a: coefs[:, j] for a, j in l.index.items()}
                for a, g in l.handler.weighted(l.uses, cols).items():
                    p = self.params[l.index[a]][1]
                    g = g.to(p.dtype)
                    if p.grad is None:
                        p.grad = g.contiguous()
                    else:
                        p.grad.add_(g)
        self._clear()

    def close(self) -> None:
        """Remove the hooks and drop what was recorded."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_losses(self, losses: Any) -> int:
        if not isinstance(losses, torch.Tensor):
            raise InputTypeError(f"per_example_losses must be a tensor; received "
                                 f"{type(losses).__name__}; {_HINT}.")
        if self._batch is None:
            raise ConfigError("no forward pass recorded since the last accumulate() (or under "
                              "torch.no_grad()); run the model on a batch first.")
        if losses.dim() != 1 or losses.shape[0] != self._batch:
            raise InputTypeError(f"per_example_losses must have shape ({self._batch},), the "
                                 f"batch size; received {tuple(losses.shape)}; {_HINT}.")
        if not losses.requires_grad:
            raise InputTypeError("per_example_losses does not require grad (computed under "
                                 f"no_grad or detached); {_HINT} from the model's output.")
        return self._batch


def _guarded(layer: _Layer, fn: Any) -> dict[str, torch.Tensor]:
    """Run ``fn(uses)``; a torch.func failure of a materialised layer becomes a ConfigError."""
    try:
        return fn(layer.uses)
    except RuntimeError as e:
        if not isinstance(layer.handler, Materialised):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"per-example gradients of {layer.name!r} ({type(layer.module).__name__}) could not "
            f"be built with torch.func.vmap: {first}; replace the layer with a per-example-safe "
            "one (e.g. from opacus.layers).") from e


def _grad_targets(layers: list[_Layer], params: list) -> list[torch.Tensor]:
    """The tensors the backward pass of ``norms`` differentiates for: it must reach every hooked
    output, and each parameter in the list costs its gradient (computed, then dropped).

    A formula layer (Linear, Conv, Embedding, LayerNorm, RMSNorm) uses all its parameters, so its
    smallest one suffices (Linear's bias: a sum instead of the weight's matmul, about a third of
    the backward pass); any other layer keeps all its parameters (one of them may be unused).
    """
    out = []
    for l in layers:
        ps = [params[j][1] for j in l.index.values()]
        out += ps if isinstance(l.handler, Materialised) else [min(ps, key=torch.Tensor.numel)]
    return out


def _check_module(name: str, m: torch.nn.Module) -> None:
    if isinstance(m, _BatchNorm):
        raise ConfigError(
            f"module {name!r} is {type(m).__name__}, which mixes the examples of a batch, so "
            "per-example gradients are undefined; replace it with GroupNorm or LayerNorm "
            "(opacus.validators.ModuleValidator.fix does this).")
    if isinstance(m, torch.nn.RNNBase):
        raise ConfigError(
            f"module {name!r} is {type(m).__name__}, whose per-example gradients cannot be "
            "captured; use opacus.layers.DPLSTM / DPGRU / DPRNN (built of Linear layers) instead.")
    if isinstance(m, torch.nn.Embedding) and (m.sparse or m.scale_grad_by_freq):
        raise ConfigError(
            f"embedding {name!r} has sparse={m.sparse}, scale_grad_by_freq={m.scale_grad_by_freq};"
            " both must be False for per-example gradients.")


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    for x in pytree.tree_leaves((args, kwargs)):
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    return None
