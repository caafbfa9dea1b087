"""Clipping after ``accelerator.prepare``: the norm drop-in and ``Clipper`` for any policy.

What Accelerate does (``Accelerator.clip_grad_norm_``, accelerate 1.x): unscale the gradients
(fp16 with a ``GradScaler``; a no-op otherwise, bf16 included, which has no scaler), then
``torch.nn.utils.clip_grad_norm_``, or one norm per device mesh for FSDP2's DTensors. It does not
look at ``sync_gradients``: the caller clips only on the last micro-batch of an accumulation
window. gradclip does the same, with :func:`gradclip.torch.clip_grad_norm_` (DTensor-aware: one
all-reduce per process group), and ``Clipper.step`` checks ``sync_gradients`` itself.

Refused, with a ``ConfigError``: DeepSpeed (its engine clips inside ``step``: set
``gradient_clipping`` in its config), FSDP1 (flat shards are plain tensors, so their norms are
local: use FSDP2) and XLA (gradients are reduced inside the optimizer step, after clipping).
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from gradclip._errors import ConfigError, InputTypeError
from gradclip._policies import Policy
from gradclip._stats import ClipStats
from gradclip.torch import Clipper as TorchClipper
from gradclip.torch import clip_grad_norm_ as _torch_clip_grad_norm_

__all__ = ["Clipper", "clip_grad_norm_"]


def clip_grad_norm_(accelerator: Accelerator, parameters: Any, max_norm: float, norm_type: float = 2.0, *,
                    error_if_nonfinite: bool = False, foreach: bool | None = None) -> torch.Tensor:
    """``accelerator.clip_grad_norm_(parameters, max_norm, norm_type)`` computed by gradclip.

    Unscales fp16 gradients (``accelerator.unscale_gradients()``, as Accelerate does), then clips
    with torch's semantics: ``coef = min(1, max_norm / (norm + 1e-6))``.

    Args:
        accelerator: The ``accelerate.Accelerator`` that prepared the model.
        parameters: The prepared model's parameters (or the model).
        max_norm: Largest allowed total norm.
        norm_type: Order of the norm (``2.0``; ``inf`` for the largest absolute value).
        error_if_nonfinite: Raise :class:`gradclip.NonFiniteError` on a NaN/Inf norm.
        foreach: Use foreach kernels (``None``: where supported).

    Returns:
        The total norm before clipping, a 0-d tensor (a plain tensor for DTensor gradients too).

    Raises:
        ConfigError: DeepSpeed, FSDP1 or XLA (see the module docstring), or a bad ``max_norm``.
        InputTypeError: ``accelerator`` is not an ``accelerate.Accelerator``.

    References:
        Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks",
        ICML 2013 (arXiv:1211.5063).

    Example:
        >>> import torch, accelerate, gradclip.accelerate as gca
        >>> accelerator = accelerate.Accelerator(cpu=True)
        >>> model = accelerator.prepare(torch.nn.Linear(4, 1))
        >>> accelerator.backward(model(torch.ones(8, 4)).sum())
        >>> norm = gca.clip_grad_norm_(accelerator, model.parameters(), max_norm=1.0)
        >>> round(float(norm), 3), round(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()), 3)
        (17.889, 1.0)
    """
    _check(accelerator, "clip_grad_norm_")
    accelerator.unscale_gradients()
    return _torch_clip_grad_norm_(parameters, max_norm, norm_type, error_if_nonfinite, foreach)


class Clipper:
    """Any gradclip policy in an Accelerate loop: clip once per optimizer step, after unscaling.

    ``step(model)`` between ``accelerator.backward(loss)`` and ``optimizer.step()``, inside or
    outside ``accelerator.accumulate(model)``:

    - while accumulating (``accelerator.sync_gradients`` is False) it does nothing and returns
      ``None``; on the last micro-batch it clips the summed gradients;
    - fp16 gradients are unscaled first (``accelerator.unscale_gradients``; skipped when the loop
      already unscaled them this step), so the policy sees true norms;
    - a skipped step (``nonfinite="skip"`` on NaN/Inf, or a policy that skips spikes) sets every
      gradient to ``None``: the prepared ``optimizer.step()`` then leaves parameters and optimizer
      state untouched, so the loop needs no branch. With fp16, the ``GradScaler`` also sees the
      NaN/Inf and lowers its scale, as without gradclip.

    Args:
        accelerator: The ``accelerate.Accelerator`` that prepared the model.
        policy: A :class:`gradclip.Policy`, a spec string (``"zclip"``), or a ready
            :class:`gradclip.torch.Clipper`.
        optimizer: The prepared optimizer whose gradients to unscale (default: every prepared
            optimizer, as ``accelerator.unscale_gradients()``).
        **clipper_options: :class:`gradclip.torch.Clipper` options (``nonfinite=``...).

    Raises:
        ConfigError: DeepSpeed, FSDP1 or XLA; a bad policy or option.
        InputTypeError: ``accelerator`` is not an ``accelerate.Accelerator``.

    Example:
        >>> import torch, accelerate, gradclip.accelerate as gca
        >>> accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
        >>> model, opt = accelerator.prepare(torch.nn.Linear(4, 1), torch.optim.SGD([torch.zeros(1)], 0.1))
        >>> clipper = gca.Clipper(accelerator, "norm:1.0", nonfinite="skip")
        >>> out = []
        >>> for _ in range(2):
        ...     with accelerator.accumulate(model):
        ...         accelerator.backward(model(torch.ones(8, 4)).sum())
        ...         out.append(clipper.step(model))
        >>> out[0] is None, bool(out[1].clipped)
        (True, True)
    """

    def __init__(self, accelerator: Accelerator, policy: TorchClipper | Policy | str, *, optimizer: Any = None,
                 **clipper_options: Any) -> None:
        _check(accelerator, "Clipper")
        if isinstance(policy, TorchClipper):
            if clipper_options:
                raise ConfigError(f"Clipper(accelerator, clipper, {', '.join(clipper_options)}=...): a ready "
                                  "gradclip.torch.Clipper has its own options; pass them to it instead.")
            self.clipper = policy
        else:
            self.clipper = TorchClipper(policy, **clipper_options)
        self.accelerator = accelerator
        self.optimizer = optimizer

    def __repr__(self) -> str:
        return f"gradclip.accelerate.Clipper({self.clipper.policy!r}, nonfinite={self.clipper.nonfinite!r})"

    @torch.no_grad()
    def step(self, parameters: Any) -> ClipStats | None:
        """Clip now if this micro-batch ends an optimizer step; otherwise do nothing.

        Args:
            parameters: The prepared model (names in offenders), its ``parameters()`` or
                ``named_parameters()``.

        Returns:
            The :class:`gradclip.ClipStats` of this step, or ``None`` while accumulating.
        """
        if not self.accelerator.sync_gradients:
            return None
        _unscale_once(self.accelerator, self.optimizer)
        if not isinstance(parameters, torch.nn.Module):
            parameters = list(parameters)  # read twice on a skip
        stats = self.clipper.step(parameters)
        if bool(stats.skipped):  # one host read: a step that must not happen cannot be undone
            for p in _tensors(parameters):
                p.grad = None
        return stats

    def last_stats(self) -> ClipStats:
        """The :class:`gradclip.ClipStats` of the last clipping step (see ``gradclip.torch.Clipper``)."""
        return self.clipper.last_stats()

    def state_dict(self) -> dict[str, Any]:
        """The policy state (``accelerator.register_for_checkpointing`` saves it with ``save_state``)."""
        return self.clipper.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Restore :meth:`state_dict` (checked before anything is assigned)."""
        self.clipper.load_state_dict(state_dict, strict=strict)


