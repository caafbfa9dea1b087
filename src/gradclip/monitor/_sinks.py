"""Sinks: where the monitor's records go (JSONL, CSV, TensorBoard, MLflow, W&B, Neptune, a callable).

Every sink is opened when the :class:`gradclip.Monitor` is created, so a bad spec fails at once
(``ConfigError`` naming the spec and what is valid), not at step 10,000. A write that fails later
(disk full, a closed pipe, a sink's own bug) is a :class:`SinkError` naming the sink and, for
files, the path; :mod:`gradclip.monitor._delivery` keeps it from costing the other sinks.
The dashboards live in :mod:`gradclip.monitor._sink_tb` (TensorBoard) and
:mod:`gradclip.monitor._sink_remote` (MLflow, W&B, Neptune); they send records in batches
(:class:`BatchedSink`), and ``close()`` sends what is left.

Files (``jsonl:``, ``csv:``) are opened with ``O_APPEND`` and every line is written with one
``os.write``. POSIX makes each such write seek to the end and write as one step, and on Linux a
``write`` to a regular file on a local file system is not interleaved with another process's
``write`` to the same file, whatever its length (``PIPE_BUF`` limits pipes, not regular files).
So several processes may append to one JSONL log: no line is lost or mixed with another. NFS
does not give this guarantee (its ``O_APPEND`` is emulated by the client): give each process its
own file there.
"""

from __future__ import annotations

import atexit
import errno as _errno
import functools
import importlib
import json
import os
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gradclip._errors import ConfigError, GradclipError
from gradclip.monitor._record import SCALAR_KEYS, scalar

__all__ = ["Sink", "SinkError", "SinkWarning", "open_sink"]

VALID_SPECS = (
    "'jsonl:PATH', 'csv:PATH', 'tensorboard:DIR', 'mlflow', 'wandb', 'neptune', a Neptune run, "
    "a callable taking the record dict, or an object with write(record) and close()"
)


