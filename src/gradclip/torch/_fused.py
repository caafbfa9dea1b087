"""``clipped(optimizer, policy)``: clipping inside ``optimizer.step()``, fused where the optimizer allows.

Clip-then-step reads every gradient three times and writes it once before the optimizer reads it
again: the norm (read), the scale (read + write), the step (read). torch's fused optimizers
(``Adam``/``AdamW``/``SGD``/``Adagrad`` with ``fused=True``) already divide the gradients by a
``grad_scale`` tensor inside their one-pass kernel (that is how ``torch.amp.GradScaler`` unscales
for free), so a global clip coefficient ``c`` can ride along as ``grad_scale = 1 / c`` and the
separate scale pass disappears. The kernel also takes ``found_inf``: a skipped step (non-finite
gradients with ``nonfinite="skip"``, a spike with ``SpikeGuard``) leaves parameters and optimizer
state untouched without a host-device sync.

Host-device syncs, written down: in eager mode on the CPU a skipped step is read on the host (free
there). On accelerators and under ``torch.compile`` the fused path reads nothing, with
``nonfinite="propagate"`` and with ``"skip"`` (the skip rides in ``found_inf``); an optimizer that is
not fused reads one boolean per step (whether to skip), since a step that must not happen cannot be
undone afterwards. The counts for each mode are in :class:`gradclip.torch.Clipper`.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from gradclip._errors import ConfigError, InputTypeError
from gradclip._policies import Policy
from gradclip._stats import ClipStats
from gradclip.torch import _fast, _measure, _params
from gradclip.torch._clipper import Clipper

__all__ = ["clipped"]

_MISSING = object()


class _Binding:
    """What a clipped optimizer carries: the clipper, what to clip, and its original ``step``."""

    def __init__(self, clipper: Clipper, parameters: Any, original: Any) -> None:
        self.clipper = clipper
        self.parameters = parameters
        self.original = original
        self.attrs: dict[str, Any] = {}  # the optimizer's __dict__ (see _clipped_step)
        self.pending: tuple | None = None  # a checked clipper state, assigned after the optimizer's


def clipped(optimizer: torch.optim.Optimizer, policy: Clipper | Policy | str, *, parameters: Any = None,
            **clipper_options: Any) -> torch.optim.Optimizer:
    """Make ``optimizer.step()`` clip the gradients first, folding the clip into fused kernels.

    The optimizer is changed in place and returned (it stays the same object, so learning-rate
    schedulers, ``zero_grad`` and checkpoints work as before). Each ``step()`` runs the clipper
    (measure, decide, apply), then the optimizer's own step:

    - For a fused optimizer (``torch.optim.AdamW(..., fused=True)``, also ``Adam``, ``SGD``,
      ``Adagrad``) and a policy that decides one global factor (``GlobalNorm``, ``AutoClip``,
      ``ZClip``, ``AdaGC``...), the factor is not applied to the gradients; it is handed to the
      optimizer's kernel as ``grad_scale = 1 / coef``. Parameters equal clip-then-step up to
      rounding (``g / (1 / c)`` instead of ``g * c``: a relative 1e-7 in float32). After the
      step the gradients hold the clipped values, as after clip-then-step.
    - Otherwise (other optimizers, per-tensor/unit-wise/value policies) it is clip-then-step.
    - A skipped step (``stats.skipped``) does not update anything, including the step count.

    Host reads and ``torch.compile``: with a fused optimizer, ``"propagate"`` and ``"skip"`` read
    nothing from the device (a non-finite step is skipped by the kernel's ``found_inf``); ``"zero"``
    and ``"error"`` read one boolean per step, and an optimizer that is not fused reads one more
    (whether to step). Compiled, the clip is one graph without a break (``fullgraph=True`` holds
    for ``optimizer.clipper.step(model, apply_coef=False)``); the step itself breaks only where
    torch breaks every optimizer step (around its body; torch 2.13 does not trace the fused
    kernels), so ``torch.compile(opt.step)`` works and ``fullgraph=True`` does not, as for the
    same optimizer without gradclip.

    ``optimizer.last_stats()`` returns the :class:`gradclip.ClipStats` of the last step (the
    same method as on every adapter's clipper; the ``optimizer.clip_stats`` attribute still holds
    them, and is deprecated) and ``optimizer.clipper`` is the :class:`Clipper`. The clipper's state is saved in
    ``optimizer.state_dict()`` under ``"gradclip"`` and restored by ``load_state_dict``, which
    checks both parts before assigning either (:meth:`Clipper.load_state_dict`; a bad clipper
    part raises :class:`gradclip.StateDictError`, a bad optimizer part torch's error, and either
    leaves both as they were). A plain torch optimizer loading such a checkpoint ignores the
    ``"gradclip"`` key (torch reads only ``"state"`` and ``"param_groups"``): the clipper state
    stays in the dict, for ``Clipper(policy).load_state_dict(saved["gradclip"])``. To resume with
    changed hyper-parameters, load it that way with ``strict=False``, then
    ``optimizer.load_state_dict({k: v for k, v in saved.items() if k != "gradclip"})``.

    Args:
        optimizer: A ``torch.optim.Optimizer``.
        policy: A :class:`Clipper`, a :class:`gradclip.Policy` or a spec string (``"norm:1.0"``).
        parameters: What to clip (default: every parameter in ``optimizer.param_groups``). Pass
            the model (or a list of ``(name, parameter)`` pairs) to get names in offenders.
        **clipper_options: ``Clipper`` options (``nonfinite=``, ``norm_dtype=``, ``foreach=``,
            ``fast=``) when ``policy`` is not already a ``Clipper``.

    Returns:
        ``optimizer`` itself, now clipping inside ``step()``.

    Raises:
        InputTypeError: ``optimizer`` is not a ``torch.optim.Optimizer``, or ``parameters`` is a
            generator (it would be used up by the first step).
        ConfigError: the optimizer is already clipped, or options come with a ready ``Clipper``.

    References:
        Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks",
        ICML 2013 (arXiv:1211.5063).

    Example:
        >>> import torch, gradclip.torch as gct
        >>> model = torch.nn.Linear(4, 1)
        >>> opt = gct.clipped(torch.optim.AdamW(model.parameters(), fused=True), "norm:1.0")
        >>> model(torch.ones(8, 4)).sum().mul(100).backward()
        >>> opt.step()
        >>> stats = opt.last_stats()
        >>> bool(stats.clipped), round(float(stats.clipped_norm), 4)
        (True, 1.0)
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise InputTypeError(f"clipped() takes a torch.optim.Optimizer. Received: {type(optimizer).__name__}.")
    if getattr(optimizer, "_gradclip", None) is not None:
        raise ConfigError("This optimizer is already clipped: call gradclip.torch.clipped() once per optimizer.")
    if isinstance(parameters, types.GeneratorType):
        raise InputTypeError(
            "parameters must be reusable (a model, a list of parameters or of (name, parameter) pairs); "
            "a generator such as model.parameters() would be used up by the first step. Pass the model."
        )
    clipper = _as_clipper(policy, clipper_options)
    params = list(parameters) if isinstance(parameters, (list, tuple)) else parameters
    optimizer._gradclip = _Binding(clipper, params, optimizer.step)  # type: ignore[attr-defined]
    optimizer._gradclip.attrs = optimizer.__dict__  # type: ignore[attr-defined]
    optimizer.clipper = clipper  # type: ignore[attr-defined]
    optimizer.clip_stats = None  # type: ignore[attr-defined]  # deprecated: last_stats()
    optimizer.last_stats = types.MethodType(_last_stats, optimizer)  # type: ignore[attr-defined]
    optimizer.step = types.MethodType(_clipped_step, optimizer)  # type: ignore[method-assign]
    optimizer.register_state_dict_post_hook(_save_clipper)
    optimizer.register_load_state_dict_pre_hook(_load_clipper)
    optimizer.register_load_state_dict_post_hook(_commit_clipper)
    return optimizer


def _as_clipper(policy: Clipper | Policy | str, options: dict[str, Any]) -> Clipper:
    if isinstance(policy, Clipper):
        if options:
            raise ConfigError(
                f"Options {sorted(options)} were given with a ready Clipper. Set them on the Clipper, "
                "or pass a policy instead of the Clipper."
            )
        return policy
    return Clipper(policy, **options)


def fusable(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's kernel takes ``grad_scale``/``found_inf`` (torch's fused optimizers)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        g.get("fused") for g in optimizer.param_groups
    )


