"""Gradient-health monitoring: per-step records, sinks, and reading logs back."""

from gradclip.monitor._reader import RunLog, read_jsonl
from gradclip.monitor._record import SCALAR_KEYS, clean

__all__ = ["SCALAR_KEYS", "RunLog", "clean", "read_jsonl"]