class SinkError(GradclipError, OSError):
    """A sink failed to write a record (a file's ``OSError``, or any error a sink raised).

    Also an ``OSError``, so code that caught the disk-full ``OSError`` keeps catching it.

    Attributes:
        sink: The sink's spec (``"jsonl:runs/a/grads.jsonl"``) or a callable's name.
        path: The file written, for ``jsonl:``/``csv:`` sinks; else ``None``.
        errno: The OS error number (``errno.ENOSPC`` for a full disk), when there is one.
    """

    def __init__(self, message: str, *, sink: str = "", path: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.sink, self.path, self.errno = sink, path, errno


class SinkWarning(RuntimeWarning):
    """A sink failed on one record; the other sinks got it (see ``Monitor(max_sink_failures=...)``)."""


class Sink:
    """Base class: a sink receives every record (a JSON-safe dict) and is closed once."""

    spec = "sink"

    def write(self, record: dict[str, Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def event(self, record: dict[str, Any]) -> None:
        """Receive a run event (``{"event": "start" | "end", "run": ..., "time": ...}``), not a step.

        The monitor sends one ``start`` event after opening its sinks and one ``end`` event when it
        closes. Sinks that keep a file (``jsonl:``) write it; the others ignore it (the default).
        """

    def close(self) -> None:
        """Flush and release what the sink holds (idempotent)."""


_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_file(spec: str, path: str, kind: str, overwrite: bool) -> tuple[int, bool]:
    """Open ``path`` with ``O_APPEND`` (after truncating it with ``overwrite``); a file descriptor.

    Returns:
        ``(fd, resumed)``: ``resumed`` is True when the file already held data and is appended
        to. A last line cut short by a killed writer is ended with a newline first, so the old
        fragment stays one line of its own and the new run starts on a fresh line.
    """
    if not path:
        raise ConfigError(f"Sink {spec!r} names no file. Write {kind}:PATH, for example '{kind}:runs/a/grads.{kind}'.")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, _APPEND | (os.O_TRUNC if overwrite else 0), 0o666)
    except OSError as exc:
        raise ConfigError(f"Sink {spec!r} cannot be opened: {exc.strerror or exc} ({target}). "
                          f"Pass a writable path. Valid sinks: {VALID_SPECS}.") from None
    resumed = not overwrite and os.fstat(fd).st_size > 0
    if resumed:
        with open(target, "rb") as old:
            old.seek(-1, os.SEEK_END)
            if old.read(1) != b"\n":
                _write_line(spec, target, fd, b"\n")
    return fd, resumed


def _write_line(spec: str, path: Path, fd: int, data: bytes) -> int:
    """Append ``data`` (one line) with one ``os.write``; an ``OSError`` becomes a :class:`SinkError`.

    Returns:
        The number of bytes written: ``len(data)``, or fewer when the disk filled up during it.
    """
    try:
        return os.write(fd, data)
    except OSError as exc:
        fix = ("The disk is full: free space, or log to another disk" if exc.errno == _errno.ENOSPC
               else "Check that the file is still writable, or log elsewhere")
        raise SinkError(f"Sink {spec!r} cannot write to {path}: {exc.strerror or exc} "
                        f"({_errno.errorcode.get(exc.errno, exc.errno)}). {fix}.",
                        sink=spec, path=str(path), errno=exc.errno) from exc


class _FileSink(Sink):
    """A sink that appends lines to a file (``O_APPEND``, one ``os.write`` per line)."""

    spec: str
    path: Path
    _fd = -1
    _cut = False  # the last write was short: start the next line on a fresh line

    def _append(self, data: bytes) -> None:
        if self._fd < 0:
            raise SinkError(f"Sink {self.spec!r} is closed ({self.path}).", sink=self.spec, path=str(self.path))
        if self._cut:
            data = b"\n" + data
        written = _write_line(self.spec, self.path, self._fd, data)
        self._cut = written != len(data)
        if self._cut:  # the disk filled up mid-line: the reader skips the fragment; the next line starts fresh
            raise SinkError(f"Sink {self.spec!r} wrote only {written} of {len(data)} bytes of a line to {self.path} "
                            "(disk full?). Free space, or log to another disk.", sink=self.spec, path=str(self.path),
                            errno=_errno.ENOSPC)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __del__(self) -> None:  # a monitor never closed still releases its file
        self.close()


class JsonlSink(_FileSink):
    """One JSON object per line, appended with one ``os.write`` per record (``O_APPEND``).

    The line reaches the operating system before :meth:`write` returns, so a process killed with
    SIGKILL keeps every record written before the kill (at most the last line is cut short, and
    :func:`gradclip.monitor.read_jsonl` skips it). Processes may share the file: see the module
    docstring for why lines are neither lost nor interleaved. ``fsync=True`` also forces each line to disk
    (survives a power loss; costs a disk flush per step).

    An existing non-empty file is appended to, never truncated (``overwrite=True`` truncates it).
    The run's ``{"event": "start", ...}`` record, sent by the monitor, then carries
    ``"resumed": true``, so :func:`gradclip.monitor.read_runs` tells the runs of one file apart.
    """

    def __init__(self, spec: str, path: str, *, fsync: bool = False, overwrite: bool = False) -> None:
        self.spec, self.path, self.fsync = spec, Path(path), fsync
        self._fd, self.resumed = _open_file(spec, path, "jsonl", overwrite)

    def write(self, record: dict[str, Any]) -> None:
        self.write_line(json.dumps(record, allow_nan=False))

    def write_line(self, line: str) -> None:
        """Append one encoded record (``json.dumps`` of it, no newline) as one line."""
        self._append((line + "\n").encode())
        if self.fsync:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise SinkError(f"Sink {self.spec!r} cannot sync {self.path} to disk: {exc.strerror or exc}.",
                                sink=self.spec, path=str(self.path), errno=exc.errno) from exc

    def event(self, record: dict[str, Any]) -> None:
        if record.get("event") == "start" and self.resumed:
            record = {**record, "resumed": True}
        self.write(record)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, allow_nan=False)


class CsvSink(_FileSink):
    """One row per record, columns :data:`gradclip.monitor.SCALAR_KEYS` (header first).

    Cells are JSON values (``true``, ``1.5``, ``[0.1, 0.2]`` for per-tensor thresholds); missing
    and null values are empty. Each row is flushed as it is written.

    Every opening writes the header line, and an existing non-empty file is appended to
    (``overwrite=True`` truncates it): a CSV written by several runs holds one header line per
    run, and a row equal to the header starts the next run. CSV columns have no room for the
    JSONL sink's start/end event records, so the header line is the run mark. The columns
    ``dp.fraction_clipped`` ... ``dp.epsilon`` hold the record's ``dp`` object (empty without one).
    """

    def __init__(self, spec: str, path: str, *, overwrite: bool = False) -> None:
        self.spec, self.path = spec, Path(path)
        self._fd, self.resumed = _open_file(spec, path, "csv", overwrite)
        self._append((",".join(SCALAR_KEYS) + "\n").encode())

    def write(self, record: dict[str, Any]) -> None:
        cells = []
        for key in SCALAR_KEYS:
            cell = _cell(scalar(record, key))
            cells.append('"' + cell.replace('"', '""') + '"' if ("," in cell or '"' in cell) else cell)
        self._append((",".join(cells) + "\n").encode())


def require(spec: str, module: str, extra: str):
    """Import an optional package for a sink, or raise a one-line ``ConfigError`` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"Sink {spec!r} needs the {module!r} package, which is not installed. "
                          f"Install it with pip install 'gradclip[{extra}]', or pick another sink.") from None


class BatchedSink(Sink):
    """A sink that keeps what it needs of each record and sends the records in batches.

    :meth:`write` calls :meth:`keep` (which extracts the values, so a record changed later by
    its owner is not seen) and buffers the result; every ``every`` records, when the oldest
    buffered record is ``max_secs`` old (checked at each write), at :meth:`flush` and at
    :meth:`close`, :meth:`send` gets the buffer. A batch whose ``send`` raises is dropped and
    the error reaches the monitor (a ``SinkWarning``, then a ``SinkError``). :meth:`close` sends
    what is left, then calls :meth:`release`, even when that send fails. A sink never closed
    (a monitor left open) sends what it holds when the interpreter exits (``atexit``, before
    the trackers' own exit handlers, which were registered earlier, end their runs).
    """

    def __init__(self, *, every: int, max_secs: float) -> None:
        self.every, self.max_secs = every, max_secs
        self._buffer: list[Any] = []
        self._since = 0.0
        self._closed = False
        self._at_exit = functools.partial(_flush_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    def keep(self, record: dict[str, Any]) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def send(self, batch: list[Any]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def release(self) -> None:
        """Release what the sink holds (after the last :meth:`send`)."""

    def write(self, record: dict[str, Any]) -> None:
        if self._closed:
            raise SinkError(f"Sink {self.spec!r} is closed.", sink=self.spec)
        now = time.monotonic()
        if not self._buffer:
            self._since = now
        self._buffer.append(self.keep(record))
        if len(self._buffer) >= self.every or now - self._since >= self.max_secs:
            self.flush()

    def flush(self) -> None:
        """Send the buffered records now."""
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self.send(batch)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        try:
            self.flush()
        finally:
            self.release()

    def __del__(self) -> None:  # dropped without close(): send what is held (a sink may release more)
        if not getattr(self, "_closed", True):
            _flush_at_exit(weakref.ref(self))


def _flush_at_exit(ref: Any) -> None:
    sink = ref()
    if sink is not None and not sink._closed:
        try:
            sink.flush()
        except Exception:  # noqa: BLE001, S110 - the interpreter is exiting: nothing left to report to
            pass


class CallbackSink(Sink):
    """Calls ``fn(record)`` with every record (a fresh JSON-safe dict)."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any]) -> None:
        self.spec, self._fn = getattr(fn, "__name__", repr(fn)), fn

    def write(self, record: dict[str, Any]) -> None:
        self._fn(record)


def _tensorboard(spec: str, rest: str, overwrite: bool) -> Sink:
    from gradclip.monitor._sink_tb import TensorBoardSink

    return TensorBoardSink(spec, rest)  # a new event file per writer


_SCHEMES: dict[str, Callable[[str, str, bool], Sink]] = {
    "jsonl": lambda spec, rest, overwrite: JsonlSink(spec, rest, overwrite=overwrite),
    "csv": lambda spec, rest, overwrite: CsvSink(spec, rest, overwrite=overwrite),
    "tensorboard": _tensorboard,
}


def _tracker(spec: str) -> Sink:
    from gradclip.monitor import _sink_remote as remote

    return {"mlflow": remote.MlflowSink, "wandb": remote.WandbSink, "neptune": remote.NeptuneSink}[spec](spec)


def open_sink(spec: Any, *, overwrite: bool = False) -> Sink:
    """Open one sink from a spec string, a callable, or an object with ``write``.

    Args:
        spec: ``"jsonl:PATH"``, ``"csv:PATH"``, ``"tensorboard:DIR"``, ``"mlflow"``, ``"wandb"``,
            ``"neptune"``, a Neptune run (or namespace, ``run["monitoring"]``), a callable, or an
            object with ``write(record)``.
        overwrite: Truncate an existing ``jsonl:``/``csv:`` file instead of appending to it
            (default False: a log is never lost). TensorBoard always adds a new event file.

    Raises:
        ConfigError: unknown scheme, missing path, a path that cannot be opened, a missing
            optional package (``pip install 'gradclip[mlflow]'``, ``[wandb]``, ``[neptune]``,
            ``[monitor]`` for tensorboardX), or a tracker run that cannot be started. The message
            names the spec and the fix.
        InputTypeError: the spec is neither a string nor a callable.
    """
    if isinstance(spec, Sink):
        return spec
    from gradclip.monitor._sink_remote import NeptuneSink, is_neptune_run

    if is_neptune_run(spec):
        return NeptuneSink("neptune", run=spec)
    if hasattr(spec, "write") and not isinstance(spec, (str, bytes)):
        return spec
    if callable(spec):
        return CallbackSink(spec)
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        from gradclip._errors import InputTypeError

        raise InputTypeError(f"A sink must be a spec string or a callable. Received: {type(spec).__name__}. "
                             f"Valid sinks: {VALID_SPECS}.")
    scheme, _, rest = spec.partition(":")
    if scheme in ("mlflow", "wandb", "neptune") and not rest:
        return _tracker(spec)
    if scheme not in _SCHEMES:
        raise ConfigError(f"Unknown sink {spec!r}. Valid sinks: {VALID_SPECS}.")
    return _SCHEMES[scheme](spec, rest, overwrite)