def _last_stats(self: torch.optim.Optimizer) -> ClipStats:
    """The :class:`gradclip.ClipStats` of the last ``step()`` (0-d tensors: no host read).

    Raises:
        ConfigError: ``step()`` has not run yet.
    """
    stats = self.__dict__.get("clip_stats")
    if stats is None:
        raise ConfigError("This optimizer has not stepped yet: call optimizer.step() first.")
    return stats


def _clipped_step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
    """The clipped ``step``: evaluate the closure, clip, then step (fused where possible)."""
    binding: _Binding = self._gradclip  # type: ignore[attr-defined]
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    fused = fusable(self)
    if fused and getattr(self, "grad_scale", None) is not None:
        raise ConfigError(
            "The gradients are still scaled by a GradScaler. Call scaler.unscale_(optimizer) before "
            "scaler.step(optimizer), so that the clip sees the true gradient norm."
        )
    target = self.param_groups if binding.parameters is None else binding.parameters
    stats = binding.clipper.step(target, apply_coef=not fused)  # Monitor.attach forwards apply_coef
    # Through __dict__: torch.compile (2.13) silently drops attribute assignments on an optimizer.
    binding.attrs["clip_stats"] = stats
    deferred = fused and stats.coef is not None
    if _fast.host_reads(stats.norm.device):  # eager CPU: reading the flags is free, and saves a pass
        if bool(stats.skipped):
            if deferred:  # the clipper's skip folds into coef = 0: leave the gradients as clip-then-step would
                _apply(binding, self, stats.coef)
            return loss
        if deferred and bool(stats.coef == 1):
            deferred = False
    elif not fused and bool(stats.skipped):  # one host read: a step that must not happen cannot be undone
        return loss
    if not fused:
        binding.original()
        return loss
    _fused_step(self, binding, stats, deferred)
    return loss


