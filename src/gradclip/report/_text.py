"""User text on the way to a page or a plot: shortened for display, and never read as markup.

Run labels, method and layer names come from the log and may be anything: 100 KB long, or
``$\\frac{$`` (matplotlib mathtext, which fails to parse or draws something else). The report keeps
them whole in its data (:func:`gradclip.report.summarize` rows) and shortens them only where they are
shown; every string that reaches matplotlib goes through :func:`plain` first.
"""

from __future__ import annotations

import hashlib
from typing import Any

#: Longest run, method or layer name shown in a legend, title, table cell or tick label.
LABEL_WIDTH = 60
_ELLIPSIS = "\u2026"


def display_label(text: Any, width: int = LABEL_WIDTH) -> str:
    """``text`` shortened to at most ``width`` characters for display, distinct for distinct labels.

    A label longer than ``width`` keeps its head and its tail (where seeds and steps usually
    are) around an ellipsis, followed by a short hash of the whole label, so two long labels that
    differ only in the middle still read differently.

    Example:
        >>> display_label("short")
        'short'
        >>> a, b = display_label("x" * 100 + "seed0"), display_label("x" * 100 + "seed1")
        >>> len(a) <= 60, a != b, a.startswith("xxx"), "seed0" in a
        (True, True, True, True)
    """
    text = str(text)
    if len(text) <= width:
        return text
    digest = hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:6]
    room = width - len(digest) - 1  # head, ellipsis and tail; then "~" and the digest
    tail = min(12, room // 3)
    return f"{text[:room - tail - 1]}{_ELLIPSIS}{text[len(text) - tail:]}~{digest}"


def plain(text: Any, width: int | None = LABEL_WIDTH) -> str:
    """``text`` for matplotlib: shortened (unless ``width`` is ``None``) and drawn as written.

    Every ``$`` is escaped, so matplotlib never reads a user's label as mathtext.

    Example:
        >>> plain(r"$\\frac{$")
        '\\\\$\\\\frac{\\\\$'
    """
    text = str(text) if width is None else display_label(text, width)
    return text.replace("$", r"\$")


def value_text(value: Any, limit: int = 80) -> str:
    """Any JSON value as short text (for a malformed field shown as written)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        text = str(tuple(value))
    else:
        text = repr(value) if not isinstance(value, (dict, list)) else _json(value)
    return text if len(text) <= limit else text[:limit - 1] + _ELLIPSIS


def _json(value: Any) -> str:
    import json

    try:
        return json.dumps(value, default=str)
    except (ValueError, RecursionError):  # pragma: no cover - cycles cannot come from JSON
        return type(value).__name__
