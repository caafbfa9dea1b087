"""Gradient-health monitoring: per-step records, sinks, and reading logs back."""

from gradclip.monitor._metrics import scalars
from gradclip.monitor._monitor import Monitor
from gradclip.monitor._reader import RunLog, read_jsonl, read_runs
from gradclip.monitor._record import SCALAR_KEYS, clean
from gradclip.monitor._sinks import Sink, SinkError, SinkWarning
from gradclip.monitor._spike import SpikeDetector

__all__ = ["SCALAR_KEYS", "Monitor", "RunLog", "Sink", "SinkError", "SinkWarning", "SpikeDetector", "clean", "read_jsonl",
           "read_runs", "scalars"]
