"""HTML report and threshold advisor for gradclip run logs.

``build_report`` writes one self-contained HTML page (matplotlib, imported only when called);
``summarize`` returns the numbers of its summary table; ``suggest`` proposes a clipping threshold
from the norms of a run and ``render_suggestion`` prints it.
"""

from gradclip.report._data import summarize
from gradclip.report._html import build_report
from gradclip.report._suggest import render_suggestion, suggest

__all__ = ["build_report", "render_suggestion", "suggest", "summarize"]
