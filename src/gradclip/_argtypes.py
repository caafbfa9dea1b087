"""argparse ``type=`` functions shared by every command (``gradclip``, ``gradclip bench``, ``benchmarks/``).

Each raises ``argparse.ArgumentTypeError`` with what was received, so a bad value is one usage
line, never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_list(example: str, minimum: int | None = None) -> Callable[[str], list[int]]:
    """An argparse ``type`` for comma-separated integers (``"0,1,2"``), each at least ``minimum``."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            values = []
        if not values or (minimum is not None and min(values) < minimum):
            least = f", each {minimum} or more" if minimum is not None else ""
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers such as {example}{least}. Received: {text!r}")
        return values

    return parse


def positive_int(text: str) -> int:
    """An argparse ``type`` for a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number, 1 or more. Received: {text!r}")
    return value