def _fused_step(opt: torch.optim.Optimizer, binding: _Binding, stats: ClipStats, deferred: bool) -> None:
    """Call the fused kernel with the clip coefficient as ``grad_scale`` and the skip as ``found_inf``."""
    saved = {k: getattr(opt, k, _MISSING) for k in ("grad_scale", "found_inf")}
    scaler_flag = saved["found_inf"] if isinstance(saved["found_inf"], torch.Tensor) else None  # a GradScaler's
    skip = stats.skipped.to(torch.float32)
    if scaler_flag is not None:
        skip = torch.maximum(skip, scaler_flag.to(skip.device, torch.float32))
    try:
        if deferred:
            opt.grad_scale = torch.reciprocal(stats.coef).to(torch.float32)  # type: ignore[attr-defined]
        if not _fast.host_reads(stats.norm.device) or scaler_flag is not None:
            opt.found_inf = skip  # type: ignore[attr-defined]
        binding.original()
    finally:
        for key, value in saved.items():
            if value is _MISSING:
                if hasattr(opt, key):
                    delattr(opt, key)
            else:
                setattr(opt, key, value)


def _apply(binding: _Binding, opt: torch.optim.Optimizer, coef: torch.Tensor) -> None:
    named = _params.named_tensors(opt.param_groups if binding.parameters is None else binding.parameters)
    _measure.scale_(_params.with_grads(named)[2], coef, binding.clipper.foreach)


def _save_clipper(opt: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    state_dict["gradclip"] = opt._gradclip.clipper.state_dict()  # type: ignore[attr-defined]
    return state_dict


def _load_clipper(opt: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Pre-hook: check the clipper's part now; it is assigned by :func:`_commit_clipper` once torch
    has checked and loaded the optimizer's part (so a bad optimizer part leaves the clipper as it was)."""
    binding: _Binding = opt._gradclip  # type: ignore[attr-defined]
    binding.pending = None
    saved = state_dict.pop("gradclip", None)
    if saved is not None:
        binding.pending = binding.clipper._checked(saved, strict=True)
    return state_dict


def _commit_clipper(opt: torch.optim.Optimizer) -> None:
    binding: _Binding = opt._gradclip  # type: ignore[attr-defined]
    if binding.pending is not None:
        clipper = binding.clipper
        clipper.steps, state, _ = binding.pending
        clipper._state = state or None
        clipper._place = clipper._state is not None
        binding.pending = None
