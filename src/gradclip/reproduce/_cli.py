"""The ``gradclip reproduce`` subcommand: parse, run, print the verdict table."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from gradclip._errors import ConfigError
from gradclip.reproduce._registry import REPRODUCTIONS


def listing() -> str:
    """One line per reproduction: its name and what it shows."""
    width = max(map(len, REPRODUCTIONS)) + 2
    return "\n".join(textwrap.fill(e.summary, 100, initial_indent=f"  {e.name:<{width}}",
                                   subsequent_indent=" " * (width + 2)) for e in REPRODUCTIONS.values())


def add_reproduce_parser(sub: Any) -> None:
    """Add ``reproduce`` to the ``gradclip`` subcommands."""
    cmd = sub.add_parser(
        "reproduce", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="rerun a classic result of gradient clipping (a paper's or a tutorial's), with plots and a verdict",
        description=("Run one reproduction and print its verdict table. Writes results.json (the numbers), the "
                     "per-step logs, PNG plots and report.html into --out. The verdict (reproduced, partly, not "
                     "reproduced) is computed from the numbers. Data comes from installed packages."),
        epilog=f"reproductions:\n{listing()}\n\nexamples:\n  gradclip reproduce --list\n"
               "  gradclip reproduce zhang-toy --quick\n  gradclip reproduce mnist-lstm --out runs/mnist",
    )
    cmd.add_argument("name", nargs="?", help="the reproduction to run (see --list)")
    cmd.add_argument("--list", action="store_true", help="describe each reproduction in one line and exit")
    cmd.add_argument("--quick", action="store_true", help="the reduced setting (seconds to a minute; what the tests run)")
    cmd.add_argument("--out", metavar="DIR", help="output folder (default: runs/reproduce/NAME, NAME-quick with --quick)")
    cmd.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def run_reproduce(args: argparse.Namespace) -> int:
    """Run ``gradclip reproduce`` with parsed ``args``; returns the exit status."""
    from gradclip.reproduce import reproduce, table

    if args.list:
        print(listing())
        return 0
    if not args.name:
        raise ConfigError("Name a reproduction, for example 'gradclip reproduce zhang-toy --quick'. "
                          f"Valid: {', '.join(REPRODUCTIONS)}.")
    say = None if args.quiet else (lambda line: print(f"[{args.name}] {line}", file=sys.stderr, flush=True))
    result = reproduce(args.name, quick=args.quick, out=args.out, say=say)
    print(table(result), flush=True)
    out = args.out or f"runs/reproduce/{args.name}{'-quick' if args.quick else ''}"
    print(f"\nresults: {out}/results.json\nreport: {out}/report.html\ntime: {result.seconds:.1f} s")
    return 0
