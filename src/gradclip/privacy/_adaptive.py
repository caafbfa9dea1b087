"""Adaptive clipping for DP-SGD: the clip bound follows a quantile of the per-example norms.

Decide only: :class:`AdaptiveClip` turns a batch's per-example gradient norms (a torch tensor
of shape ``(B,)``) into the next step's clip bound. Measuring the norms and clipping the
per-example gradients is the caller's (``PrivateStep``'s) job, so the same rule serves any
per-example backend. The arithmetic is Opacus 1.6's ``AdaClipDPOptimizer``, step for step in
float32, so the bound sequence is bit-identical to Opacus's on the same norms (with the same
``torch.Generator`` when the count is noised); it differs only where Opacus deviates from the
paper, written down at each place below.

References:
    Andrew, Thakkar, McMahan, Ramaswamy. "Differentially Private Learning with Adaptive
    Clipping", NeurIPS 2021 (arXiv:1905.03871), Algorithm 1 and Theorem 1. Opacus
    ``opacus/optimizers/adaclipoptimizer.py`` (github.com/pytorch/opacus).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from gradclip._errors import ConfigError, InputTypeError
from gradclip._validate import integer, real

__all__ = ["AdaptiveClip", "AdaptiveClipState", "gradient_noise_multiplier"]


class AdaptiveClipState(NamedTuple):
    """State of :class:`AdaptiveClip`: small tensors, on the norms' device after an update.

    Attributes:
        clip: The clip bound to use for the next batch (0-d float32).
        unclipped_fraction: Last update's (noised) fraction of examples with norm within the
            bound, ``b̄`` in the paper (0-d float32; NaN before the first update).
        step: Number of updates made (0-d int64).
    """

    clip: torch.Tensor
    unclipped_fraction: torch.Tensor
    step: torch.Tensor


class AdaptiveClip:
    """Clip bound that tracks the ``target_quantile`` of the per-example norms (geometric rule).

    Each update counts the examples the current bound leaves unclipped,
    ``b = #{i : n_i <= C} + N(0, σ_b²)``, takes ``b̄ = b / expected_batch_size`` and sets
    ``C ← clamp(C · exp(−η (b̄ − γ)), min_clip, max_clip)``. The fixed point is the bound that
    leaves a fraction ``γ`` unclipped, the ``γ``-quantile of the norms.

    Args:
        target_quantile: ``γ`` in (0, 1), the fraction of examples to leave unclipped.
            Default 0.5 (the median, the paper's usual choice).
        learning_rate: ``η`` > 0 of the geometric update. Default 0.2, the paper's value.
        count_noise_multiplier: ``σ_b``, standard deviation of the Gaussian noise added to the
            unclipped count, in examples (the count has sensitivity 1). ``None`` (default) or 0
            adds none and the count is *not* private. The paper suggests
            ``expected_batch_size / 20``; pair it with :func:`gradient_noise_multiplier`.
        initial: The first bound ``C_0`` > 0. Default 1.0 (the paper starts at 0.1).
        min_clip: Lower clamp of the bound, >= 0. Default 0.0.
        max_clip: Upper clamp of the bound, > ``min_clip``. Default ``inf``.
        eps: An example counts as unclipped when ``C / (n + eps) >= 1``, Opacus's rule
            (it matches the clip factor ``min(1, C / (n + 1e-6))`` that Opacus applies).
            Default 1e-6; 0 gives the paper's ``n <= C``.

    Raises:
        ConfigError: an argument out of the ranges above.

    Example:
        >>> import torch
        >>> from gradclip.privacy._adaptive import AdaptiveClip
        >>> ada = AdaptiveClip(target_quantile=0.5, learning_rate=0.2, initial=1.0)
        >>> state = ada.init()
        >>> norms = torch.tensor([0.5, 0.8, 2.0, 3.0, 4.0])   # 2 of 5 within the bound
        >>> state = ada.update(state, norms, expected_batch_size=5)
        >>> round(float(state.clip), 4), float(state.unclipped_fraction)  # exp(-0.2 * (0.4 - 0.5))
        (1.0202, 0.4000000059604645)

    References:
        Andrew et al. "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021
        (arXiv:1905.03871), Algorithm 1 (geometric update, Section 2.2); η = 0.2 in Section 4.
    """

    def __init__(self, target_quantile: float = 0.5, learning_rate: float = 0.2,
                 count_noise_multiplier: float | None = None, initial: float = 1.0,
                 min_clip: float = 0.0, max_clip: float = math.inf, eps: float = 1e-6):
        self.target_quantile = real("target_quantile", target_quantile, "a number in (0, 1)")
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError(f"target_quantile must be in (0, 1), e.g. 0.5 for the median. "
                              f"Received: {target_quantile!r}.")
        self.learning_rate = _positive("learning_rate", learning_rate)
        self.initial = _positive("initial", initial)
        self.count_noise_multiplier = None
        if count_noise_multiplier is not None:
            sigma_b = real("count_noise_multiplier", count_noise_multiplier, "a number >= 0 or None")
            if sigma_b < 0 or math.isinf(sigma_b):
                raise ConfigError(f"count_noise_multiplier must be finite and >= 0, or None. "
                                  f"Received: {count_noise_multiplier!r}.")
            self.count_noise_multiplier = sigma_b or None
        self.min_clip = real("min_clip", min_clip, "a number >= 0")
        self.max_clip = real("max_clip", max_clip, "a number > min_clip")
        if self.min_clip < 0 or self.max_clip <= self.min_clip:
            raise ConfigError(f"need 0 <= min_clip < max_clip. Received: min_clip={min_clip!r}, "
                              f"max_clip={max_clip!r}.")
        self.eps = real("eps", eps, "a number >= 0")
        if self.eps < 0:
            raise ConfigError(f"eps must be >= 0 (1e-6 is Opacus's, 0 the paper's). Received: {eps!r}.")

    def __repr__(self) -> str:
        return (f"AdaptiveClip(target_quantile={self.target_quantile}, learning_rate={self.learning_rate}, "
                f"count_noise_multiplier={self.count_noise_multiplier}, initial={self.initial}, "
                f"min_clip={self.min_clip}, max_clip={self.max_clip}, eps={self.eps})")

    def init(self, device: torch.device | str | None = None) -> AdaptiveClipState:
        """The state before the first batch: ``clip == initial`` (float32, on ``device``)."""
        f32 = {"dtype": torch.float32, "device": device}
        return AdaptiveClipState(clip=torch.tensor(self.initial, **f32),
                                 unclipped_fraction=torch.tensor(math.nan, **f32),
                                 step=torch.tensor(0, dtype=torch.int64, device=device))

    def unclipped_count(self, clip: torch.Tensor, per_example_norms: torch.Tensor) -> torch.Tensor:
        """Number of examples left unclipped by ``clip`` (0-d int64), Opacus's rule.

        An example is clipped when ``clip / (n + eps) < 1``; a NaN norm counts as unclipped,
        as in Opacus.
        """
        return (~(clip / (per_example_norms + self.eps) < 1)).sum()

    def update(self, state: AdaptiveClipState, per_example_norms: torch.Tensor,
               expected_batch_size: int, generator: torch.Generator | None = None) -> AdaptiveClipState:
        """Move the bound one step toward the target quantile of ``per_example_norms``.

        No host synchronisation: everything stays a tensor on the norms' device.

        Args:
            state: From :meth:`init` or the previous :meth:`update`.
            per_example_norms: The batch's per-example gradient norms, a 1-D tensor ``(B,)``,
                measured before clipping by ``state.clip``.
            expected_batch_size: Denominator of the unclipped fraction. The paper (and DP)
                need the *expected* batch size under Poisson sampling, not ``B``; Opacus
                divides by the examples actually seen, which is the same for fixed batches.
            generator: Source of the count noise (unused without ``count_noise_multiplier``), on
                the norms' device.
                Opacus draws it after the gradient noise from the same generator.

        Returns:
            The new :class:`AdaptiveClipState`.

        Raises:
            InputTypeError: ``per_example_norms`` is not a 1-D torch tensor.
            ConfigError: ``expected_batch_size`` is not an int >= 1.
        """
        norms = _check_norms(per_example_norms)
        batch = integer("expected_batch_size", expected_batch_size, maximum=None)
        clip = state.clip.to(norms.device)
        count = self.unclipped_count(clip, norms).to(torch.float32)
        if self.count_noise_multiplier is not None:
            count = count + torch.normal(mean=0.0, std=self.count_noise_multiplier, size=count.shape,
                                         device=count.device, generator=generator, dtype=torch.float32)
        fraction = count / batch
        # Opacus's expression, in its order: C * exp(-lr * (frac - gamma)), all float32.
        new = clip * torch.exp(-self.learning_rate * (fraction - self.target_quantile))
        new = new.clamp(min=self.min_clip, max=self.max_clip)
        return AdaptiveClipState(clip=new, unclipped_fraction=fraction, step=state.step.to(norms.device) + 1)


def gradient_noise_multiplier(noise_multiplier: float, count_noise_multiplier: float | None) -> float:
    """Noise multiplier for the gradient sum when the unclipped count is also noised.

    Privatising the count spends privacy too. Theorem 1 of Andrew et al. shows that noising the
    clipped gradient sum with ``σ_Δ = (σ^-2 − (2 σ_b)^-2)^(-1/2)`` (times the clip bound) and
    the count with ``σ_b`` costs the same as plain DP-SGD with noise multiplier ``σ``, so account
    for ``σ`` and sample the gradient noise with the returned ``σ_Δ`` (> ``σ``). Same expression
    as Opacus's ``AdaClipDPOptimizer.add_noise``.

    Args:
        noise_multiplier: ``σ`` >= 0, the multiplier used for privacy accounting.
        count_noise_multiplier: ``σ_b``, the count noise's standard deviation; ``None`` or 0
            means the count is not noised and ``σ`` is returned unchanged.

    Returns:
        ``σ_Δ``; 0.0 when ``σ`` is 0 (as Opacus).

    Raises:
        ConfigError: a negative value, or ``σ >= 2 σ_b`` (no finite ``σ_Δ`` exists; raise
            ``count_noise_multiplier``).

    Example:
        >>> from gradclip.privacy._adaptive import gradient_noise_multiplier
        >>> round(gradient_noise_multiplier(1.0, 256 / 20), 6)
        1.000764

    References:
        Andrew et al. "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021
        (arXiv:1905.03871), Section 3, Theorem 1.
    """
    sigma = real("noise_multiplier", noise_multiplier, "a number >= 0")
    if sigma < 0 or math.isinf(sigma):
        raise ConfigError(f"noise_multiplier must be finite and >= 0. Received: {noise_multiplier!r}.")
    sigma_b = 0.0 if count_noise_multiplier is None else real(
        "count_noise_multiplier", count_noise_multiplier, "a number >= 0 or None")
    if sigma_b < 0:
        raise ConfigError(f"count_noise_multiplier must be >= 0 or None. Received: {count_noise_multiplier!r}.")
    if sigma == 0 or sigma_b == 0:
        return sigma
    if sigma >= 2 * sigma_b:
        raise ConfigError(f"noise_multiplier must be < 2 * count_noise_multiplier (Theorem 1). Received: "
                          f"{sigma} and {sigma_b}; raise count_noise_multiplier (the paper uses batch/20).")
    return (sigma ** (-2) - (2 * sigma_b) ** (-2)) ** (-1 / 2)


def _positive(name: str, value: Any) -> float:
    v = real(name, value, "a finite number > 0")
    if not 0 < v < math.inf:
        raise ConfigError(f"{name} must be a finite number > 0. Received: {value!r}.")
    return v


def _check_norms(norms: Any) -> torch.Tensor:
    if not isinstance(norms, torch.Tensor):
        raise InputTypeError(f"per_example_norms must be a torch.Tensor of shape (B,). "
                             f"Received: {type(norms).__name__}.")
    if norms.ndim != 1:
        raise InputTypeError(f"per_example_norms must be 1-D, one norm per example. "
                             f"Received shape {tuple(norms.shape)}; flatten or compute per-example norms first.")
    return norms
