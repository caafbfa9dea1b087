"""DP-SGD in PyTorch: per-example clipping, Gaussian noise, accounting (measure, decide, apply).

:class:`PrivateStep` joins the three steps of the house layout for differential privacy:

1. measure: :class:`~gradclip.privacy._engine.PerExampleGrads` gives each example's gradient norm
   per parameter, ``(B, P)``, without touching ``.grad``;
2. decide: :func:`~gradclip.privacy._coef.clip_coef` turns norms into coefficients (flat: one per
   example from its total norm; per layer: one per example and parameter);
3. apply: the engine adds ``sum_i c_i g_i`` into ``p.grad``; ``step()`` adds ``N(0, (sigma C)^2)``
   noise, divides by ``expected_batch_size``, steps the optimizer and records the step in an
   Opacus accountant.

Host syncs: only in ``step()``, where the statistics of :meth:`PrivateStep.last_stats` (norm
percentiles, fraction clipped) and the adaptive threshold are read to the host; none in
``backward()``. The noise ``generator`` must live on the parameters' device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Self

import torch

from gradclip._errors import ConfigError, InputTypeError
from gradclip.privacy._account import check_delta, make_accountant
from gradclip.privacy._coef import SEMANTICS, check_number, clip_coef, per_parameter_thresholds

__all__ = ["PrivacyStats", "PrivateStep"]

MODES = ("flat", "per_layer")


@dataclass(frozen=True)
class PrivacyStats:
    """What the last ``step()`` did.

    Attributes:
        steps: Number of ``step()`` calls so far.
        batch_size: Examples in the step (all micro-batches together).
        fraction_clipped: Share of those examples whose norm exceeded ``C`` (per layer: in at
            least one parameter), so their gradient was scaled down.
        norm_p10: 10th percentile of the per-example total gradient norms (before clipping).
        norm_p50: Median of the same norms.
        norm_p90: 90th percentile of the same norms.
        max_grad_norm: The threshold ``C`` used (per layer: the L2 norm of the thresholds).
        noise_std: Standard deviation of the noise added to the summed gradient (before the
            division by ``expected_batch_size``).
        epsilon: Privacy spent so far, when ``sample_rate`` and ``delta`` are known, else None.
    """

    steps: int
    batch_size: int
    fraction_clipped: float
    norm_p10: float
    norm_p50: float
    norm_p90: float
    max_grad_norm: float
    noise_std: float
    epsilon: float | None


def _check_options(model, optimizer, noise_multiplier, expected_batch_size, sample_rate, mode, semantics, generator):
    if not isinstance(model, torch.nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module; received {type(model).__name__}.")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise InputTypeError(f"optimizer must be a torch.optim.Optimizer; received {type(optimizer).__name__}.")
    sigma = check_number("noise_multiplier", noise_multiplier, positive=False, hint="Use 0 to turn the noise off.")
    if isinstance(expected_batch_size, bool) or not isinstance(expected_batch_size, int) or expected_batch_size <= 0:
        raise ConfigError(
            f"expected_batch_size must be a positive int; received {expected_batch_size!r}. "
            "Pass sample_rate * dataset_size (the mean Poisson batch size)."
        )
    if sample_rate is not None:
        q = check_number("sample_rate", sample_rate, positive=True, hint="It is expected_batch_size / dataset_size.")
        if q > 1:
            raise ConfigError(f"sample_rate must be in (0, 1]; received {q!r}. It is expected_batch_size / dataset_size.")
        sample_rate = q
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}; received {mode!r}.")
    if semantics not in SEMANTICS:
        raise ConfigError(f"semantics must be one of {SEMANTICS}; received {semantics!r}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputTypeError(f"generator must be a torch.Generator or None; received {type(generator).__name__}.")
    return sigma, sample_rate


def _check_losses(losses: Any) -> torch.Tensor:
    if not isinstance(losses, torch.Tensor):
        raise InputTypeError(f"per_example_losses must be a torch.Tensor; received {type(losses).__name__}.")
    if losses.ndim != 1 or not losses.is_floating_point():
        raise InputTypeError(
            f"per_example_losses must be a 1-D float tensor, one loss per example; received shape "
            f"{tuple(losses.shape)} dtype {losses.dtype}. Use reduction='none' in the loss function."
        )
    return losses


def _noise(std: float, ref: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise, drawn with the same call as Opacus 1.6 (``_generate_noise``, not secure mode)."""
    if std == 0:
        return torch.zeros_like(ref)
    return torch.normal(mean=0, std=std, size=ref.shape, device=ref.device, generator=generator, dtype=ref.dtype)




