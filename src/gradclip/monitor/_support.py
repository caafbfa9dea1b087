"""Small helpers of :class:`gradclip.Monitor`: JSON-safe scalars, offenders, time, the exit flush.

Kept out of :mod:`gradclip.monitor._monitor` so that the class stays readable: each function
here is a few lines of the record's assembly (run once per record, so written for speed: no
recursion over the whole record, no dict built only to be copied), and :func:`track` registers a
monitor whose buffered records are delivered when the interpreter exits without ``close()``.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import math
import warnings
import weakref
from typing import Any

from gradclip.monitor._record import clean

__all__ = ["finite", "is_iterator", "now", "num", "offender_dicts", "resolve", "track", "untrack"]


def finite(value: Any) -> Any:
    """A record value made JSON-safe: NaN/Inf become ``None`` (:func:`clean`, fast for scalars).

    Example:
        >>> finite(1.5), finite(float("inf")), finite(3), finite((1.0, float("nan")))
        (1.5, None, 3, [1.0, None])
    """
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if value is None or kind is bool or kind is int:
        return value
    return clean(value)


def num(value: Any) -> float | None:
    """``loss``/``lr`` as written: a float, or ``None`` (none given, or a list).

    Example:
        >>> num(2), num(None), num(float("nan"))
        (2.0, None, None)
    """
    if value is None or isinstance(value, list):
        return None
    return finite(float(value))


def resolve(offenders: Any) -> tuple:
    """The offenders of a step: a tuple, or a function (of a function) that finds them."""
    while callable(offenders):
        offenders = offenders()
    return tuple(offenders)


def offender_dicts(offenders: tuple) -> list[dict[str, Any]]:
    """The record's ``offenders``: ``{"name", "shape", "nan", "inf"}`` per non-finite tensor.

    Example:
        >>> from gradclip import Offender
        >>> offender_dicts((Offender("fc.weight", 0, (2, 3), 1, 0),))
        [{'name': 'fc.weight', 'shape': [2, 3], 'nan': 1, 'inf': 0}]
    """
    return [clean({"name": o.name, "shape": list(o.shape), "nan": o.nan_count, "inf": o.inf_count})
            for o in offenders]


def now() -> str:
    """The current time, ISO-8601 in UTC, to the second (the event records' ``time``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def is_iterator(value: Any) -> bool:
    """Whether ``value`` is a one-shot iterator (a generator such as ``model.named_parameters()``)."""
    return iter(value) is value if hasattr(value, "__iter__") else False


#: Monitors not closed yet: their buffered records are delivered at interpreter exit.
_OPEN: weakref.WeakSet = weakref.WeakSet()


def track(monitor: Any) -> None:
    """Deliver ``monitor``'s buffered records at interpreter exit if it is still open then."""
    _OPEN.add(monitor)


def untrack(monitor: Any) -> None:
    """Forget a closed monitor."""
    _OPEN.discard(monitor)


@atexit.register
def _flush_open_monitors() -> None:
    """At exit (also after an uncaught exception): write what open monitors still buffer.

    A run that crashes after a non-finite step on an accelerator (where the step's values wait on
    the device for the next flush) still gets every step recorded. The monitors are not closed
    (no ``end`` record: the run did not end), only flushed.
    """
    for monitor in list(_OPEN):
        try:
            monitor.flush()
        except Exception as exc:  # noqa: BLE001 - at exit: report, never raise
            warnings.warn(f"gradclip Monitor could not write its buffered records at exit: "
                          f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=1)
