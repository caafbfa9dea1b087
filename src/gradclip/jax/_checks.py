"""What ``transform`` and ``guard`` check before a step runs, and how a tree becomes named leaves.

Everything here runs in Python when a transformation is built, at ``init`` or while ``update``
is traced: errors name the leaf, what was received and what was expected, and nothing is left
to fail inside the compiled step.
"""

from __future__ import annotations

import sys
from typing import Any

import jax
import jax.numpy as jnp

from gradclip._errors import ConfigError, InputTypeError
from gradclip._policies import Policy
from gradclip.jax._state import ClipState, LeafInfo

__all__ = ["check_axis", "check_loss", "check_state", "check_tree", "leaves_of", "norm_dtype", "spec", "variable_type"]


def check_loss(policy: Policy, extra_args: dict[str, Any]) -> None:
    """The hook for policies that read the loss (``needs_loss = True``): ``update(..., loss=...)``."""
    if extra_args.get("loss") is None and any(getattr(m, "needs_loss", False) for m in policy.members()):
        raise ConfigError(f"{spec(policy)!r} decides from the loss: call update(updates, state, params, loss=loss). "
                          "Received: no loss.")


def check_axis(policy: Policy, axis_name: Any) -> None:
    """Refuse the policies whose decision reads leaf sizes under ``axis_name`` (the local ones differ)."""
    sized = [m for m in policy.members() if getattr(m, "spec_name", "") == "blockrms"]
    if axis_name is not None and sized:
        raise ConfigError(f"{spec(sized[0])!r} divides each leaf's norm by the square root of its size, which "
                          "inside shard_map is the local shard's. Received: axis_name="
                          f"{axis_name!r}. Clip under jax.jit with sharded arrays instead (no axis_name).")


def norm_dtype(norm_dtype: Any) -> Any:
    if norm_dtype is None:
        return None
    try:
        dtype = jnp.dtype(norm_dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in ("float32", "float64"):
        raise ConfigError(f"norm_dtype must be jnp.float32, jnp.float64 or None. Received: {norm_dtype!r}.")
    return dtype


def leaves_of(tree: Any, what: str) -> tuple[list[Any], tuple[str, ...], Any]:
    """The tree's leaves (``None`` skipped), their names, and the treedef."""
    variable = variable_type()
    is_leaf = None if variable is None else (lambda x: isinstance(x, variable))
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    names = [_simple(path) for path, _ in flat]
    if len(set(names)) != len(names):  # two paths read alike once simplified: keep the full ones
        names = [jax.tree_util.keystr(path) for path, _ in flat]
    leaves = [leaf.get_value() if is_leaf is not None and is_leaf(leaf) else leaf for _, leaf in flat]
    for name, leaf in zip(names, leaves):
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            kind = f"dtype {dtype}" if dtype is not None else f"a {type(leaf).__name__}"
            raise InputTypeError(
                f"gradclip.jax clips floating-point arrays, and the {what} leaf {name!r} holds {kind}. Received: "
                f"{kind} at {name!r}. Pass only the trainable float leaves (eqx.filter(model, eqx.is_inexact_array), "
                "or optax.masked around the clipping)."
            )
    return leaves, tuple(names), treedef


def _simple(path: Any) -> str:
    """``keystr(path, simple=True, separator=".")``: ``params.Dense_0.kernel``, ``layers.0.weight``."""
    try:
        return jax.tree_util.keystr(path, simple=True, separator=".")
    except TypeError:  # jax < 0.4.36: no simple form
        parts = [getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path]
        return ".".join(str(p) for p in parts)


def variable_type() -> Any:
    """flax ``nnx.Variable`` when flax is in use: a variable is one leaf, named without ``.value``
    (``nnx.Optimizer`` initialises on variables and updates with plain arrays)."""
    nnx = sys.modules.get("flax.nnx")
    return getattr(nnx, "Variable", None)


def check_state(state: Any) -> LeafInfo:
    info = getattr(state, "info", None)
    if not isinstance(state, ClipState) or not isinstance(info, LeafInfo):
        raise InputTypeError(f"update needs the state that init returned (a gradclip.jax.ClipState). Received: "
                             f"{type(state).__name__}.")
    return info


def check_tree(info: LeafInfo, names: tuple[str, ...], leaves: list[Any], axis_name: Any) -> None:
    """The updates have the leaves ``init`` saw: same paths, and same shapes (same ranks when sharded)."""
    if names != info.names:
        missing = [n for n in info.names if n not in names][:5]
        extra = [n for n in names if n not in info.names][:5]
        detail = (f"missing {missing}" if missing else "") + ("; " if missing and extra else "") + (
            f"unexpected {extra}" if extra else "")
        raise ConfigError(
            f"The updates do not have the structure of the params this state was made for: expected "
            f"{len(info.names)} leaves {_short(info.names)}, received {len(names)} leaves {_short(names)}"
            f"{' (' + detail + ')' if detail else ' (another order)'}. Pass updates shaped like the params given to "
            "init (None leaves are skipped on both sides)."
        )
    for name, leaf, shape in zip(names, leaves, info.shapes):
        got = tuple(leaf.shape)
        if (got != shape) if axis_name is None else (len(got) != len(shape)):
            raise ConfigError(f"The update of {name!r} has shape {got}, but init saw shape {shape}. Received: "
                              f"{got}. Pass updates shaped like the params given to init.")


def _short(names: tuple[str, ...], limit: int = 4) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def spec(policy: Policy) -> str:
    try:
        return policy.spec()
    except ConfigError:
        return repr(policy)
