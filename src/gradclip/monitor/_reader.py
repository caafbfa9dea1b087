"""Read JSONL run logs back, recovering every complete line of a run that was killed."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradclip._errors import LogError


@dataclass
class RunLog:
    """The records of one JSONL log.

    Attributes:
        path: The file read.
        records: One dict per complete line, in file order.
        truncated: True when the last line was cut short (a killed run) and was skipped.
        meta: The ``{"event": "start", ...}`` record that opened this run (``run`` label, ``time``,
            and for ``gradclip compare`` logs ``task``, ``framework``, ``method``, ``seed``,
            ``policy``); empty when the log has none.
        end: The ``{"event": "end", ...}`` record that closed it (``gradclip compare`` writes
            ``final_loss``, ``initial_loss``, ``outcome``, ``steps``...), or ``None``.
    """

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    end: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """A short name for legends: the start record's ``run``, the first record's, else the file stem."""
        if isinstance(self.meta.get("run"), str):
            return self.meta["run"]
        if self.records and isinstance(self.records[0].get("run"), str):
            return self.records[0]["run"]
        return self.path.stem


def read_jsonl(path: str | Path, *, warn: bool = True) -> RunLog:
    """Read a JSONL run log written by gradclip (``Monitor`` or ``compare --log-dir``).

    A last line without its newline that does not parse is the mark of a killed writer: it is
    skipped, ``truncated`` is set and a warning says so. Any other bad line is an error.

    Args:
        path: The ``.jsonl`` file.
        warn: Emit a ``UserWarning`` when the last line was truncated.

    Returns:
        A :class:`RunLog`.

    Raises:
        LogError: the file is missing, empty, holds no record, or has a corrupt line (the
            message names the file and the line number).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.jsonl"
        >>> _ = p.write_text('{"step": 0, "norm": 2.0}\\n{"step": 1, "no')
        >>> log = read_jsonl(p, warn=False)
        >>> len(log.records), log.truncated
        (1, True)
    """
    path = Path(path)
    if not path.is_file():
        raise LogError(f"{path}: no such file. Pass a .jsonl log written by gradclip.")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise LogError(f"{path}: the file is empty; it holds no step record.")
    lines = text.split("\n")
    ends_clean = text.endswith("\n")
    log = RunLog(path)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines) and not ends_clean
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if last:
                log.truncated = True
                if warn:
                    warnings.warn(f"{path}:{number}: skipped a truncated last line (the writer was killed).", stacklevel=2)
                break
            raise LogError(f"{path}:{number}: not a JSON object ({exc.msg}). Each line must be one step record.") from None
        if not isinstance(record, dict):
            raise LogError(f"{path}:{number}: expected a JSON object, found {type(record).__name__}.")
        if "event" in record:  # start/end marks, not steps
            if record["event"] == "start" and not log.meta:
                log.meta = record
            elif record["event"] == "end":
                log.end = record
            continue
        log.records.append(record)
    if not log.records:
        raise LogError(f"{path}: holds no complete step record.")
    return log
