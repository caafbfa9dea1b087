"""Check a saved policy state before it is loaded: keys, shapes, dtypes, values, tensor count.

One framework-neutral place that every adapter calls. The expected state is the policy's own
:meth:`~gradclip._policies.Policy.init_state` (computed with NumPy in the state's float dtype):
the same keys, ranks, dtypes and sizes. A size that is 0 there is made at run time (AutoClip's
per-tensor rows, its unbounded history) and is taken from the saved state. Each policy declares
what its values must satisfy in one class attribute, ``state_rules``: a map from a key (or a
family of keys, ``"gamma.*"``) to comma-separated rules:

- ``finite``: no NaN or Inf; ``nonnegative``: no NaN and every value >= 0 (Inf allowed);
- ``integer``: whole numbers; ``max=B`` / ``below=B``: every value <= / < ``B``, where ``B`` is
  a hyper-parameter of the policy (``window``) or ``@key``, the last dimension of another key;
- ``with=K``: reset together with key ``K`` under ``strict=False`` (a fill count with its buffer);
- ``per_tensor``: a first dimension made at run time (0 in the initial state) is the number of
  gradient tensors (checked at the first step, when the adapter knows it: :func:`check_step`).

A chain checks each member's state under its ``"<i>."`` prefix. Adapters convert their arrays to
NumPy (a host read at load time, never in a step) and call :func:`check` (torch), or
:func:`check_values` where the framework already enforces keys, shapes and dtypes (Keras and
TensorFlow variables).

Example:
    >>> import numpy as np, gradclip
    >>> saved = {"warm": np.zeros(25, "float32"), "count": np.float32(25), "mu": np.float32("nan"),
    ...          "var": np.float32(0.5)}
    >>> try:
    ...     check(gradclip.ZClip(), saved)
    ... except gradclip.StateDictError as e:
    ...     print(str(e).splitlines()[1])
      'mu': found nan, expected a finite value >= 0.
    >>> state, reset = check(gradclip.ZClip(), saved, strict=False)  # keep what is valid
    >>> reset, float(state["var"])
    (['mu'], 0.5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradclip._errors import ConfigError, StateDictError

__all__ = ["FORMAT_VERSION", "Problem", "check", "check_step", "check_values", "check_version"]

#: Version of the format ``state_dict()`` writes. A state dict without ``"version"`` is version 1.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Problem:
    """One way a saved state does not fit: the key, what was found, what was expected."""

    key: str
    found: str
    expected: str

    def describe(self) -> str:
        return f"  {self.key!r}: found {self.found}, expected {self.expected}."


def check_version(state_dict: dict[str, Any]) -> int:
    """The format version of a state dict (1 when absent); refuse one this gradclip cannot read."""
    version = state_dict.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise StateDictError(
            f"'version': found {version!r}, expected "
            + (f"an int from 1 to {FORMAT_VERSION}" if FORMAT_VERSION > 1 else "1")
            + " (the state dict formats this gradclip reads; a state dict without 'version' is version 1). A newer "
            "gradclip wrote it: upgrade gradclip to load it."
        )
    return version


def check(policy: Any, state: dict[str, Any], *, strict: bool = True) -> tuple[dict[str, np.ndarray], list[str]]:
    """Check a saved state (a dict of NumPy arrays) against ``policy``; return it ready to load.

    Args:
        policy: The policy the state is loaded into.
        state: The saved state, every value a NumPy array (or a scalar). An empty state (saved
            before the first step) always fits.
        strict: ``True`` (default): any problem raises. ``False``: keys with a problem (wrong or
            missing array, invalid values) get their initial value and the rest is kept.

    Returns:
        ``(state, reset)``: the state to load and the keys that were reset (empty when strict).

    Raises:
        StateDictError: with ``strict=True``, naming every key that does not fit, what was found
            and what was expected. Nothing is loaded.
    """
    if not state:  # saved before the first step: the state is made then
        return {}, []
    state = {k: np.asarray(v) for k, v in state.items()}
    fresh = _fresh(policy, _float_dtype(policy, state))
    problems = _structure(policy, state, fresh)
    out = {k: v for k, v in state.items() if k not in {p.key for p in problems}}
    if strict:
        problems += _values(policy, out, state)
        if problems:
            raise StateDictError(_message(policy, problems))
        return out, []
    reset = _with(policy, {p.key for p in problems})
    out = {k: v for k, v in state.items() if k not in reset}
    out.update({k: v for k, v in fresh.items() if k not in out})
    for _ in range(len(out) + 1):  # a reset can invalidate a value bounded by it (count <= width)
        found = _with(policy, {p.key for p in _values(policy, out, out)}) - reset
        if not found:
            break
        reset |= found
        out = {k: fresh[k] if k in found else v for k, v in out.items() if k in fresh or k not in found}
    return out, sorted(reset)


def check_values(policy: Any, state: dict[str, Any]) -> None:
    """Check only the values (for adapters whose framework already checks keys, shapes and dtypes:
    Keras and TensorFlow variables restored from a checkpoint).

    Raises:
        StateDictError: naming each key whose values the policy cannot use.
    """
    state = {k: np.asarray(v) for k, v in state.items()}
    problems = _values(policy, state, state)
    if problems:
        raise StateDictError(_message(policy, problems, restored=True))


def check_step(policy: Any, shapes: dict[str, tuple[tuple[int, ...], str]], tensors: int, dtype: str) -> None:
    """At the first step after a load: the per-tensor rows and the float dtype fit this step.

    Args:
        policy: The policy.
        shapes: ``{key: (shape, dtype name)}`` of the loaded state.
        tensors: Number of gradient tensors in this step.
        dtype: The dtype the step measures norms in (``"float32"``).

    Raises:
        StateDictError: naming the key, before the state is used.
    """
    problems = []
    for prefix, member in _members(policy):
        fresh = _fresh_member(member, np.float32)
        fresh_kinds = {k: v.dtype.kind for k, v in fresh.items()}
        for key, rules in _rules(member).items():
            shape = shapes.get(prefix + key, ((), ""))[0]
            free = key in fresh and fresh[key].ndim > 0 and fresh[key].shape[0] == 0  # made at the first step
            if "per_tensor" in rules and free and len(shape) > 0 and shape[0] not in (0, tensors):
                problems.append(Problem(prefix + key, f"{shape[0]} rows (a state saved with {shape[0]} gradient "
                                        "tensors)", f"{tensors}, the number of gradient tensors in this step"))
        for key, kind in fresh_kinds.items():
            found = shapes.get(prefix + key, ((), dtype))[1]
            if kind == "f" and found != dtype:
                problems.append(Problem(prefix + key, f"dtype {found}", f"{dtype}, the dtype norms are measured in "
                                        "(pass norm_dtype= to measure in the saved dtype)"))
    if problems:
        raise StateDictError(_message(policy, problems, at_step=True))


def _with(policy: Any, keys: set[str]) -> set[str]:
    """``keys`` and the keys declared ``with=<key>`` for one of them (reset together)."""
    out, before = set(keys), set()
    while out != before:  # until nothing more is added (a chain of dependencies)
        before = set(out)
        for prefix, member in _members(policy):
            for key, rules in _rules(member).items():
                if any(r.startswith("with=") and prefix + r[5:] in before for r in rules):
                    out.add(prefix + key)
    return out


def _members(policy: Any) -> list[tuple[str, Any]]:
    members = policy.members()
    return [(f"{i}.", p) for i, p in enumerate(members)] if len(members) > 1 else [("", policy)]


def _rules(policy: Any) -> dict[str, list[str]]:
    return {k: [r.strip() for r in v.split(",") if r.strip()] for k, v in getattr(policy, "state_rules", {}).items()}


def _fresh_member(policy: Any, dtype: Any) -> dict[str, np.ndarray]:
    from gradclip._ops import NumpyOps

    return {k: np.asarray(v) for k, v in policy.init_state(np.asarray(0.0, dtype), NumpyOps).items()}


def _fresh(policy: Any, dtype: Any) -> dict[str, np.ndarray]:
    return {prefix + k: v for prefix, m in _members(policy) for k, v in _fresh_member(m, dtype).items()}


def _float_dtype(policy: Any, state: dict[str, np.ndarray]) -> Any:
    """The float dtype of the saved state: the most common one among the arrays the policy stores as float."""
    kinds = _fresh(policy, np.float32)
    found = [state[k].dtype for k in sorted(state) if state[k].dtype.kind == "f"
             and (_family(policy, k) is not None or (k in kinds and kinds[k].dtype.kind == "f"))]
    return max(found, key=found.count) if found else np.dtype(np.float32)  # the most common one


def _family(policy: Any, key: str) -> list[str] | None:
    """The rules of the key family (``"gamma.*"``) that ``key`` belongs to, or None."""
    for prefix, member in _members(policy):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            for pattern, rules in _rules(member).items():
                if pattern.endswith("*") and rest.startswith(pattern[:-1]) and len(rest) > len(pattern) - 1:
                    return rules
    return None


def _structure(policy: Any, state: dict[str, np.ndarray], fresh: dict[str, np.ndarray]) -> list[Problem]:
    problems = []
    dtype = _float_dtype(policy, state)
    for key, want in fresh.items():
        what = f"an array of shape {_shape(want.shape)} and dtype {want.dtype}"
        if key not in state:
            problems.append(Problem(key, "nothing (the key is missing)", what))
            continue
        got = state[key]
        if got.dtype != want.dtype:
            problems.append(Problem(key, f"dtype {got.dtype}", f"{want.dtype}" + (
                " (the dtype of the state's other float arrays)" if want.dtype.kind == "f" else "")))
        elif got.ndim != want.ndim or any(w not in (0, g) for g, w in zip(got.shape, want.shape)):
            problems.append(Problem(key, f"shape {tuple(got.shape)}", f"shape {_shape(want.shape)}"))
    for key in sorted(set(state) - set(fresh)):
        if _family(policy, key) is None:
            families = [p + k for p, m in _members(policy) for k in _rules(m) if k.endswith("*")]
            problems.append(Problem(key, "an unexpected key", f"only the keys {sorted(fresh) + families}"))
        elif state[key].shape != () or state[key].dtype != dtype:
            problems.append(Problem(key, f"shape {tuple(state[key].shape)}, dtype {state[key].dtype}",
                                    f"a 0-d array of dtype {dtype}"))
    for prefix, member in _members(policy):  # per-tensor rows agree across keys
        rows = [(prefix + k, state[prefix + k].shape[0]) for k, r in _rules(member).items()
                if "per_tensor" in r and prefix + k in state and state[prefix + k].ndim > 0]
        problems += [Problem(k, f"{n} rows", f"{rows[0][1]} rows, as {rows[0][0]!r}") for k, n in rows[1:]
                     if n != rows[0][1] and k not in {p.key for p in problems}]
    return problems


def _values(policy: Any, state: dict[str, np.ndarray], shapes: dict[str, np.ndarray]) -> list[Problem]:
    """Problems with the values of ``state`` (``shapes``: where ``@key`` bounds are read)."""
    problems = []
    for key, value in sorted(state.items()):
        rules, prefix, member = _family(policy, key) or [], "", None
        for pre, m in _members(policy):
            if key.startswith(pre) and key[len(pre):] in _rules(m):
                rules, prefix, member = _rules(m)[key[len(pre):]], pre, m
        problem = _check_value(key, value, rules, prefix, member, shapes) if rules else None
        if problem is not None:
            problems.append(problem)
    return problems


def _check_value(key: str, value: np.ndarray, rules: list[str], prefix: str, member: Any,
                 shapes: dict[str, np.ndarray]) -> Problem | None:
    bad = np.zeros(value.shape, bool)
    words, limits = [], []
    with np.errstate(invalid="ignore"):
        if "finite" in rules:
            bad |= ~np.isfinite(value)
            words.append("finite")
        if "integer" in rules:
            bad |= np.isfinite(value) & (value != np.floor(value))
            words.append("whole")
        if "nonnegative" in rules:
            bad |= np.isnan(value) | (value < 0)
            limits.append(">= 0" if "finite" in rules else ">= 0 (not NaN)")
        for rule in rules:
            name, _, ref = rule.partition("=")
            if name not in ("max", "below"):
                continue
            other = shapes.get(prefix + ref[1:]) if ref.startswith("@") else None
            bound = (other.shape[-1] if other is not None and other.ndim else None) if ref.startswith("@") \
                else getattr(member, ref, None)
            if bound is None:
                continue
            bad |= (value > bound) if name == "max" else (value >= bound)
            which = f"the width of {prefix + ref[1:]!r}" if ref.startswith("@") else f"{ref}={bound}"
            limits.append(f"{'<=' if name == 'max' else '<'} {bound} ({which})")
    if not np.any(bad):
        return None
    noun = "a " + " ".join([*words, "value"]) if value.ndim == 0 else " ".join([*words, "values"])
    expected = noun + (" " + " and ".join(limits) if limits else "")
    if value.ndim == 0:
        return Problem(key, _num(value), expected)
    at = tuple(int(i) for i in np.argwhere(bad)[0])
    return Problem(key, f"{_num(value[at])} at index {at if len(at) > 1 else at[0]}", expected)


def _num(value: Any) -> str:
    v = value.item()
    return repr(v) if isinstance(v, int) else f"{v:g}"


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join("any" if n == 0 else str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _message(policy: Any, problems: list[Problem], at_step: bool = False, restored: bool = False) -> str:
    lines = "\n".join(p.describe() for p in problems)
    if restored:
        return (f"The restored state of the policy {policy.spec()!r} holds values it cannot use:\n{lines}\nThe "
                "checkpoint was saved from a broken run or with another policy: restore an earlier one, or train "
                "this policy afresh.")
    if at_step:
        return (f"The state loaded into this Clipper ({policy.spec()!r}) does not fit these gradients:\n{lines}\n"
                "The state was not used and the gradients are untouched. Load a state saved with the same "
                "parameters, or start this policy afresh.")
    return (f"This state does not fit the policy {policy.spec()!r}:\n{lines}\nNothing was loaded. Load the state "
            "saved with this policy, or pass strict=False to keep the arrays that fit and reset the others.")


def identity(policy: Any) -> str:
    """The policy's spec string, or its repr when it has none (AGC excluding by module type)."""
    try:
        return policy.spec()
    except ConfigError:
        return repr(policy)


