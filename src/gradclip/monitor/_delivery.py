"""Deliver each record to every sink: a sink that fails costs only its own copy.

:class:`gradclip.Monitor` hands every record (and the run's start/end events) to
:class:`Delivery`, which gives it to each sink in turn. A sink that raises is reported with a
:class:`SinkWarning` naming the sink and the error, and the other sinks still get the record.
After ``max_failures`` consecutive failures of the same sink a :class:`SinkError` is raised,
once every sink had its turn, and the count starts again: the caller can catch it and go on.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from gradclip.monitor._sinks import JsonlSink, Sink, SinkError, SinkWarning

__all__ = ["DEFAULT_MAX_FAILURES", "Delivery"]

#: Consecutive failures of one sink that raise a :class:`SinkError` (``Monitor(max_sink_failures=...)``).
#: Three lets a sink ride out a passing fault (a network blip of a tracking server) with a warning,
#: and stops a training loop within three steps of a fault that stays (full disk, broken sink).
DEFAULT_MAX_FAILURES = 3


def sink_name(sink: Any) -> str:
    """How messages name a sink: its spec (``"jsonl:runs/a.jsonl"``), a callable's name, or its type."""
    spec = getattr(sink, "spec", None)
    return spec if isinstance(spec, str) and spec != Sink.spec else type(sink).__name__


class Delivery:
    """Every record to every sink, failures counted per sink.

    Args:
        sinks: The opened sinks (see :func:`gradclip.monitor._sinks.open_sink`).
        max_failures: Consecutive failures of one sink that raise a :class:`SinkError`
            (default :data:`DEFAULT_MAX_FAILURES`); ``None`` only warns.

    Example:
        >>> import warnings
        >>> from gradclip.monitor._sinks import open_sink
        >>> got = []
        >>> def broken(record):
        ...     raise ValueError("no")
        >>> out = Delivery([open_sink(got.append), open_sink(broken)], max_failures=2)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     out.write({"step": 0})
        >>> got, caught[0].category.__name__, out.due is None
        ([{'step': 0}], 'SinkWarning', True)
        >>> out.write({"step": 1})
        >>> got[-1], type(out.due).__name__
        ({'step': 1}, 'SinkError')
    """

    def __init__(self, sinks: list[Any], max_failures: int | None = DEFAULT_MAX_FAILURES) -> None:
        self.sinks = sinks
        self.max_failures = max_failures
        self.failures: dict[int, int] = {}  # id(sink) -> consecutive failures
        self.due: SinkError | None = None  # raised by raise_due(), after every sink had its turn
        self._jsonl = any(isinstance(s, JsonlSink) for s in sinks)

    def encode(self, record: dict[str, Any]) -> str | None:
        """The record's JSON line when a ``jsonl:`` sink will write it (encoded once, before any
        sink sees the record, so a value JSON cannot hold reaches no sink), else ``None``."""
        return json.dumps(record, allow_nan=False) if self._jsonl else None

    def write(self, record: dict[str, Any], line: str | None = None) -> None:
        """Give one step's record to every sink; ``line`` is its JSON encoding, when known."""
        for sink in self.sinks:
            try:
                if line is not None and isinstance(sink, JsonlSink):
                    sink.write_line(line)
                else:
                    sink.write(record)
            except Exception as exc:  # noqa: BLE001 - any sink error: report it, keep the others
                self._failed(sink, exc, f"step {record.get('step')}", stacklevel=6)  # Monitor.step's caller
            else:
                if self.failures:  # a success ends the sink's run of failures
                    self.failures.pop(id(sink), None)

    def event(self, record: dict[str, Any]) -> None:
        """Give a run event to every :class:`Sink` (callables and ``write`` objects get steps only)."""
        for sink in self.sinks:
            if isinstance(sink, Sink):
                try:
                    sink.event(record)
                except Exception as exc:  # noqa: BLE001
                    self._failed(sink, exc, f"the {record.get('event')} event", stacklevel=4)

    def flush(self) -> None:
        """Call ``flush()`` on every sink that has one (sinks that buffer their writes); a sink
        that fails counts a failure, as a failed write does."""
        for sink in self.sinks:
            flush = getattr(sink, "flush", None)
            if callable(flush):
                try:
                    flush()
                except Exception as exc:  # noqa: BLE001
                    self._failed(sink, exc, "flush", stacklevel=4)  # Monitor.flush's caller

    def close(self) -> None:
        """Close every sink; one that fails to close is reported and the others are still closed."""
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001
                warnings.warn(SinkWarning(f"Sink {sink_name(sink)!r} failed to close: {type(exc).__name__}: {exc}"),
                              stacklevel=3)

    def raise_due(self) -> None:
        """Raise the :class:`SinkError` of a sink that reached ``max_failures`` (then forget it)."""
        due, self.due = self.due, None
        if due is not None:
            raise due

    def _failed(self, sink: Any, exc: Exception, what: str, stacklevel: int) -> None:
        """Warn about one failure; at the ``max_failures``-th in a row, make a SinkError due."""
        name = sink_name(sink)
        n = self.failures.get(id(sink), 0) + 1
        self.failures[id(sink)] = n
        error = f"{type(exc).__name__}: {exc}"
        if self.max_failures is None or n < self.max_failures:
            limit = "" if self.max_failures is None else f" ({n} of {self.max_failures} consecutive failures before a SinkError)"
            warnings.warn(SinkWarning(f"Sink {name!r} failed on {what}{limit}; the other sinks got it. {error}"),
                          stacklevel=stacklevel)
            return
        self.failures[id(sink)] = 0
        if self.due is None:
            due = SinkError(f"Sink {name!r} failed {n} times in a row (last on {what}; the other sinks got every "
                            f"record). {error}. Fix or remove the sink, or pass Monitor(max_sink_failures=None) to "
                            "only warn. The monitor keeps going if you catch this error.",
                            sink=name, path=getattr(exc, "path", None), errno=getattr(exc, "errno", None))
            due.__cause__ = exc
            self.due = due
