"""The optax states of :func:`gradclip.jax.transform` and :func:`gradclip.jax.guard`, and finding them.

Both states are ``NamedTuple``\\ s of fixed-shape arrays, like every optax state, so they pass
through ``jax.jit``, ``jax.lax.scan`` (as a carry), ``jax.vmap`` and checkpointing libraries
unchanged. What is not an array (the policy, the leaf names and shapes) lives in one static field,
``info`` (a :class:`LeafInfo`, a pytree node without leaves): it travels in the tree *structure*,
so :func:`gradclip.jax.stats` names the offending leaves from the state alone, in any process,
and ``update`` names the leaves it expected when it receives another tree.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, NamedTuple

import jax

from gradclip._errors import ConfigError
from gradclip._policies import Policy

__all__ = ["ClipState", "GuardState", "LeafInfo", "StepStats", "find", "register_flax"]


@dataclasses.dataclass(frozen=True)
class LeafInfo:
    """Static facts of a clipping state: no array, part of the pytree structure.

    Attributes:
        policy: The policy that runs (an unbounded AutoClip history already bounded).
        names: The leaves' paths (``jax.tree_util.keystr(path, simple=True, separator=".")``:
            ``"params.Dense_0.kernel"``, ``"layers.0.weight"``), in ``tree_leaves`` order.
        shapes: The leaves' shapes at ``init``.
        acc: Name of the dtype norms are accumulated in (``"float32"``).
        nonfinite: The ``nonfinite`` mode.
        coef: Whether the policy decides one global factor (else ``StepStats.coef`` is NaN).
        threshold: How ``StepStats.threshold`` maps back to the policy's threshold:
            ``"none"`` (NaN: the policy has none), ``"scalar"``, ``"pair"`` (``(lo, hi)``, an
            infinite bound meaning ``None``) or ``"array"``.
    """

    policy: Policy
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    acc: str
    nonfinite: str
    coef: bool = True
    threshold: str = "scalar"

    def __post_init__(self) -> None:  # jit hashes the tree structure at every call: hash the names once
        object.__setattr__(self, "_hash", hash((self.policy, self.names, self.shapes, self.acc, self.nonfinite,
                                                self.coef, self.threshold)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"LeafInfo({_spec(self.policy)!r}, {len(self.names)} leaves)"


jax.tree_util.register_static(LeafInfo)


def register_flax() -> None:
    """Let ``flax.serialization`` write states holding a :class:`LeafInfo` (as ``{}``: the
    structure a state is restored into already holds it). Done at ``init`` once flax is loaded."""
    serialization = sys.modules.get("flax.serialization")
    if serialization is None or LeafInfo in getattr(serialization, "_STATE_DICT_REGISTRY", {}):
        return
    serialization.register_serialization_state(LeafInfo, lambda info: {}, lambda info, state: info, override=True)


class StepStats(NamedTuple):
    """The last step's measurement and decision, as arrays (fixed shapes; zeros before a step).

    Attributes:
        norm: Global norm before clipping (0-d, the accumulation dtype).
        clipped_norm: Global norm after clipping (the norm itself on a skipped step).
        coef: The global factor applied; NaN when the policy decides per tensor or per unit.
        threshold: The threshold used: 0-d, ``(2,)`` for ``Value(min=..., max=...)``
            (``-inf``/``inf`` for an open bound), ``(n,)`` for per-tensor thresholds; NaN when the
            policy has none.
        clipped: Whether the updates were changed (clipped, zeroed or skipped).
        skipped: Whether the step was skipped (non-finite under ``"skip"``, or the policy skipped
            a spike): the update is zero.
        nonfinite: Whether some leaf held NaN or Inf.
        first_nonfinite: Index of the first leaf with a non-finite norm, -1 if none (int32).
        tensor_norms: ``(n,)`` per-leaf norms before clipping.
    """

    norm: Any
    clipped_norm: Any
    coef: Any
    threshold: Any
    clipped: Any
    skipped: Any
    nonfinite: Any
    first_nonfinite: Any
    tensor_norms: Any


class ClipState(NamedTuple):
    """State of :func:`gradclip.jax.transform`.

    Attributes:
        policy: The policy's state, ``{key: array}`` with the keys of the torch ``Clipper``'s
            ``state_dict()["state"]``.
        stats: The last step's :class:`StepStats`.
        count: Steps taken (int32), the ``"steps"`` of a state dict.
        info: Static :class:`LeafInfo` (no arrays).
    """

    policy: dict[str, Any]
    stats: StepStats
    count: Any
    info: LeafInfo


class GuardState(NamedTuple):
    """State of :func:`gradclip.jax.guard`: the clipping state, the inner optimizer's, skip counters.

    Attributes:
        clip: The :class:`ClipState`.
        inner: The inner transformation's state, untouched by skipped steps.
        consecutive_skips: Skipped steps since the last applied one (int32).
        total_skips: Skipped steps in all (int32).
        give_ups: Steps applied because ``max_consecutive`` skips came first (int32).
        gave_up: Whether the last step was such a give-up (bool).
    """

    clip: ClipState
    inner: Any
    consecutive_skips: Any
    total_skips: Any
    give_ups: Any
    gave_up: Any


def _spec(policy: Policy) -> str:
    try:
        return policy.spec()
    except ConfigError:
        return repr(policy)


def find(opt_state: Any, what: str) -> ClipState | GuardState:
    """The one gradclip state inside an optax state tree (a chain, ``inject_hyperparams``,
    ``masked``, a guard, a flax ``nnx.Optimizer``'s ``opt_state``); a guard's state wins over
    the clip state it holds.

    Raises:
        ConfigError: none found, or several (then pass the one you mean).
    """
    kinds = (ClipState, GuardState)
    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, kinds))
             if isinstance(x, kinds)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConfigError(
            f"{what} reads the state of gradclip.jax.transform or gradclip.jax.guard, and this optimizer state "
            f"holds none. Received: {type(opt_state).__name__}. Pass the opt_state of an optimizer built with "
            "gradclip.jax.transform(...) (e.g. in optax.chain) or gradclip.jax.guard(...)."
        )
    raise ConfigError(
        f"{what} found {len(found)} gradclip states in this optimizer state ({', '.join(repr(s.info) if isinstance(s, ClipState) else repr(s.clip.info) for s in found)}). "
        "Pass the part that holds the one you mean (e.g. opt_state[0] for the first member of optax.chain)."
    )
