"""``GradientClipping``: a Lightning callback that clips with any gradclip policy where Lightning clips.

Where it runs. Lightning's precision plugin calls, once per optimizer step and after the closure
(``training_step`` + ``backward``) has run: ``scaler.unscale_`` (16-bit AMP only), then the
callbacks' ``on_before_optimizer_step``, the LightningModule's ``on_before_optimizer_step``, then
its own clipping (``configure_gradient_clipping`` → ``clip_grad_norm_``/``clip_grad_value_`` when
``Trainer(gradient_clip_val=...)`` is set), then ``optimizer.step()``. This callback clips in the
callbacks' ``on_before_optimizer_step``: after unscaling, on the gradients that the optimizer is
about to use, once per optimizer step under ``accumulate_grad_batches`` (the micro-batches that
only accumulate call no such hook). Nothing between it and Lightning's own clipping point changes
the gradients, so ``GlobalNorm(c)`` and ``Value(c)`` give Lightning's weights bitwise. One
difference in what a user sees: a LightningModule's own ``on_before_optimizer_step`` (where
``grad_norm(self, 2)`` is usually logged) runs after this callback, so it sees clipped gradients;
this callback logs the pre-clip norms under the same names instead.

Skipping. Lightning has no "skip this step" switch inside an optimizer step (the hook runs inside
``optimizer.step(closure)``), so a skipped step (``nonfinite="skip"`` on NaN/Inf, or a policy that
skips spikes) sets every gradient of the optimizer to ``None``: torch optimizers leave a parameter
without gradient alone, so parameters and optimizer state (Adam's moments, its step count) stay as
they were, as when ``training_step`` returns ``None``. A custom optimizer that updates parameters
without gradients (weight decay on every tensor) would not skip.

Host reads, written down: ``nonfinite="propagate"`` with a policy that never skips reads nothing
per step; a policy that may skip (``"spikeguard"``, ``ZClip(skip=...)``) or ``nonfinite="skip"``
reads one boolean per step (whether to drop the gradients; a step that must not happen cannot be
undone); ``"error"`` and ``"zero"`` read one (the Clipper's). The logged values stay tensors;
Lightning reads them when it writes to its loggers (every ``log_every_n_steps``). A ``monitor``
reads once per step on the CPU, once per ``flush_every`` steps on accelerators.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from gradclip import _validate
from gradclip._errors import ConfigError, InputTypeError
from gradclip._policies import Policy
from gradclip._stats import ClipStats
from gradclip.lightning._require import lightning_pytorch
from gradclip.torch import Clipper

pl = lightning_pytorch()

__all__ = ["GradientClipping"]


class GradientClipping(pl.Callback):
    """Clip gradients in ``Trainer.fit`` with any gradclip policy, log what happened, skip bad steps.

    The one-line replacement for ``Trainer(gradient_clip_val=c)``:
    ``Trainer(callbacks=[GradientClipping(GlobalNorm(c))])`` gives the same weights (bitwise, in
    ``"32"``, ``"bf16-mixed"`` and ``"16-mixed"`` with a GradScaler, with gradient accumulation,
    under DDP), and any other policy (``Value``, ``ZClip``, ``AutoClip``, ``AGC``, chains such as
    ``"spikeguard+norm:1.0"``) runs at the same point: after AMP unscaling, once per optimizer
    step. Under DDP the gradients are already averaged across ranks there, so every rank decides
    alike; under FSDP2 (``ModelParallelStrategy`` with ``fully_shard``) they are DTensors, and the
    norms are global. ``strategy="fsdp"`` (FSDP1: plain-tensor shards) and DeepSpeed are refused.
    The policy's state (ZClip's EMA, AutoClip's history) is saved in Lightning checkpoints and
    restored on ``trainer.fit(..., ckpt_path=...)``.

    Logged with ``pl_module.log`` (when ``log`` is True) on the steps where Lightning writes its
    logs (every ``Trainer(log_every_n_steps=...)``, 50 by default): ``grad_{p}_norm_total`` (the
    pre-clip total norm, under the name of Lightning's ``grad_norm`` utility, ``p`` = ``2.0``),
    ``grad/norm_total_clipped``, ``grad/clipped``, ``grad/skipped`` and, for a policy with one
    adaptive threshold (ZClip, AutoClip), ``grad/threshold`` (the names of
    :class:`gradclip.Monitor`); with
    ``log_per_layer=True`` also ``grad_{p}_norm/<name>`` per parameter (the Clipper's pre-clip
    per-tensor norms: free to measure, one log call each).

    Args:
        policy: A :class:`gradclip.Policy`, a spec string (``"norm:1.0"``, ``"zclip"``,
            ``"spikeguard+norm:1.0"``) or a ready :class:`gradclip.torch.Clipper`.
        nonfinite: What a step with NaN/Inf gradients does, as in :class:`gradclip.torch.Clipper`:
            ``"propagate"`` (default, as Lightning: NaN spreads into the weights), ``"error"``
            (raise :class:`gradclip.NonFiniteError` naming the tensors; ``fit`` stops),
            ``"skip"`` (no update: parameters and optimizer state unchanged) or ``"zero"``
            (the optimizer steps with zero gradients).
        monitor: A :class:`gradclip.Monitor` to get one record per optimizer step (pre/post-clip
            norms, per-layer detail, spikes, the loss of the batch that stepped and the
            learning rate of the step), written on global rank 0. The caller closes it.
        log: Log the statistics above with ``pl_module.log`` (default True).
        log_per_layer: Also log each parameter's pre-clip gradient norm (default False).
        log_every_n_steps: Log every this many optimizer steps (1: every step, so that
            ``trainer.callback_metrics`` always holds the last step's values). Default ``None``:
            on Lightning's logging steps, as its ``LearningRateMonitor`` does. Each
            ``pl_module.log`` call costs Lightning about 0.1-0.7 ms per key on the CPU (more than
            the clipping itself on a small model: ``benchmarks/bench_lightning.py``), hence not
            every step by default. :meth:`last_stats` always holds the last step's statistics.
        **clipper_options: Other :class:`gradclip.torch.Clipper` options (``norm_dtype``,
            ``foreach``, ``fast``, ``check_every``).

    Raises:
        ConfigError: a bad policy spec or option (here); at ``Trainer.fit``: ``gradient_clip_val``
            also set on the Trainer (it would clip twice), manual optimization,
            ``nonfinite="error"`` with a GradScaler (16-bit AMP overflows on purpose now and then),
            ``strategy="fsdp"`` (FSDP1 shards: use FSDP2) or DeepSpeed (it clips itself).
        InputTypeError: ``policy`` is not a policy, a spec string or a Clipper.

    References:
        Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks",
        ICML 2013 (arXiv:1211.5063).

    Example:
        >>> import gradclip
        >>> from gradclip.lightning import GradientClipping
        >>> callback = GradientClipping("spikeguard+norm:1.0", nonfinite="skip")
        >>> callback
        GradientClipping('spikeguard+norm:1.0', nonfinite='skip')
        >>> GradientClipping("nrm:1.0")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        gradclip._errors.ConfigError: Unknown method 'nrm' in spec 'nrm:1.0'. Valid methods: ...
    """

    def __init__(self, policy: Policy | str | Clipper, *, nonfinite: str = "propagate", monitor: Any = None,
                 log: bool = True, log_per_layer: bool = False, log_every_n_steps: int | None = None,
                 **clipper_options: Any) -> None:
        super().__init__()
        if isinstance(policy, Clipper):
            if clipper_options or nonfinite != "propagate":
                raise ConfigError("Pass nonfinite= and Clipper options to the Clipper itself, not with a ready "
                                  f"Clipper. Received: nonfinite={nonfinite!r}, options {sorted(clipper_options)}.")
            self.clipper = policy
        elif isinstance(policy, (Policy, str)):
            self.clipper = Clipper(policy, nonfinite=nonfinite, **clipper_options)
        else:
            raise InputTypeError("GradientClipping takes a gradclip Policy, a spec string such as 'norm:1.0' or a "
                                 f"gradclip.torch.Clipper. Received: {type(policy).__name__}.")
        for name, flag in (("log", log), ("log_per_layer", log_per_layer)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} must be True or False. Received: {flag!r}.")
        if log_every_n_steps is not None:
            log_every_n_steps = _validate.integer("log_every_n_steps", log_every_n_steps)
        self.log_every_n_steps = log_every_n_steps
        if monitor is not None and not callable(getattr(monitor, "step", None)):
            raise InputTypeError(f"monitor must be a gradclip.Monitor (or None). Received: {type(monitor).__name__}.")
        self.monitor = monitor
        # not self.log: Lightning sets callback.log = pl_module.log on every callback at fit start
        self.log_stats, self.log_per_layer = log, log_per_layer
        self._may_skip = self.clipper.nonfinite == "skip" or bool(self.clipper.policy.can_skip)
        self._names: dict[int, str] = {}
        self._pending: tuple[ClipStats, Any] | None = None
        self._to_logger = True

    def __repr__(self) -> str:
        return f"GradientClipping({self.clipper.policy.spec()!r}, nonfinite={self.clipper.nonfinite!r})"

    def last_stats(self) -> ClipStats:
        """The :class:`gradclip.ClipStats` of the last optimizer step (0-d tensors: no host read).

        Raises:
            ConfigError: no step has run yet.
        """
        return self.clipper.last_stats()

    # -- set-up checks ------------------------------------------------------------------------
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Refuse what would clip twice or never (``gradient_clip_val``, manual optimization) or fail by design."""
        if stage != "fit":
            return
        clip_val = trainer.gradient_clip_val
        if clip_val is not None and clip_val > 0:
            raise ConfigError(f"Trainer(gradient_clip_val={clip_val}) and GradientClipping would both clip: drop "
                              "gradient_clip_val (and gradient_clip_algorithm) from the Trainer; the callback clips.")
        if not pl_module.automatic_optimization:
            raise ConfigError("GradientClipping clips in automatic optimization; with automatic_optimization=False "
                              "clip in training_step: clipper = gradclip.torch.Clipper(policy) once, then "
                              "clipper.step(self) between self.manual_backward(loss) and opt.step().")
        _check_strategy(trainer.strategy)
        if getattr(trainer.precision_plugin, "scaler", None) is not None and self.clipper.nonfinite == "error":
            raise ConfigError("nonfinite='error' with a GradScaler (precision='16-mixed') would stop at its routine "
                              "overflow steps, which the scaler skips by design: use nonfinite='skip' or 'propagate'.")
        if _overrides(pl_module, "configure_gradient_clipping"):
            warnings.warn(f"{type(pl_module).__name__} overrides configure_gradient_clipping, which runs after "
                          "GradientClipping: if it clips too, the gradients are clipped twice.", stacklevel=2)
        self._names = {id(p): n for n, p in pl_module.named_parameters()}
        self._to_logger = bool(trainer.loggers)  # without one the values still reach trainer.callback_metrics

    # -- the step -------------------------------------------------------------------------------
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Clip the optimizer's gradients (already unscaled), drop them on a skipped step, log."""
        params = self._named(optimizer)
        if not any(p.grad is not None for _, p in params):  # training_step returned None: no step
            return
        stats = self.clipper.step(params)
        if self._may_skip and bool(stats.skipped):  # one host read, only when a skip is possible
            for _, p in params:
                p.grad = None  # torch optimizers leave a parameter without gradient untouched
        if self.log_stats and self._logging_step(trainer):
            self._log(pl_module, stats)
        if self.monitor is not None and trainer.is_global_zero:
            self._pending = (stats, optimizer.param_groups[0].get("lr"))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Hand the step that just happened to the monitor, with the loss of the batch that stepped."""
        if self._pending is None:
            return
        stats, lr = self._pending
        self._pending = None
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # Lightning divides it by accumulate_grad_batches: undo
            loss = loss.detach() * trainer.accumulate_grad_batches
        self.monitor.step([(n, p) for n, p in pl_module.named_parameters()], clip_stats=stats,
                          loss=loss, lr=lr, epoch=trainer.current_epoch)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Write what the monitor buffered (it stays open: the caller closes it)."""
        self._pending = None
        if self.monitor is not None and stage == "fit" and callable(getattr(self.monitor, "flush", None)):
            self.monitor.flush()

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The Clipper's state (policy spec, state tensors, step count), saved in Lightning checkpoints."""
        return self.clipper.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the Clipper's state on ``fit(ckpt_path=...)``, after checking all of it.

        Raises:
            StateDictError: the checkpoint was saved with another policy, or its state does not fit.
        """
        self.clipper.load_state_dict(state_dict)

    # -- helpers ----------------------------------------------------------------------------------
    def _named(self, optimizer: Any) -> list[tuple[str, torch.Tensor]]:
        """The optimizer's parameters in its order (Lightning's ``main_params``), with module names."""
        out = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = self._names.get(id(p))
                out.append((name if name is not None else f"param[{len(out)}]", p))
        return out

    def _logging_step(self, trainer: Any) -> bool:
        """Whether this optimizer step is logged: ours every N steps, or Lightning's logging steps."""
        if self.log_every_n_steps is not None:
            return trainer.global_step % self.log_every_n_steps == 0
        should = getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", None)
        return True if should is None else bool(should)  # as Lightning's LearningRateMonitor decides

    def _log(self, pl_module: Any, stats: ClipStats) -> None:
        """Log the step's statistics as tensors (no host read here)."""
        prefix = f"grad_{float(stats.norm_type)}_norm"
        values = {f"{prefix}_total": stats.norm, "grad/norm_total_clipped": stats.clipped_norm,
                  "grad/clipped": stats.clipped, "grad/skipped": stats.skipped}
        threshold = stats.threshold
        if isinstance(threshold, torch.Tensor) and threshold.dim() == 0:  # adaptive; a fixed one is the spec's
            values["grad/threshold"] = threshold
        if self.log_per_layer and stats.tensor_norms is not None:
            values.update({f"{prefix}/{n}": v for n, v in zip(stats.names, stats.tensor_norms.unbind())})
        values = {k: v.detach().to(torch.float32) for k, v in values.items()}
        pl_module.log_dict(values, on_step=True, on_epoch=False, prog_bar=False, logger=self._to_logger)


def _check_strategy(strategy: Any) -> None:
    """Refuse the strategies whose gradients this callback cannot see whole (FSDP1) or at all (DeepSpeed)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ConfigError("strategy='fsdp' (FSDP1) gives each rank plain-tensor shards of the gradients, so every rank "
                          "would clip by its own shard's norm (Lightning refuses norm clipping there too): use "
                          "ModelParallelStrategy with fully_shard in configure_model (FSDP2, DTensor gradients).")
    if isinstance(strategy, DeepSpeedStrategy):
        raise ConfigError("DeepSpeed keeps the gradients inside its engine and clips there: set 'gradient_clipping' in "
                          "the DeepSpeed config and drop GradientClipping.")


def _overrides(pl_module: Any, method: str) -> bool:
    """Whether the LightningModule subclass defines ``method`` itself."""
    return getattr(type(pl_module), method, None) is not getattr(pl.LightningModule, method, None)
