"""``GradientClippingCallback``: clip with any gradclip policy inside the Hugging Face ``Trainer``.

Where it runs, in ``Trainer._inner_training_loop`` (transformers 5.x), once per optimizer step
(after the last micro-batch of a gradient-accumulation window)::

    grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm or inf)  # the logged "grad_norm";
                                                                           # unscales fp16 gradients
    callback_handler.on_pre_optimizer_step(...)   # <- Clipper.step(model): measure, decide, apply
    optimizer.step()
    ...
    trainer.log(logs)  -> log_history, then on_log of each callback in order

so the policy sees the summed, unscaled gradients of the whole accumulation window, exactly what
``max_grad_norm`` clips. The Trainer's own clipping must be off (``max_grad_norm=0``), or it would
clip first and the policy would see clipped norms: the callback refuses to start otherwise.

A skipped step (``nonfinite="skip"`` on NaN/Inf gradients, or a policy that skips spikes) sets
every gradient to ``None`` before ``optimizer.step()``: torch optimizers leave a parameter without
a gradient untouched, its moments and step count included. The step still counts as a training
step (``state.global_step`` and the learning-rate schedule advance, as for a NaN loss under
``logging_nan_inf_filter``). Deciding to skip is one host read per optimizer step; the Trainer
already reads the loss of every micro-batch.
"""

from __future__ import annotations

import warnings
from typing import Any

from transformers import DefaultFlowCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

from gradclip._errors import ConfigError, InputTypeError
from gradclip._policies import Policy
from gradclip._validate import NONFINITE_MODES, choice
from gradclip.torch import Clipper
from gradclip.transformers import _state

__all__ = ["GradientClippingCallback", "attach"]


class GradientClippingCallback(TrainerCallback, ExportableState):
    """Clip the gradients of a Hugging Face ``Trainer`` with any gradclip policy, and log what happened.

    Runs ``gradclip.torch.Clipper.step(model)`` in ``on_pre_optimizer_step``, once per optimizer
    step. Adds to every training log (``trainer.state.log_history`` and, with :func:`attach`, the
    ``report_to`` integrations): ``grad_norm_clipped`` (the norm after clipping, last step),
    ``grad_clipped`` and ``grad_skipped`` (the fraction of optimizer steps since the previous log
    that were clipped / skipped: 1.0 or 0.0 with ``logging_steps=1``). ``grad_norm`` stays the
    Trainer's key: the pre-clip 2-norm. The policy state (ZClip's EMA, AutoClip's history) is
    saved in every checkpoint's ``trainer_state.json`` and restored by
    ``trainer.train(resume_from_checkpoint=...)`` (with ``restore_callback_states_from_checkpoint=True``
    the Trainer replaces the callback by a new instance built from :meth:`state`: the live one is
    in ``trainer.callback_handler.callbacks``).

    Args:
        policy: A :class:`gradclip.Policy` or a spec string (``"norm:1.0"``, ``"zclip"``).
        nonfinite: ``"propagate"`` (default), ``"error"``, ``"skip"`` (NaN/Inf gradients: the
            optimizer step changes nothing) or ``"zero"``; see :class:`gradclip.torch.Clipper`.

    Raises:
        ConfigError: an invalid spec or ``nonfinite``; at ``Trainer(...)`` or ``train()``,
            ``max_grad_norm > 0`` (it would clip twice), DeepSpeed (its engine clips) or FSDP1.

    References:
        Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks",
        ICML 2013 (arXiv:1211.5063). Kumar et al. "ZClip: Adaptive Spike Mitigation for LLM
        Pre-Training", 2025 (arXiv:2504.02507).

    Example:
        >>> import torch, transformers, gradclip.transformers as gctr
        >>> model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        ...     n_layer=1, n_embd=8, n_head=2, vocab_size=20, n_positions=8, bos_token_id=0, eos_token_id=0))
        >>> data = [{"input_ids": torch.arange(8), "labels": torch.arange(8)}] * 4
        >>> args = transformers.TrainingArguments("/tmp/gradclip-doctest", max_grad_norm=0, max_steps=2,
        ...     use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True)
        >>> trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
        >>> trainer.remove_callback(transformers.PrinterCallback)  # keeps this example's output short
        >>> callback = gctr.attach(trainer, "norm:0.5")
        >>> _ = trainer.train()
        >>> trainer.state.log_history[0]["grad_norm_clipped"] <= 0.5 + 1e-6
        True
    """

    def __init__(self, policy: Policy | str, *, nonfinite: str = "propagate") -> None:
        self.clipper = Clipper(policy, nonfinite=choice("nonfinite", nonfinite, NONFINITE_MODES))
        self.spec = self.clipper.policy.spec()
        self.attached = False  # set by attach(): on_log runs before the reporting integrations
        self._warned = False
        self._counts: list[Any] = [0, 0, 0]  # steps, clipped, skipped since the last log
        self._last: Any = None

    def __repr__(self) -> str:
        return f"GradientClippingCallback({self.spec!r}, nonfinite={self.clipper.nonfinite!r})"

    # ---- set-up -------------------------------------------------------------------------------
    def on_init_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        check_arguments(args)

    def on_train_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        check_arguments(args)
        if state.global_step > 0:  # resumed: trainer_state.json of the checkpoint is loaded by now
            self._resume(state)
        reporting = [r for r in (args.report_to or []) if r != "none"]
        if reporting and not self.attached and not self._warned:
            self._warned = True
            warnings.warn(f"GradientClippingCallback was passed in Trainer(callbacks=...), so the report_to "
                          f"integrations {reporting} log before it and miss grad_norm_clipped, grad_clipped and "
                          "grad_skipped (trainer.state.log_history has them): use "
                          "gradclip.transformers.attach(trainer, callback) instead.", stacklevel=2)

    # ---- every optimizer step -----------------------------------------------------------------
    def on_pre_optimizer_step(self, args: TrainingArguments, state: Any, control: Any, model: Any = None,
                              **kwargs: Any) -> None:
        stats = self.clipper.step(model)
        if bool(stats.skipped):  # one host read: a step that must not happen cannot be undone
            for p in model.parameters():
                p.grad = None
        n, clipped, skipped = self._counts
        self._counts = [n + 1, clipped + stats.clipped, skipped + stats.skipped]  # no host read
        self._last = stats

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        n = self._counts[0]
        if logs is None or "loss" not in logs or n == 0:  # evaluation and summary logs, or nothing new
            return
        extra = {
            "grad_norm_clipped": float(self._last.clipped_norm),
            "grad_clipped": float(self._counts[1]) / n,
            "grad_skipped": float(self._counts[2]) / n,
        }
        if "grad_norm" not in logs:
            extra["grad_norm"] = float(self._last.norm)
        self._counts = [0, 0, 0]
        last = state.log_history[-1] if state.log_history else None  # Trainer.log copied logs before on_log
        if last is not None and last.get("step") == state.global_step and set(last) - {"step"} == set(logs):
            last.update(extra)  # (keys, not values, identify the record: a NaN loss is not equal to itself)
        logs.update(extra)

    # ---- checkpoints: ExportableState, saved in trainer_state.json ------------------------------
    def state(self) -> dict:
        """The callback's state for ``trainer_state.json`` (JSON-safe: the clipper's state dict)."""
        return {"args": {"policy": self.spec, "nonfinite": self.clipper.nonfinite},
                "attributes": {"clipper_state": _state.to_json(self.clipper.state_dict())}}

    def _resume(self, state: Any) -> None:
        saved = state.stateful_callbacks.get(type(self).__name__)
        entries = saved if isinstance(saved, list) else [saved] if saved is not None else []
        mine = [e for e in entries if e.get("args", {}).get("policy") == self.spec]
        if not mine:
            warnings.warn(f"The checkpoint has no state for GradientClippingCallback({self.spec!r}): the policy "
                          "starts fresh at this step.", stacklevel=3)
            return
        self.clipper.load_state_dict(_state.from_json(mine[-1]["attributes"]["clipper_state"]))


