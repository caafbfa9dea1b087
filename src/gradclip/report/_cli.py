"""``gradclip report`` and ``gradclip suggest``: parsers and runners that ``gradclip.cli`` hooks in.

Each ``run_*`` returns the exit status: 0 on success, 2 with one line on stderr naming the file
and line when a log is missing, empty or corrupt.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from gradclip._argtypes import int_list
from gradclip._errors import GradclipError

EXIT_USAGE = 2


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``gradclip report LOG [LOG ...] -o report.html [--title T]``."""
    p = subparsers.add_parser(
        "report", help="write a self-contained HTML report of one or several run logs",
        description=("Plot gradient norms (pre- and post-clip, threshold), loss, clip rate, spikes and non-finite "
                     "steps, per-layer heatmaps, and a summary table, into one HTML file with embedded images. "
                     "Several logs are overlaid with a legend."),
    )
    p.add_argument("logs", nargs="+", metavar="LOG", help="JSONL log(s) from Monitor or 'gradclip compare --log-dir'")
    p.add_argument("-o", "--output", default="report.html", metavar="PATH", help="HTML file to write (default: %(default)s)")
    p.add_argument("--title", default=None, help="page title (default: the run labels)")
    return p


def add_suggest_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``gradclip suggest LOG [LOG ...] [--verify [TASK]] [--framework F] [--seeds S] [--json]``."""
    p = subparsers.add_parser(
        "suggest", help="suggest a clipping threshold from the gradient norms of a run, and test it",
        description=("Say what kind of log this is (unclipped, clipped, diverged, too short), list candidate "
                     "thresholds (percentiles as in AutoClip, 5x/10x the mean as in Pascanu et al. 2013, ZClip "
                     "z=2.5, the largest non-spike norm, the run's own threshold, decades below the smallest norm) "
                     "with the share of logged steps above each, and pick one. Without --verify the pick is a rule's "
                     "and marked UNVERIFIED; with --verify every candidate trains the task again and the one that "
                     "reaches the lowest loss with an ok outcome is picked."),
    )
    p.add_argument("logs", nargs="+", metavar="LOG", help="JSONL log(s); the norms are pooled in order")
    p.add_argument("--verify", nargs="?", const="auto", default=None, metavar="TASK",
                   help=("train with each candidate and rank by the loss reached: the task of a `gradclip compare` "
                         "log, or the built-in TASK given (regression, digits-lstm)"))
    p.add_argument("--framework", default=None, choices=("torch", "keras", "tensorflow", "jax"),
                   help="framework of the snippet and of --verify (default: the log's, else torch)")
    p.add_argument("--seeds", type=int_list("0,1"), default=[0], help="comma-separated seeds for --verify (default: 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    return p


def _fail(command: str, exc: Exception) -> int:
    message = " ".join(str(exc).split())  # one line, whatever the message held
    print(f"gradclip {command}: {message}", file=sys.stderr)
    return EXIT_USAGE


def _show_warnings(command: str, caught: list[warnings.WarningMessage]) -> None:
    """Each distinct warning once, on one line (a run is read more than once: table, plots, advisor)."""
    for message in dict.fromkeys(" ".join(str(w.message).split()) for w in caught):
        print(f"gradclip {command}: warning: {message}", file=sys.stderr)


def run_report(args: argparse.Namespace) -> int:
    """Write the report; print its path. Exit status 0, or 2 on a bad log."""
    from gradclip.report._html import build_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            path = build_report(args.logs, args.output, title=args.title)
        except GradclipError as exc:
            return _fail("report", exc)
    _show_warnings("report", caught)
    print(f"report: {path}")
    return 0


def run_suggest(args: argparse.Namespace) -> int:
    """Print the advisor's table (or JSON). Exit status 0, or 2 on a bad log."""
    from gradclip.report._suggest import render_suggestion, suggest

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            advice = suggest(args.logs, verify=args.verify, framework=args.framework, seeds=args.seeds)
        except GradclipError as exc:
            return _fail("suggest", exc)
    _show_warnings("suggest", caught)
    print(render_suggestion(advice, as_json=args.json))
    return 0
