"""``gradclip reproduce``: classic results of gradient clipping, one command each, with plots.

Each reproduction trains or iterates something small, decides its verdict from the numbers
(reproduced, partly, not reproduced) and writes ``results.json``, its per-step logs, PNG plots
and ``report.html`` into one folder. ``quick=True`` is a reduced setting (the tests run it); the
full one is what ``docs/REPRODUCTIONS.md`` reports.
"""

from gradclip.reproduce._registry import REPRODUCTIONS, get
from gradclip.reproduce._result import VERDICTS, Reproduction, table
from gradclip.reproduce._run import reproduce

__all__ = ["REPRODUCTIONS", "VERDICTS", "Reproduction", "get", "reproduce", "table"]
