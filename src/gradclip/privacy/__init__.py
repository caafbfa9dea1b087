"""Differential privacy for PyTorch training: DP-SGD with per-example clipping (measure, decide, apply).

:class:`PrivateStep` clips each example's gradient to norm ``C``, adds Gaussian noise and keeps
the privacy account with Opacus's accountants; same numbers as Opacus 1.6's ``DPOptimizer``.
It needs PyTorch and Opacus (``pip install gradclip[privacy]``).

Example:
    >>> import torch
    >>> from gradclip.privacy import PrivateStep, poisson_loader
    >>> data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    >>> loader = poisson_loader(data, sample_rate=0.25, generator=torch.Generator().manual_seed(0))
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
    >>> step = PrivateStep(model, opt, max_grad_norm=1.0, noise_multiplier=1.0,
    ...                    expected_batch_size=16, sample_rate=0.25, delta=1e-3,
    ...                    generator=torch.Generator().manual_seed(1))
    >>> for x, y in loader:
    ...     losses = torch.nn.functional.mse_loss(model(x), y, reduction="none").squeeze(1)
    ...     _ = step.backward(losses)      # clip each example, sum into p.grad
    ...     step.step()                    # noise, / expected_batch_size, optimizer.step()
    >>> stats = step.last_stats()
    >>> stats.steps, 0 <= stats.fraction_clipped <= 1, stats.epsilon > 0
    (4, True, True)

References:
    Abadi et al. 2016, Deep Learning with Differential Privacy, arXiv:1607.00133.
    Andrew et al. 2021, Differentially Private Learning with Adaptive Clipping, arXiv:1905.03871.
    Yousefpour et al. 2021, Opacus: User-Friendly Differential Privacy Library in PyTorch,
    arXiv:2109.12298.
"""

from __future__ import annotations

from gradclip.privacy._account import poisson_loader
from gradclip.privacy._coef import clip_coef
from gradclip.privacy._step import PrivacyStats, PrivateStep

__all__ = ["AdaptiveClip", "PrivacyStats", "PrivateStep", "clip_coef", "poisson_loader"]


def __getattr__(name: str):
    # AdaptiveClip lives in its own module and is imported on first use.
    if name == "AdaptiveClip":
        from gradclip.privacy._adaptive import AdaptiveClip

        return AdaptiveClip
    raise AttributeError(f"module 'gradclip.privacy' has no attribute {name!r}")
