"""The ``tensorboard:DIR`` sink: TensorBoard event files, written in batches.

``tensorboardX.SummaryWriter.add_scalar`` costs about 0.3 ms a call: it builds a ``Summary`` per
value, pickles each event through a ``multiprocessing.Queue`` to a writer thread, and that thread
checksums every byte with a pure-Python CRC32C loop. This sink keeps each record's scalars in a
list (microseconds), and every ``every`` records, every ``flush_secs`` seconds, at
:meth:`TensorBoardSink.flush` and at :meth:`TensorBoardSink.close` it writes them all at once:
one ``Event`` per step holding every scalar of the step, the TFRecord checksums of the whole batch
computed together with NumPy (one table lookup per byte *column*, for all records at once), and
one ``os.write`` of the batch to an ``O_APPEND`` file. ``Monitor`` closes its sinks on an
exception exit (``with Monitor(...)``), so nothing buffered is lost then; a process killed with
SIGKILL loses at most the records of the last ``flush_secs`` seconds (the ``jsonl:`` sink is
the log that survives SIGKILL).

References:
    TFRecord format (length, masked CRC32C of the length, data, masked CRC32C of the data):
    https://www.tensorflow.org/tutorials/load_data/tfrecord. CRC32C (Castagnoli): RFC 3720, B.4.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from gradclip._errors import ConfigError
from gradclip.monitor._metrics import scalars
from gradclip.monitor._sinks import VALID_SPECS, BatchedSink, SinkError, require

__all__ = ["TensorBoardSink", "crc32c_many"]


def _table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _table()


def crc32c_many(chunks: list[bytes]) -> list[int]:
    """CRC32C of every chunk, computed together: one vectorised step per byte position.

    Example:
        >>> [hex(c) for c in crc32c_many([b"123456789", b"", b"a"])]  # RFC 3720 check value first
        ['0xe3069283', '0x0', '0xc1d04330']
    """
    n = len(chunks)
    if n == 0:
        return []
    lengths = np.fromiter(map(len, chunks), dtype=np.int64, count=n)
    order = np.argsort(-lengths, kind="stable")  # longest first: the rows still running are a prefix
    lengths = lengths[order]
    width = int(lengths[0])
    data = np.zeros((n, max(width, 1)), dtype=np.uint8)
    data[np.arange(width) < lengths[:, None]] = np.frombuffer(b"".join(chunks[i] for i in order), dtype=np.uint8)
    running = np.searchsorted(-lengths, -np.arange(width), side="left")  # rows longer than each column
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    table = _CRC_TABLE
    for col in range(width):
        k = running[col]
        head = crc[:k]
        crc[:k] = table[(head ^ data[:k, col]) & 0xFF] ^ (head >> 8)
    crc ^= np.uint32(0xFFFFFFFF)
    out = [0] * n
    for i, value in zip(order.tolist(), crc.tolist()):
        out[i] = value
    return out


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecords(payloads: list[bytes]) -> bytes:
    """Frame serialized events as TFRecords (length, its masked CRC32C, data, its masked CRC32C)."""
    heads = [struct.pack("<Q", len(p)) for p in payloads]
    crcs = crc32c_many(heads + payloads)
    n = len(payloads)
    parts = []
    for i, (head, body) in enumerate(zip(heads, payloads)):
        parts += (head, struct.pack("<I", _masked(crcs[i])), body, struct.pack("<I", _masked(crcs[n + i])))
    return b"".join(parts)


_FILES = itertools.count()


def _tf_bins() -> list[float]:
    """TensorBoard's default histogram edges (``SummaryWriter.add_histogram(bins="tensorflow")``)."""
    v, up = 1e-12, []
    while v < 1e20:
        up.append(v)
        v *= 1.1
    return [-b for b in reversed(up)] + [0.0] + up


_BINS: list[float] = []


class TensorBoardSink(BatchedSink):
    """TensorBoard event files (one new file per sink): scalars, and per-layer norm histograms.

    Scalars use :func:`gradclip.monitor._metrics.scalars` names (``grad/norm_total`` ...), all
    scalars of a step in one event. When a record holds layers, the finite per-layer gradient
    norms go to the histogram ``grad/norm_layers`` and the number of non-finite ones to the
    scalar ``grad/norm_layers_nonfinite`` (TensorBoard rejects histograms with NaN in them).
    Records are written in batches (see the module docstring): every ``every`` records, every
    ``flush_secs`` seconds, at :meth:`flush` and at :meth:`close`.

    Args:
        spec: The spec string (``"tensorboard:runs/a"``).
        logdir: The directory of the event file (created).
        every: Records per batch (default 200).
        flush_secs: Longest time a record waits in the buffer, checked at each write (default 10).
    """

    def __init__(self, spec: str, logdir: str, *, every: int = 200, flush_secs: float = 10.0) -> None:
        super().__init__(every=every, max_secs=flush_secs)
        self.spec, self.logdir = spec, Path(logdir)
        if not logdir:
            raise ConfigError(f"Sink {spec!r} names no directory. Write tensorboard:DIR, for example 'tensorboard:runs/a'.")
        tbx = require(spec, "tensorboardX", "monitor")
        from tensorboardX.proto import event_pb2, summary_pb2

        self._tbx, self._Event, self._Summary = tbx, event_pb2.Event, summary_pb2.Summary
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_FILES)}"
        self.path = self.logdir / name
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise ConfigError(f"Sink {spec!r} cannot be opened: {exc.strerror or exc} ({self.logdir}). "
                              f"Pass a writable directory. Valid sinks: {VALID_SPECS}.") from None
        self._put([self._Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString()])

    def keep(self, record: dict[str, Any]) -> Any:
        values = scalars(record)
        layers = record.get("layers")
        finite = None
        if layers:
            norms = [(d or {}).get("grad_norm") for d in layers.values()]
            finite = [v for v in norms if isinstance(v, (int, float)) and math.isfinite(v)]
            values["grad/norm_layers_nonfinite"] = float(len(norms) - len(finite))
        return record["step"], time.time(), values, finite

    def send(self, batch: list[Any]) -> None:
        Event, Value = self._Event, self._Summary.Value
        payloads = []
        for step, wall, values, finite in batch:
            summary = self._Summary(value=[Value(tag=tag, simple_value=v) for tag, v in values.items()])
            if finite:
                if not _BINS:
                    _BINS.extend(_tf_bins())
                histo = self._tbx.summary.histogram("grad/norm_layers", np.asarray(finite, dtype=np.float64), _BINS)
                summary.value.extend(histo.value)
            payloads.append(Event(wall_time=wall, step=step, summary=summary).SerializeToString())
        self._put(payloads)

    def _put(self, payloads: list[bytes]) -> None:
        if self._fd < 0:
            raise SinkError(f"Sink {self.spec!r} is closed ({self.path}).", sink=self.spec, path=str(self.path))
        data = tfrecords(payloads)
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            raise SinkError(f"Sink {self.spec!r} cannot write to {self.path}: {exc.strerror or exc}. Check that the "
                            "directory is still writable, or log elsewhere.", sink=self.spec, path=str(self.path),
                            errno=exc.errno) from exc
        if written != len(data):
            raise SinkError(f"Sink {self.spec!r} wrote only {written} of {len(data)} bytes to {self.path} (disk full?).",
                            sink=self.spec, path=str(self.path))

    def __del__(self) -> None:  # dropped without close(): write what is held and close the file
        if getattr(self, "_fd", -1) >= 0:
            try:
                self.close()
            except Exception:  # noqa: BLE001, S110 - nowhere left to report to
                pass

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