class PrivateStep:
    """DP-SGD for a PyTorch model: clip each example's gradient, add Gaussian noise, account.

    Feed it per-example losses; it computes each example's gradient norm (without building the
    per-example gradients where a layer allows), scales each gradient to norm at most ``C``, sums
    them into ``p.grad``, and on ``step()`` adds noise ``N(0, (noise_multiplier * C)^2)`` to each
    coordinate, divides by ``expected_batch_size`` and calls ``optimizer.step()``. Same numbers as
    Opacus 1.6's ``DPOptimizer`` (``semantics="opacus"``, the default).

    Call ``backward(per_example_losses)`` instead of ``loss.backward()`` (which would add
    unclipped gradients to ``p.grad``), and ``step()`` instead of ``optimizer.step()``.

    Sampling is the caller's part: the privacy guarantee of ``epsilon()`` assumes each batch is a
    Poisson sample (every example joins independently with probability ``sample_rate``), as
    :func:`~gradclip.privacy.poisson_loader` (Opacus's ``DPDataLoader``) gives. Shuffled fixed-size
    batches do not match the accountant's assumption.

    Args:
        model: The model; every trainable parameter gets per-example gradients. BatchNorm is
            refused (it mixes examples); use GroupNorm or LayerNorm.
        optimizer: Any torch optimizer over exactly the model's trainable parameters.
        max_grad_norm: ``C``. ``mode="flat"``: a float > 0. ``mode="per_layer"``: a float (one ``C``
            for every parameter), a list (one per parameter, ``named_parameters()`` order) or a
            dict ``{name: C}``; the noise then uses the L2 norm of the thresholds, as Opacus.
        noise_multiplier: ``sigma >= 0``; 0 turns the noise off (and gives no privacy).
        expected_batch_size: The mean logical batch size (``sample_rate * dataset_size``); the noisy
            sum is divided by it. With gradient accumulation it counts all micro-batches of one
            step (Opacus divides by ``expected_batch_size * accumulated_iterations`` instead).
        sample_rate: Poisson sampling rate of one ``step()`` (all its micro-batches together);
            needed for ``epsilon()``. Default None.
        mode: ``"flat"`` (one total norm per example, default) or ``"per_layer"``.
        semantics: Coefficient convention, ``"opacus"`` (default), ``"optax"`` or ``"tf"``; see
            :func:`~gradclip.privacy.clip_coef`.
        ghost: Passed to the engine: ``True`` forces ghost norms, ``False`` forbids them, None
            (default) lets the engine pick per layer.
        adaptive: An :class:`~gradclip.privacy.AdaptiveClip` to learn ``C`` (flat mode only);
            the bound starts at its ``initial`` (leave ``max_grad_norm`` out). The gradient noise
            then uses Theorem 1's larger multiplier; the accountant records ``noise_multiplier``.
        generator: The ``torch.Generator`` for the noise (and the adaptive count noise); None uses
            torch's global generator.
        accountant: ``"rdp"`` (default), ``"prv"`` or ``"gdp"`` (Opacus's accountants) or None.
        delta: Target delta for ``last_stats().epsilon``; None leaves that field None.

    Raises:
        ConfigError: A value out of range (``noise_multiplier < 0``, ``C <= 0`` or NaN,
            ``expected_batch_size`` not a positive int, unknown mode or semantics, a BatchNorm).
        InputTypeError: ``model``/``optimizer``/``generator`` of the wrong type.

    Example:
        >>> import torch
        >>> from gradclip.privacy import PrivateStep
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> step = PrivateStep(model, opt, max_grad_norm=1.0, noise_multiplier=1.1,
        ...                    expected_batch_size=8, sample_rate=0.01,
        ...                    generator=torch.Generator().manual_seed(0))
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> losses = torch.nn.functional.mse_loss(model(x), y, reduction="none").mean(1)
        >>> _ = step.backward(losses)
        >>> step.step()
        >>> 0 < step.epsilon(1e-5) < 1
        True

    References:
        Abadi et al. 2016, Deep Learning with Differential Privacy, arXiv:1607.00133.
        Yousefpour et al. 2021, Opacus: User-Friendly Differential Privacy Library in PyTorch,
        arXiv:2109.12298.
        McMahan et al. 2018, A General Approach to Adding Differential Privacy to Iterative
        Training Procedures, arXiv:1812.06210 (per-layer clipping).
    """

    def __init__(self, model, optimizer, *, max_grad_norm=None, noise_multiplier, expected_batch_size,
                 sample_rate=None, mode="flat", semantics="opacus", ghost=None, adaptive=None,
                 generator=None, accountant="rdp", delta=None):
        self._sigma, self._q = _check_options(
            model, optimizer, noise_multiplier, expected_batch_size, sample_rate, mode, semantics, generator)
        if adaptive is not None and mode != "flat":
            raise ConfigError("adaptive= learns one threshold and needs mode='flat'; received mode='per_layer'.")
        self._delta = None if delta is None else check_delta(delta)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        if adaptive is not None:
            max_grad_norm = _check_adaptive(adaptive, max_grad_norm)
        elif max_grad_norm is None:
            raise ConfigError("max_grad_norm is required (the clipping threshold C, e.g. 1.0) unless adaptive= is given.")
        thresholds = per_parameter_thresholds(max_grad_norm, mode, names)
        self._grad_sigma = self._sigma
        if adaptive is not None:
            from gradclip.privacy._adaptive import gradient_noise_multiplier

            self._grad_sigma = gradient_noise_multiplier(self._sigma, adaptive.count_noise_multiplier)
        self._accountant = make_accountant(accountant)
        self._batch, self._mode, self._semantics = expected_batch_size, mode, semantics
        self._optimizer, self._generator, self._adaptive = optimizer, generator, adaptive
        from gradclip.privacy._engine import PerExampleGrads

        self._engine = PerExampleGrads(model, ghost=ghost)
        try:
            self._params = self._ordered_params(optimizer)
        except ConfigError:
            self._engine.close()
            raise
        self._thresholds = thresholds
        self._c_vec: torch.Tensor | None = None
        self._adaptive_state = None if adaptive is None else adaptive.init()
        self._norms: list[torch.Tensor] = []
        self._clipped: list[torch.Tensor] = []
        self._steps = 0
        self._stats: PrivacyStats | None = None

    def _ordered_params(self, optimizer) -> list[torch.nn.Parameter]:
        """The optimizer's trainable parameters, in its order (the order Opacus draws noise in)."""
        own = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
        model_ids = {id(p) for _, p in self._engine.params}
        if {id(p) for p in own} != model_ids or len(own) != len(model_ids):
            raise ConfigError(
                f"optimizer holds {len(own)} trainable parameters but the model has {len(model_ids)}, or "
                "they differ; build the optimizer from model.parameters() so each one gets noise."
            )
        return own

    @property
    def max_grad_norm(self) -> float:
        """The current ``C`` (per layer: the L2 norm of the per-parameter thresholds)."""
        if len(self._thresholds) == 1:
            return self._thresholds[0]
        return torch.linalg.vector_norm(torch.tensor(self._thresholds)).item()

    def backward(self, per_example_losses: torch.Tensor) -> torch.Tensor:
        """Clip each example's gradient and add the sum into ``p.grad`` (one micro-batch).

        Call it once per micro-batch; several calls before ``step()`` accumulate gradients.

        Args:
            per_example_losses: A 1-D float tensor, one loss per example (``reduction="none"``).

        Returns:
            The mean loss, detached (a 0-d tensor, for logging; no host sync).

        Raises:
            InputTypeError: The losses are not a 1-D float vector with grad, one per example of
                the last forward pass; nothing was changed.
        """
        losses = _check_losses(per_example_losses)
        if losses.shape[0] == 0:  # an empty Poisson batch: nothing to clip, only noise this step
            self._engine._clear()  # drop the empty forward pass the hooks recorded
            return losses.detach().sum()
        norms = self._engine.norms(losses)
        total = torch.linalg.vector_norm(norms, dim=1)
        if self._mode == "flat":
            coefs = clip_coef(total, self._thresholds[0], self._semantics)
            clipped = total > self._thresholds[0]
        else:
            c = self._threshold_vector(norms)
            coefs = clip_coef(norms, c, self._semantics)
            clipped = (norms > c).any(dim=1)
        self._engine.accumulate(coefs)
        self._norms.append(total.detach())
        self._clipped.append(clipped)
        return losses.detach().mean()

    def _threshold_vector(self, like: torch.Tensor) -> torch.Tensor:
        """The per-parameter thresholds as a (P,) tensor, built once per dtype and device."""
        if self._c_vec is None or self._c_vec.dtype != like.dtype or self._c_vec.device != like.device:
            self._c_vec = torch.tensor(self._thresholds, dtype=like.dtype, device=like.device)
        return self._c_vec

    def step(self) -> None:
        """Add noise, divide by ``expected_batch_size``, step the optimizer, account, zero grads."""
        std = self._grad_sigma * self.max_grad_norm
        for p in self._params:
            summed = p.grad if p.grad is not None else torch.zeros_like(p)
            p.grad = (summed + _noise(std, summed, self._generator)).view_as(p)
            p.grad /= self._batch
        self._optimizer.step()
        self._steps += 1
        if self._accountant is not None and self._q is not None:
            self._accountant.step(noise_multiplier=self._sigma, sample_rate=self._q)
        self._finish_step(std)

    def _finish_step(self, std: float) -> None:
        norms = torch.cat(self._norms) if self._norms else torch.zeros(0)
        clipped = torch.cat(self._clipped) if self._clipped else torch.zeros(0, dtype=torch.bool)
        c_used = self.max_grad_norm
        if self._adaptive is not None:
            self._adaptive_state = self._adaptive.update(
                self._adaptive_state, norms, self._batch, generator=self._generator)
            self._thresholds = [float(self._adaptive_state.clip)]
        if norms.numel():
            p10, p50, p90 = torch.quantile(norms.double().cpu(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        else:
            p10 = p50 = p90 = float("nan")
        self._stats = PrivacyStats(
            steps=self._steps, batch_size=int(norms.numel()),
            fraction_clipped=float(clipped.float().mean()) if clipped.numel() else 0.0,
            norm_p10=p10, norm_p50=p50, norm_p90=p90, max_grad_norm=c_used, noise_std=std, epsilon=None)
        self.zero_grad()

    def zero_grad(self) -> None:
        """Drop the accumulated gradients (``p.grad = None``) and the micro-batch statistics."""
        for p in self._params:
            p.grad = None
        self._norms, self._clipped = [], []

    def epsilon(self, delta: float) -> float:
        """Privacy spent so far, ``(epsilon, delta)``-DP, from the Opacus accountant.

        Raises:
            ConfigError: No ``sample_rate`` or ``accountant=None`` was given, or a bad ``delta``.
        """
        delta = check_delta(delta)
        if self._q is None or self._accountant is None:
            raise ConfigError(
                "epsilon() needs sample_rate= and an accountant; received "
                f"sample_rate={self._q!r}, accountant={self._accountant!r}. Pass both to PrivateStep."
            )
        return float(self._accountant.get_epsilon(delta=delta))

    @property
    def accountant(self) -> Any:
        """The Opacus accountant (its ``history`` lists ``(sigma, sample_rate, steps)``), or None."""
        return self._accountant

    def last_stats(self) -> PrivacyStats | None:
        """Statistics of the last ``step()`` (None before the first).

        ``epsilon`` is filled when ``sample_rate``, ``delta`` and an accountant were given; it is
        computed on the first call after each step (cheap for "rdp", about a second for "prv").
        """
        stats = self._stats
        if stats is None or stats.epsilon is not None or self._delta is None:
            return stats
        if self._q is None or self._accountant is None:
            return stats
        self._stats = dataclasses.replace(stats, epsilon=self.epsilon(self._delta))
        return self._stats

    def close(self) -> None:
        """Remove the engine's hooks from the model."""
        self._engine.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def _check_adaptive(adaptive: Any, max_grad_norm: Any) -> float:
    """The starting bound with ``adaptive=``: ``adaptive.initial`` (``max_grad_norm`` must not disagree)."""
    from gradclip.privacy._adaptive import AdaptiveClip

    if not isinstance(adaptive, AdaptiveClip):
        raise InputTypeError(f"adaptive must be a gradclip.privacy.AdaptiveClip or None; received {type(adaptive).__name__}.")
    if max_grad_norm is not None and max_grad_norm != adaptive.initial:
        raise ConfigError(
            f"with adaptive= the bound starts at AdaptiveClip(initial=...)={adaptive.initial}; received "
            f"max_grad_norm={max_grad_norm!r} too. Leave max_grad_norm out or set initial= to it."
        )
    return adaptive.initial
