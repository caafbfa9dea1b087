"""Argument checks shared by every policy and adapter. Each raises a typed, actionable error."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Literal, overload

from gradclip._errors import ConfigError

NONFINITE_MODES = ("propagate", "error", "skip", "zero")

#: The largest window, history or warm-up length a policy accepts: 2**24 = 16,777,216 steps.
#: Policies count steps in the norm's dtype, and float32 counts exactly only up to 2**24 (one
#: more is lost to rounding, so a longer warm-up would never end); a float32 buffer that long
#: takes 64 MiB.
MAX_STEPS = 2**24


@overload
def integer(name: str, value: Any, *, minimum: int | None = ..., maximum: int | None = ...,
            allow_none: Literal[False] = ...) -> int: ...
@overload
def integer(name: str, value: Any, *, minimum: int | None = ..., maximum: int | None = ...,
            allow_none: bool) -> int | None: ...
def integer(name: str, value: Any, *, minimum: int | None = 1, maximum: int | None = MAX_STEPS,
            allow_none: bool = False) -> int | None:
    """Return ``value`` as a Python int after checking it is a whole number in range.

    Accepted: Python and NumPy integers, and integral floats (``3.0``, ``np.float32(3)``, and
    ``"window=1e3"`` in a spec string). Refused: ``bool``, fractional or non-finite floats, and
    anything that is not a real number. ``None`` passes through when ``allow_none``.

    Raises:
        ConfigError: not a whole number, below ``minimum`` or above ``maximum``.

    Example:
        >>> import numpy as np
        >>> integer("window", np.int64(8)), integer("window", 1e3)
        (8, 1000)
        >>> integer("window", 2.5)
        Traceback (most recent call last):
        gradclip._errors.ConfigError: window must be an int >= 1. Received: 2.5 (float).
    """
    whole = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer()
    )
    if value is None and allow_none:
        return None
    allowed = ("an int" if minimum is None else f"an int >= {minimum}") + (" or None" if allow_none else "")
    if _is_bool(value) or not whole:
        raise ConfigError(f"{name} must be {allowed}. Received: {value!r} ({type(value).__name__}).")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ConfigError(f"{name} must be {allowed}. Received: {value!r}.")
    if maximum is not None and v > maximum:
        raise ConfigError(
            f"{name} must be <= {maximum:,} (2**24, the largest step count a float32 counter holds "
            f"exactly; its buffer would take 64 MiB). Received: {v:,}. Use a shorter {name}."
        )
    return v


def real(name: str, value: Any, allowed: str = "a real number") -> float:
    """Return ``value`` as a Python float: a Python or NumPy number, not ``bool``, not NaN.

    Raises:
        ConfigError: anything else; the message names ``allowed``.
    """
    if _is_bool(value) or not _is_real(value) or math.isnan(float(value)):
        raise ConfigError(f"{name} must be {allowed}. Received: {value!r} ({type(value).__name__}).")
    return float(value)


def threshold(name: str, value: Any, *, allow_inf: bool = True) -> float:
    """Return ``value`` as a float after checking it is a real number ≥ 0 (not NaN).

    Torch accepts negative thresholds and silently flips gradient signs; we refuse them.
    """
    if _is_bool(value) or not _is_real(value):
        raise ConfigError(f"{name} must be a real number >= 0. Received: {value!r} ({type(value).__name__}).")
    v = float(value)
    if math.isnan(v):
        raise ConfigError(f"{name} must be a real number >= 0. Received: nan. Pass a finite threshold.")
    if v < 0:
        raise ConfigError(
            f"{name} must be >= 0. Received: {v}. A negative threshold would flip gradient signs "
            "(torch.nn.utils accepts it silently); pass its absolute value."
        )
    if math.isinf(v) and not allow_inf:
        raise ConfigError(f"{name} must be finite. Received: {v}.")
    return v


def bound(name: str, value: Any) -> float | None:
    """Check an optional clamp bound (any real number, not NaN)."""
    if value is None:
        return None
    if _is_bool(value) or not _is_real(value) or math.isnan(float(value)):
        raise ConfigError(f"{name} must be a real number or None. Received: {value!r}.")
    return float(value)


def norm_type(value: Any) -> float:
    """Return ``value`` as a float norm order: a real p > 0, or ``inf``.

    Torch also accepts p <= 0 (``0`` counts non-zeros, ``-inf`` takes the smallest magnitude); none
    of those is a norm, so clipping by them is refused.
    """
    try:
        if _is_bool(value):
            raise TypeError
        p = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"norm_type must be a real number > 0 or 'inf'. Received: {value!r} ({type(value).__name__})."
        ) from None
    if math.isnan(p) or p <= 0:
        raise ConfigError(
            f"norm_type must be > 0 or inf (1, 2 and inf are usual). Received: {p}. "
            "Orders <= 0 are not norms, so a threshold on them has no meaning."
        )
    return p


def choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """Check that ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"{name} must be one of {listed}. Received: {value!r}.")
    return value


def _is_bool(value: Any) -> bool:
    """Python and NumPy booleans: never a number here (``True`` is not a window of 1)."""
    return isinstance(value, bool) or type(value).__name__ in ("bool", "bool_")  # np.bool_ is named "bool" in NumPy 2


def _is_real(value: Any) -> bool:
    if isinstance(value, (int, float)):
        return True
    try:  # numpy scalars and 0-d arrays of any framework
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, (str, bytes, complex))