def check_spec(saved: Any, policy: Any, strict: bool, *, what: str = "Clipper") -> None:
    """Raise unless ``saved`` is this policy's spec (strict), or one of the same classes (not strict).

    Args:
        saved: The ``"policy"`` entry of a state dict.
        policy: The policy the state is loaded into.
        strict: As in ``Clipper.load_state_dict``.
        what: What runs the policy, for the message (``"Clipper"``, ``"transformation"``).

    Raises:
        StateDictError: the state was saved by another policy.
    """
    if saved == identity(policy):
        return
    if not strict and isinstance(saved, str):
        from gradclip._spec import parse_policy

        try:
            other = parse_policy(saved)
        except ValueError:
            other = None
        kinds = lambda p: [type(m) for m in p.members()]  # noqa: E731
        if other is not None and kinds(other) == kinds(policy):
            return
    hint = (" An unbounded AutoClip history is bounded outside torch (history=...): save it from "
            "AutoClip(window=N) to move its state between frameworks." if "autoclip" in str(saved) else "")
    raise StateDictError(
        f"This state dict was saved with policy {saved!r}, but this {what} runs {identity(policy)!r}. Build the "
        f"{what} with the same policy" + ("." if not strict else ", or pass strict=False to load the state of "
                                          "another spec of the same policy class (changed hyper-parameters).") + hint
    )
