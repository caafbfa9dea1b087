"""Read JSONL run logs back, run by run, recovering every complete line of a run that was killed."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradclip._errors import LogError


@dataclass
class RunLog:
    """The records of one run (or, from :func:`read_jsonl`, of a whole JSONL file).

    Attributes:
        path: The file read.
        records: One dict per complete step line, in file order.
        truncated: True when a line was cut short (a killed run) and was skipped.
        meta: The ``{"event": "start", ...}`` record that opened this run (``run`` label, ``time``,
            ``resumed`` when the writer appended to an existing log, and for ``gradclip compare``
            logs ``task``, ``framework``, ``method``, ``seed``, ``policy``); empty when the log
            has none (logs of older versions).
        end: The ``{"event": "end", ...}`` record that closed it (``gradclip compare`` writes
            ``final_loss``, ``initial_loss``, ``outcome``, ``steps``...), or ``None``.
        name: A legend name that overrides :attr:`label`; :func:`read_runs` sets it to
            ``"LABEL #2"``, ``"LABEL #3"``... when runs of one file share a label.
    """

    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    end: dict[str, Any] | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        """A short name for legends.

        :attr:`name` when set, else the start record's ``run``, else the first record's ``run``,
        else ``parent/stem`` of the file (``runs/a/grads.jsonl`` gives ``"a/grads"``), so two
        ``grads.jsonl`` in different folders get different labels.
        """
        if self.name:
            return self.name
        if isinstance(self.meta.get("run"), str) and self.meta["run"]:
            return self.meta["run"]
        if self.records and isinstance(self.records[0].get("run"), str):
            return self.records[0]["run"]
        return path_label(self.path)


def path_label(path: str | Path) -> str:
    """``parent/stem`` of a log path: the default run label (``runs/a/grads.jsonl`` -> ``a/grads``).

    Example:
        >>> path_label("runs/a/grads.jsonl")
        'a/grads'
    """
    path = Path(path)
    parent = path.parent.name or path.absolute().parent.name
    return f"{parent}/{path.stem}" if parent else path.stem


def read_runs(path: str | Path, *, warn: bool = True) -> list[RunLog]:
    """Read a JSONL log as its runs: one :class:`RunLog` per ``{"event": "start"}`` record.

    A log appended to by a resumed run, or shared by several runs, holds one start record per
    run; each run gets the step records that follow its start record, and its ``end`` record.
    Step records before the first start record (logs written by older versions) form a run of
    their own, with empty ``meta``. Runs of one file that share a label are named
    ``"LABEL #2"``, ``"LABEL #3"``... (:attr:`RunLog.name`) so a report tells them apart.

    A line cut short by a killed writer (the file's last line without its newline, or a bad
    line just before the next run's start record) is skipped, and that run's ``truncated`` is set
    (with a warning). Any other bad line is an error.

    Args:
        path: The ``.jsonl`` file.
        warn: Emit a ``UserWarning`` for each truncated line.

    Returns:
        The runs in file order (a run may hold no step record, e.g. one killed before its first step).

    Raises:
        LogError: the file is missing, empty, holds no step record, or has a corrupt line or one
            nested too deeply to read (the message names the file and the line number).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "grads.jsonl"
        >>> _ = p.write_text('{"event": "start", "run": "a"}\\n{"step": 0}\\n'
        ...                  '{"event": "start", "run": "a", "resumed": true}\\n{"step": 0}\\n{"step": 1}\\n')
        >>> [(run.label, len(run.records)) for run in read_runs(p)]
        [('a', 1), ('a #2', 2)]
    """
    path = Path(path)
    runs = _split(path, _parse(path), warn)
    seen: dict[str, int] = {}
    for run in runs:
        label = run.label
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            run.name = f"{label} #{seen[label]}"
    return runs


def read_jsonl(path: str | Path, *, warn: bool = True) -> RunLog:
    """Read a JSONL run log written by gradclip (``Monitor`` or ``compare --log-dir``) as one RunLog.

    A last line without its newline that does not parse is the mark of a killed writer: it is
    skipped, ``truncated`` is set and a warning says so. Any other bad line is an error.

    A file holding several runs (a resumed run appends to its log) gives all their step records
    one after another, in file order (each run's steps count from its own 0), with ``meta`` from
    the first start record and ``end`` from the last end record. :func:`read_runs` gives one
    RunLog per run instead; the report uses it.

    Args:
        path: The ``.jsonl`` file.
        warn: Emit a ``UserWarning`` when a line was truncated.

    Returns:
        A :class:`RunLog`.

    Raises:
        LogError: the file is missing, empty, holds no record, or has a corrupt line or one nested
            too deeply to read (the message names the file and the line number).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.jsonl"
        >>> _ = p.write_text('{"step": 0, "norm": 2.0}\\n{"step": 1, "no')
        >>> log = read_jsonl(p, warn=False)
        >>> len(log.records), log.truncated
        (1, True)
    """
    path = Path(path)
    runs = _split(path, _parse(path), warn)
    ends = [run.end for run in runs if run.end is not None]
    return RunLog(path, [r for run in runs for r in run.records], truncated=any(run.truncated for run in runs),
                  meta=next((run.meta for run in runs if run.meta), {}), end=ends[-1] if ends else None)


def _parse(path: Path) -> list[tuple[int, Any, bool]]:
    """``(line number, parsed value or the JSONDecodeError, is the unterminated last line)``."""
    if not path.is_file():
        raise LogError(f"{path}: is a directory; pass the .jsonl log(s) in it." if path.is_dir() else
                       f"{path}: no such file. Pass a .jsonl log written by gradclip.")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise LogError(f"{path}: the file is empty; it holds no step record.")
    lines = text.split("\n")
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value: Any = json.loads(line)
        except json.JSONDecodeError as exc:
            value = exc
        except RecursionError:  # json recurses once per level: 100,000 nested lists exhaust the stack
            raise LogError(f"{path}:{number}: nested too deeply to read (JSON recursion limit). "
                           "Each line must be one flat step or event record.") from None
        except ValueError as exc:  # an integer of more than 4300 digits (sys.set_int_max_str_digits)
            raise LogError(f"{path}:{number}: not readable ({_first_line(exc)}). "
                           "Each line must be one step or event record.") from None
        out.append((number, value, number == len(lines) and not text.endswith("\n")))
    return out


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().split("\n")[0]
    return text if len(text) <= 120 else text[:119] + "\u2026"


def _is_start(value: Any) -> bool:
    return isinstance(value, dict) and value.get("event") == "start"


def _split(path: Path, lines: list[tuple[int, Any, bool]], warn: bool) -> list[RunLog]:
    runs = [RunLog(path)]
    for i, (number, record, unterminated) in enumerate(lines):
        if isinstance(record, json.JSONDecodeError):
            before_start = i + 1 < len(lines) and _is_start(lines[i + 1][1])
            if not (unterminated or before_start):
                raise LogError(f"{path}:{number}: not a JSON object ({record.msg}). "
                               "Each line must be one step or event record.")
            runs[-1].truncated = True
            if warn:
                warnings.warn(f"{path}:{number}: skipped a truncated line (the writer was killed).", stacklevel=3)
            continue
        if not isinstance(record, dict):
            raise LogError(f"{path}:{number}: expected a JSON object, found {type(record).__name__}.")
        if "event" in record:  # start/end marks, not steps
            if _is_start(record):
                if runs[-1].records or runs[-1].meta or runs[-1].end is not None or runs[-1].truncated:
                    runs.append(RunLog(path))
                runs[-1].meta = record
            elif record["event"] == "end":
                runs[-1].end = record
            continue
        runs[-1].records.append(record)
    if not any(run.records for run in runs):
        raise LogError(f"{path}: holds no complete step record.")
    return runs
