"""``stats``: the last step's :class:`gradclip.ClipStats`, read from an optax state (one host read)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from gradclip._errors import Offender
from gradclip._stats import ClipStats
from gradclip.jax._state import GuardState, LeafInfo, StepStats, find

__all__ = ["GuardStats", "host_leaves", "stats"]


class GuardStats(ClipStats):
    """:class:`gradclip.ClipStats` of a :func:`gradclip.jax.guard` step, with its skip counters.

    Attributes:
        total_skips: Skipped steps so far.
        consecutive_skips: Skipped steps since the last applied one.
        give_ups: Steps applied because ``max_consecutive`` skips came first.
        gave_up: Whether this step was such a give-up.
    """

    __slots__ = ("consecutive_skips", "gave_up", "give_ups", "total_skips")

    def __init__(self, *, total_skips: int, consecutive_skips: int, give_ups: int, gave_up: bool,
                 **stats: Any) -> None:
        super().__init__(**stats)
        self.total_skips = total_skips
        self.consecutive_skips = consecutive_skips
        self.give_ups = give_ups
        self.gave_up = gave_up

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "total_skips": self.total_skips, "consecutive_skips": self.consecutive_skips,
                "give_ups": self.give_ups, "gave_up": self.gave_up}


def stats(opt_state: Any) -> ClipStats:
    """The statistics of the last step, from any optax state holding a gradclip state.

    Finds the state of :func:`gradclip.jax.transform` (or :func:`gradclip.jax.guard`) inside
    ``opt_state`` (an ``optax.chain`` tuple, ``inject_hyperparams``, ``masked``, a flax
    ``nnx.Optimizer``'s ``opt_state``, or the state itself) and reads its statistics with one
    ``jax.device_get``. Offenders (leaves with NaN/Inf) are named by their paths, which the state
    carries in its structure; their NaN/Inf counts are not measured in a jitted step (-1). Call
    it outside ``jit``, after ``update``: values are NumPy scalars (arrays with a leading batch
    axis for a ``vmap``-ed state). Before the first step every value is zero.

    Args:
        opt_state: The optimizer state.

    Returns:
        :class:`gradclip.ClipStats` (a :class:`gradclip.jax.GuardStats`, with skip counters, for a
        guard). ``coef`` is ``None`` for per-tensor and per-unit policies, ``threshold`` ``None``
        for policies without one and ``(lo, hi)`` for ``Value(min=..., max=...)``.

    Raises:
        ConfigError: no gradclip state in ``opt_state``, or several.

    Example:
        >>> import jax.numpy as jnp, optax, gradclip.jax as gjax
        >>> tx = optax.chain(gjax.transform("norm:1.0"), optax.sgd(0.1))
        >>> state = tx.init({"w": jnp.zeros(2), "b": jnp.zeros(1)})
        >>> _, state = tx.update({"w": jnp.array([1.0, jnp.inf]), "b": jnp.ones(1)}, state)
        >>> s = gjax.stats(state)
        >>> bool(s.nonfinite), s.offender_names
        (True, ('w',))
    """
    found = find(opt_state, "gradclip.jax.stats")
    clip = found.clip if isinstance(found, GuardState) else found
    extra = () if clip is found else (found.total_skips, found.consecutive_skips, found.give_ups, found.gave_up)
    values = host_leaves((clip.stats, *extra))
    last = StepStats(*values[: len(StepStats._fields)])
    fields = _fields(clip.info, last)
    if clip is found:
        return ClipStats(**fields)
    total, consecutive, give_ups, gave_up = (_item(v) for v in values[len(StepStats._fields):])
    return GuardStats(total_skips=total, consecutive_skips=consecutive, give_ups=give_ups, gave_up=gave_up, **fields)


def host_leaves(tree: Any) -> list[Any]:
    """The tree's array leaves as NumPy arrays, in one ``jax.device_get`` (flax ``nnx`` variables
    flatten to their values)."""
    return [np.asarray(v) for v in jax.device_get(jax.tree_util.tree_leaves(tree))]


def _item(value: np.ndarray) -> Any:
    return value.item() if value.ndim == 0 else value


def _fields(info: LeafInfo, s: StepStats) -> dict[str, Any]:
    threshold: Any = s.threshold
    if info.threshold == "none":
        threshold = None
    elif info.threshold == "pair" and threshold.ndim == 1:  # Value(min=..., max=...): its own bounds
        threshold = getattr(info.policy, "bounds", None) or tuple(None if np.isinf(v) else float(v) for v in threshold)
    names, shapes = info.names, info.shapes
    norms = s.tensor_norms

    def offenders() -> tuple[Offender, ...]:
        bad = ~np.isfinite(norms.reshape(-1, len(names))).all(axis=0) if len(names) else np.zeros(0, bool)
        return tuple(Offender(names[i], int(i), shapes[i], -1, -1) for i in np.flatnonzero(bad))

    return {"norm": s.norm, "clipped_norm": s.clipped_norm, "coef": s.coef if info.coef else None,
            "clipped": s.clipped, "nonfinite": s.nonfinite, "skipped": s.skipped, "threshold": threshold,
            "offenders": offenders, "norm_type": info.policy.measure_norm_type, "tensor_norms": norms, "names": names}