def _check(accelerator: Any, who: str) -> None:
    if not isinstance(accelerator, Accelerator):
        raise InputTypeError(f"gradclip.accelerate.{who} takes an accelerate.Accelerator first. "
                             f"Received: {type(accelerator).__name__}.")
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise ConfigError(f"gradclip.accelerate.{who} cannot clip under DeepSpeed, whose engine clips inside its "
                          "step: set gradient_clipping in the DeepSpeed config.")
    if kind == DistributedType.XLA:
        raise ConfigError(f"gradclip.accelerate.{who} does not support XLA (gradients are reduced inside the "
                          "optimizer step, after clipping): use accelerator.clip_grad_norm_.")
    if kind == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError(f"gradclip.accelerate.{who} needs FSDP2 (DTensor gradients); FSDP1's flat shards give "
                          "local norms. Pass FullyShardedDataParallelPlugin(fsdp_version=2).")


def _unscale_once(accelerator: Accelerator, optimizer: Any) -> None:
    """``accelerator.unscale_gradients``, unless this step's gradients are already unscaled.

    A ``GradScaler`` refuses a second ``unscale_`` before ``update()``; a loop that called
    ``accelerator.clip_grad_norm_`` or ``unscale_gradients`` already unscaled them.
    """
    scaler = accelerator.scaler
    if scaler is None or not (accelerator.native_amp and accelerator.mixed_precision == "fp16"):
        return
    from torch.amp.grad_scaler import OptState

    optimizers = accelerator._optimizers if optimizer is None else [optimizer]
    for opt in optimizers:
        while hasattr(opt, "optimizer") and isinstance(opt.optimizer, torch.optim.Optimizer):
            opt = opt.optimizer  # AcceleratedOptimizer -> the torch optimizer the scaler keys on
        if scaler._per_optimizer_states[id(opt)]["stage"] is not OptState.UNSCALED:
            scaler.unscale_(opt)


def _tensors(parameters: Any) -> list[torch.Tensor]:
    if isinstance(parameters, torch.nn.Module):
        return list(parameters.parameters())
    if isinstance(parameters, torch.Tensor):
        return [parameters]
    return [p[1] if isinstance(p, tuple) else p for p in parameters]
