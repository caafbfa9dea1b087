"""Cross-rank consistency check: do the ranks that should agree on a value (the norm) agree?

Replicas drift apart silently: a forgotten gradient all-reduce (DDP ``no_sync`` left on), a
non-deterministic kernel, a rank that loaded another checkpoint. Every rank then clips by its own
"global" norm and the models diverge. :func:`check_replicas` all-gathers one value per rank (one
collective) and measures their relative spread; ``Clipper(check_every=N)`` runs it every ``N``
steps on the pre-clip norm and raises :class:`gradclip.ReplicaMismatchError` on every rank.

Example (two processes; not run here)::

    check = gct.check_replicas(stats.norm)          # all ranks call it
    if not check.consistent:
        print(check.describe())                     # relative spread 0.031 ... rank 0: 1.52, rank 1: 1.47
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from gradclip import _validate
from gradclip._errors import ConfigError, ReplicaMismatchError

__all__ = ["DEFAULT_RTOL", "ReplicaCheck", "check_replicas", "maybe_check"]

#: Relative spread tolerated by default: replicas computed alike agree bit for bit.
DEFAULT_RTOL = 1e-6


@dataclass(frozen=True)
class ReplicaCheck:
    """One value per rank, and how far apart the values are.

    Attributes:
        values: The value on each rank of the group, in group-rank order.
        ranks: The global ranks, in the same order.
        spread: ``(max - min) / max(|value|)``; 0 when all are equal (including all NaN or all
            the same infinity), ``inf`` when some but not all are non-finite.
        rtol: The tolerance ``spread`` is checked against.

    Example:
        >>> check = ReplicaCheck(values=(2.0, 2.0, 2.2), ranks=(0, 1, 2), spread=0.2 / 2.2, rtol=1e-6)
        >>> check.consistent
        False
    """

    values: tuple[float, ...]
    ranks: tuple[int, ...]
    spread: float
    rtol: float

    @property
    def consistent(self) -> bool:
        """True when the spread is within ``rtol``."""
        return self.spread <= self.rtol

    def describe(self) -> str:
        """One line: the spread, the tolerance and every rank's value."""
        values = ", ".join(f"rank {r}: {v!r}" for r, v in zip(self.ranks, self.values))
        return f"relative spread {self.spread:.3g} (tolerance {self.rtol:g}) across {len(self.values)} ranks: {values}"


def spread(values: tuple[float, ...]) -> float:
    """Relative spread of ``values`` (see :class:`ReplicaCheck`).

    Example:
        >>> spread((1.0, 1.0)), spread((1.0, 2.0)), spread((1.0, float("nan")))
        (0.0, 0.5, inf)
    """
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        same = all(repr(v) == repr(values[0]) for v in values)
        return 0.0 if same else math.inf
    top = max(abs(v) for v in finite) if finite else 0.0
    return 0.0 if top == 0 else (max(finite) - min(finite)) / top


def check_replicas(value: Any, *, group: Any = None, rtol: float = DEFAULT_RTOL) -> ReplicaCheck:
    """All-gather ``value`` over ``group`` and report how much the ranks disagree.

    Every rank of ``group`` must call it (it is one ``all_gather`` of a float64 scalar).

    Args:
        value: A number or 0-d tensor, e.g. ``stats.norm``: each rank's view of a value that
            should be the same everywhere.
        group: The process group to compare over (``None``: the default group, all ranks).
        rtol: Largest relative spread still called consistent, >= 0. Default ``1e-6``.

    Returns:
        A :class:`ReplicaCheck` (the same on every rank).

    Raises:
        ConfigError: torch.distributed is not initialized, or ``rtol`` is negative or NaN.
    """
    import torch.distributed as dist

    rtol = _validate.threshold("rtol", rtol)
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError("check_replicas compares ranks, but torch.distributed is not initialized. "
                          "Call torch.distributed.init_process_group() first.")
    x = torch.as_tensor(value).detach()
    nccl = dist.get_backend(group) == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    x = x.reshape(1).to(device=device, dtype=torch.float64)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x, group=group)
    values = tuple(float(t) for t in parts)
    ranks = tuple(dist.get_process_group_ranks(group if group is not None else dist.group.WORLD))
    return ReplicaCheck(values, ranks, spread(values), rtol)


def maybe_check(every: int, value: Any, step: int) -> None:
    """Run :func:`check_replicas` on ``value`` when ``step`` is a multiple of ``every`` (> 0).

    Raises:
        ReplicaMismatchError: the ranks disagree beyond :data:`DEFAULT_RTOL`.
    """
    if not every or step % every:
        return
    check = check_replicas(value)
    if not check.consistent:
        raise ReplicaMismatchError(
            f"The gradient norm differs across ranks that should agree on it: {check.describe()}. The "
            "replicas have diverged (gradients not all-reduced, e.g. DDP no_sync left on; different "
            "data or weights; non-deterministic kernels). Pass check_every=0 to turn this check off.",
            check.values, check.ranks,
        )
