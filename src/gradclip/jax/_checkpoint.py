"""``state_dict`` / ``load_state_dict``: the policy state in the torch ``Clipper``'s format.

The format is the one every adapter writes: ``{"version": 1, "policy": spec, "steps": int,
"state": {key: array}}`` with the policy's own keys, so a state saved from
``gradclip.torch.Clipper.state_dict()`` loads here and the reverse (index arrays are int64 in
the file, as in torch and NumPy; JAX holds them in int32 without ``jax_enable_x64``). A loaded
state is validated by :mod:`gradclip._policies._statecheck` before anything is used. This is
the interchange format of the *policy*; checkpoint a whole optimizer state (the inner optimizer,
a guard's counters) as any optax state (orbax, ``flax.serialization``, pickle of
``jax.device_get(opt_state)``).
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradclip._errors import ConfigError, StateDictError
from gradclip._policies import Policy, _statecheck
from gradclip.jax._read import host_leaves
from gradclip.jax._state import ClipState, GuardState, find

__all__ = ["load_state_dict", "state_dict"]

_KEYS = {"version", "policy", "steps", "state"}


def state_dict(opt_state: Any) -> dict[str, Any]:
    """The gradclip policy state inside ``opt_state``, as the torch ``Clipper.state_dict()`` writes it.

    Args:
        opt_state: An optax state holding one :func:`gradclip.jax.transform` or
            :func:`gradclip.jax.guard` state (one run: index a ``vmap``-ed state first).

    Returns:
        ``{"version": 1, "policy": str, "steps": int, "state": {key: numpy.ndarray}}``: integer
        arrays as int64. It loads into a torch ``Clipper`` as it is (NumPy arrays are accepted there).

    Raises:
        ConfigError: no gradclip state (or several) in ``opt_state``, or a batched one.

    Example:
        >>> import jax.numpy as jnp, gradclip.jax as gjax
        >>> tx = gjax.transform("zclip:warmup_steps=2")
        >>> sd = gjax.state_dict(tx.init({"w": jnp.ones(3)}))
        >>> sd["policy"], sd["steps"], sorted(sd["state"])
        ('zclip:warmup_steps=2', 0, ['count', 'mu', 'var', 'warm'])
    """
    clip = _clip_state(find(opt_state, "gradclip.jax.state_dict"))
    keys = sorted(clip.policy)
    values = host_leaves(([clip.policy[k] for k in keys], clip.count))
    count = values[-1]
    if count.ndim:
        raise ConfigError(f"state_dict saves one run, and this state holds a batch of {count.shape[0]} (a vmap-ed "
                          "state). Received: a batched state. Save one run: jax.tree.map(lambda x: x[i], opt_state).")
    state = {k: v.astype(np.int64) if v.dtype.kind in "iu" else np.array(v) for k, v in zip(keys, values[:-1])}
    return {"version": _statecheck.FORMAT_VERSION, "policy": _statecheck.identity(clip.info.policy), "steps": int(count),
            "state": state}


def load_state_dict(opt_state: Any, state_dict: dict[str, Any], strict: bool = True) -> Any:
    """``opt_state`` with its gradclip policy state replaced by ``state_dict`` (checked first).

    Everything is checked before anything is used, as by the torch ``Clipper``: the format
    version, the policy spec, the key set, every shape and dtype, the values the policy needs
    valid, and that per-tensor state has one row per leaf. Arrays may be NumPy, JAX or torch.

    Args:
        opt_state: The optimizer state of a transformation built with the same policy (``init``).
        state_dict: What :func:`state_dict` (or the torch ``Clipper.state_dict()``) returned.
        strict: ``True`` (default): saved with this very spec. ``False``: a spec of the same policy
            class; arrays that do not fit are reset to their initial value with a ``UserWarning``.

    Returns:
        A new optimizer state (the input is not modified).

    Raises:
        StateDictError: a malformed state dict, another policy, or arrays that do not fit (naming
            each key, what was found and what was expected).

    Example:
        >>> import jax.numpy as jnp, gradclip.jax as gjax
        >>> tx = gjax.transform("zclip:warmup_steps=2")
        >>> state = tx.init({"w": jnp.ones(3)})
        >>> _, state = tx.update({"w": jnp.ones(3)}, state)
        >>> fresh = gjax.load_state_dict(tx.init({"w": jnp.ones(3)}), gjax.state_dict(state))
        >>> int(fresh.count), round(float(fresh.policy["warm"][0]), 4)
        (1, 1.7321)
    """
    found = find(opt_state, "gradclip.jax.load_state_dict")
    clip = _clip_state(found)
    policy = clip.info.policy
    steps, saved = _checked_format(state_dict, policy, strict)
    arrays = {k: _host(k, v) for k, v in saved.items()}
    kept, reset = _statecheck.check(policy, arrays, strict=strict)
    keys = sorted(clip.policy)
    current = dict(zip(keys, host_leaves([clip.policy[k] for k in keys])))
    problems = []
    for key, value in kept.items():
        want = current.get(key)
        if want is None:
            problems.append(_statecheck.Problem(key, "a key for a leaf this state does not have",
                                                f"only the keys {keys} (the leaves are {list(clip.info.names)[:4]}...)"))
        elif value.shape != want.shape:
            problems.append(_statecheck.Problem(key, f"shape {value.shape}", f"shape {want.shape} (one row per leaf: "
                                                f"{len(clip.info.names)} leaves)" if value.ndim == 2 else
                                                f"shape {want.shape}"))
        elif want.dtype.kind == "f" and value.dtype != want.dtype:
            problems.append(_statecheck.Problem(key, f"dtype {value.dtype}", f"{want.dtype}, the dtype norms are "
                                                "measured in (pass norm_dtype= to measure in the saved dtype)"))
    if problems and strict:
        raise StateDictError(_message(policy, problems))
    drop = {p.key for p in problems}
    if drop or reset:
        warnings.warn(f"load_state_dict(strict=False) reset the state arrays {sorted(set(reset) | drop)} of "
                      f"{_statecheck.identity(policy)!r} to their initial values (they do not fit this policy); the others were "
                      "kept.", stacklevel=2)
    new = {k: jnp.asarray(kept[k].astype(current[k].dtype)) if k in kept and k not in drop else clip.policy[k]
           for k in keys}
    loaded = clip._replace(policy=new, count=jnp.asarray(steps, jnp.int32))
    target = found
    replacement = loaded if found is clip else found._replace(clip=loaded)
    kinds = (ClipState, GuardState)
    return jax.tree_util.tree_map(lambda x: replacement if x is target else x, opt_state,
                                  is_leaf=lambda x: isinstance(x, kinds))


def _clip_state(found: ClipState | GuardState) -> ClipState:
    return found.clip if isinstance(found, GuardState) else found


def _checked_format(state_dict: Any, policy: Policy, strict: bool) -> tuple[int, dict[str, Any]]:
    if not isinstance(state_dict, dict) or not {"policy", "steps", "state"} <= set(state_dict):
        raise StateDictError("A gradclip state dict has keys 'policy', 'steps' and 'state'. Received: "
                             f"{sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__}.")
    extra = sorted(set(state_dict) - _KEYS)
    if extra:
        raise StateDictError(f"A gradclip state dict has keys 'version', 'policy', 'steps' and 'state'. Received "
                             f"also {extra}: is this the state dict of another object?")
    _statecheck.check_version(state_dict)
    steps, state = state_dict["steps"], state_dict["state"]
    if isinstance(steps, np.integer):
        steps = int(steps)
    if not isinstance(state, dict) or isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps < 2**31:
        raise StateDictError("A gradclip state dict has an int 'steps' >= 0 (< 2**31) and a dict 'state'. Received: "
                             f"steps={steps!r}, state of type {type(state).__name__}.")
    _statecheck.check_spec(state_dict["policy"], policy, strict, what="transformation")
    return steps, state


def _host(key: str, value: Any) -> np.ndarray:
    """A NumPy copy of a saved array (NumPy, JAX or torch), read at load time."""
    try:
        if hasattr(value, "detach"):  # a torch tensor, without importing torch
            value = value.detach().cpu().numpy()
        out = np.asarray(value)
    except (TypeError, RuntimeError):
        out = None
    if out is None or out.dtype.kind not in "fiub":
        found = getattr(value, "dtype", type(value).__name__)
        raise StateDictError(f"State key {key!r}: found {found}, expected an array of float32, float64 or int64.")
    return out


def _message(policy: Policy, problems: list[Any]) -> str:
    lines = "\n".join(p.describe() for p in problems)
    return (f"This state does not fit the policy {_statecheck.identity(policy)!r} on these leaves:\n{lines}\nNothing was "
            "loaded. Load a state saved with the same parameters, or pass strict=False to reset what does not fit.")
