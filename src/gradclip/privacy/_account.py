"""Accounting: the privacy spent so far, from Opacus's accountants (never our own math).

A :class:`~gradclip.privacy.PrivateStep` records one ``(noise_multiplier, sample_rate)`` event
per ``step()`` in an Opacus accountant; ``epsilon(delta)`` asks that accountant. The history is
the accountant's own (``accountant.history``), so the numbers equal Opacus's for the same steps.
"""

from __future__ import annotations

import math
from typing import Any

from gradclip._errors import ConfigError

__all__ = ["ACCOUNTANTS", "check_delta", "make_accountant", "poisson_loader"]

ACCOUNTANTS = ("rdp", "prv", "gdp")


def make_accountant(kind: str | None) -> Any:
    """An Opacus accountant by name (``"rdp"``, ``"prv"``, ``"gdp"``), or ``None`` for none.

    Raises:
        ConfigError: Unknown name.

    Example:
        >>> type(make_accountant("rdp")).__name__
        'RDPAccountant'

    References:
        Mironov 2017, Rényi Differential Privacy, arXiv:1702.07476;
        Gopi et al. 2021, Numerical Composition of Differential Privacy, arXiv:2106.02848.
    """
    if kind is None:
        return None
    if kind not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {ACCOUNTANTS} or None; received {kind!r}.")
    try:
        from opacus.accountants import create_accountant
    except ImportError as exc:  # pragma: no cover - opacus is in the [privacy] extra
        raise ImportError(
            f"accountant={kind!r} needs Opacus; install it with `pip install gradclip[privacy]`, "
            "or pass accountant=None to train without accounting."
        ) from exc

    return create_accountant(mechanism=kind)


def check_delta(delta: Any) -> float:
    """Validate ``delta`` (a float in (0, 1)) and return it as a float."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < float(delta) < 1 or math.isnan(delta):
        raise ConfigError(f"delta must be a float in (0, 1), typically below 1/dataset_size; received {delta!r}.")
    return float(delta)


def poisson_loader(dataset: Any, sample_rate: float, *, generator: Any = None, **kwargs: Any) -> Any:
    """A DataLoader whose batches are Poisson samples, the sampling ``epsilon()`` assumes.

    Each batch holds every example independently with probability ``sample_rate`` (so batch
    sizes vary, and a batch may be empty); an epoch has ``round(1 / sample_rate)`` batches. This
    is Opacus's ``DPDataLoader`` (``UniformWithReplacementSampler``); pass
    ``expected_batch_size=round(sample_rate * len(dataset))`` and the same ``sample_rate`` to
    :class:`~gradclip.privacy.PrivateStep`. A shuffled loader with fixed batch sizes trains as
    well but its privacy is *not* what the accountant reports.

    Args:
        dataset: A map-style ``torch.utils.data.Dataset``.
        sample_rate: Probability in (0, 1] that an example joins a batch.
        generator: A ``torch.Generator`` for the sampling; None uses torch's global one.
        **kwargs: Passed to ``DPDataLoader`` (``num_workers``, ``collate_fn``, ...).

    Returns:
        An ``opacus.data_loader.DPDataLoader``.

    Example:
        >>> import torch
        >>> data = torch.utils.data.TensorDataset(torch.randn(100, 3))
        >>> loader = poisson_loader(data, 0.1, generator=torch.Generator().manual_seed(0))
        >>> len(loader)
        10

    References:
        Abadi et al. 2016, Deep Learning with Differential Privacy, arXiv:1607.00133;
        Mironov, Talwar, Zhang 2019, Rényi Differential Privacy of the Sampled Gaussian
        Mechanism, arXiv:1908.10530.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)) or not 0 < sample_rate <= 1:
        raise ConfigError(f"sample_rate must be a float in (0, 1]; received {sample_rate!r}. It is batch_size / len(dataset).")
    from opacus.data_loader import DPDataLoader

    return DPDataLoader(dataset, sample_rate=float(sample_rate), generator=generator, **kwargs)
