"""Run one reproduction by name and write its outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from gradclip._errors import ConfigError
from gradclip.reproduce._registry import get
from gradclip.reproduce._result import Reproduction, write


def reproduce(name: str, *, quick: bool = False, out: str | Path | None = None,
              say: Callable[[str], None] | None = None) -> Reproduction:
    """Run the reproduction ``name`` and write ``results.json``, plots, logs and ``report.html``.

    Args:
        name: A key of :data:`gradclip.reproduce.REPRODUCTIONS` (``"zhang-toy"``, ...).
        quick: Run the reduced setting (minutes become seconds; the verdict still comes from
            the numbers, which are noisier).
        out: Output folder. Default ``runs/reproduce/<name>`` (``<name>-quick`` with ``quick``).
        say: Called with one line of progress at a time (default: nothing).

    Returns:
        The :class:`Reproduction`, its ``seconds`` set.

    Raises:
        ConfigError: unknown name, or ``out`` is a file.

    Example:
        >>> import tempfile
        >>> from gradclip.reproduce import reproduce
        >>> r = reproduce("pascanu-cliff", quick=True, out=tempfile.mkdtemp())  # doctest: +SKIP
        >>> r.verdict  # doctest: +SKIP
        'reproduced'
    """
    entry = get(name)
    folder = Path(out) if out is not None else Path("runs/reproduce") / (name + ("-quick" if quick else ""))
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; it takes a folder, such as runs/reproduce/{name}.")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = entry.runner()(quick, folder, say or (lambda line: None))
    result.seconds = time.perf_counter() - start
    result.config = {**result.config, "quick": quick}
    write(result, folder)
    return result