def check_arguments(args: TrainingArguments) -> None:
    """Refuse ``TrainingArguments`` under which the callback would clip twice, or not at all.

    Raises:
        ConfigError: ``max_grad_norm > 0``, DeepSpeed, or FSDP version 1.
    """
    if args.max_grad_norm is not None and args.max_grad_norm > 0:
        raise ConfigError(f"GradientClippingCallback clips the gradients, and TrainingArguments(max_grad_norm="
                          f"{args.max_grad_norm}) would clip them first (the Trainer's default is 1.0): pass "
                          "TrainingArguments(..., max_grad_norm=0).")
    if getattr(args, "deepspeed", None):
        raise ConfigError("GradientClippingCallback cannot clip under DeepSpeed, whose engine clips inside its step: "
                          "set gradient_clipping in the DeepSpeed config, or train without DeepSpeed.")
    if getattr(args, "fsdp", None) and int((getattr(args, "fsdp_config", None) or {}).get("version", 2)) == 1:
        raise ConfigError("GradientClippingCallback needs FSDP2 (DTensor gradients); FSDP1's flat shards give "
                          "local norms. Received fsdp_config version 1: set fsdp_config={'version': 2}.")


def attach(trainer: Trainer, policy: GradientClippingCallback | Policy | str, *,
           nonfinite: str = "propagate") -> GradientClippingCallback:
    """Add a :class:`GradientClippingCallback` to ``trainer``, ahead of the ``report_to`` integrations.

    ``Trainer(callbacks=[...])`` puts user callbacks after the reporting integrations, whose
    ``on_log`` then runs before the clip statistics are added; ``attach`` inserts the callback
    right after the Trainer's ``DefaultFlowCallback`` so TensorBoard, W&B and MLflow get them.

    Args:
        trainer: A ``transformers.Trainer``.
        policy: A :class:`GradientClippingCallback` (moved if already added), a
            :class:`gradclip.Policy` or a spec string.
        nonfinite: As in :class:`GradientClippingCallback` (only with a policy or spec).

    Returns:
        The callback.

    Raises:
        InputTypeError: ``trainer`` is not a ``transformers.Trainer``.
        ConfigError: as :class:`GradientClippingCallback` (``max_grad_norm > 0``...).
    """
    if not isinstance(trainer, Trainer):
        raise InputTypeError(f"attach() takes a transformers.Trainer. Received: {type(trainer).__name__}.")
    if isinstance(policy, GradientClippingCallback):
        callback = policy
        if nonfinite != "propagate":
            raise ConfigError("attach(trainer, callback, nonfinite=...): the callback has its own nonfinite; "
                              "pass nonfinite= to GradientClippingCallback instead.")
    else:
        callback = GradientClippingCallback(policy, nonfinite=nonfinite)
    check_arguments(trainer.args)
    callbacks = trainer.callback_handler.callbacks
    if callback in callbacks:
        callbacks.remove(callback)
    at = next((i + 1 for i, c in enumerate(callbacks) if isinstance(c, DefaultFlowCallback)), 0)
    callbacks.insert(at, callback)
    callback.attached = True
    return callback

