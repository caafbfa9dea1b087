"""The ``gradclip`` command: a thin shell over functions that return data.

    gradclip compare [--task regression] [--method none,value:1.0,norm:1.0] [--seeds 0,1,2]
                     [--json PATH] [--log-dir DIR] [--nproc N]
    gradclip bench [--quick] [--threads 1,2] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence

from gradclip import __version__
from gradclip._errors import ConfigError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradclip",
        description="Gradient clipping and gradient-health tools for PyTorch, TensorFlow/Keras and JAX.",
    )
    parser.add_argument("--version", action="version", version=f"gradclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from gradclip.experiments import DEFAULT_METHODS, DEFAULT_SEEDS, TASKS

    tasks = "; ".join(f"{t.name}: {t.description}" for t in TASKS.values())
    cmp = sub.add_parser(
        "compare",
        help="train a small model with and without clipping and compare (the before/after experiment)",
        description=(
            "Train one task with each clipping method and seed, and print a table: final loss, "
            "whether training diverged (NaN/Inf) and when, the largest gradient norm, how often "
            "clipping acted. Data comes from installed packages; nothing is downloaded."
        ),
    )
    cmp.add_argument("--task", default="regression", help=f"task to run (default: regression). {tasks}")
    cmp.add_argument(
        "--method", default=",".join(DEFAULT_METHODS),
        help=("comma-separated method specs (default: %(default)s). A spec is name[:arg,key=value...]: "
              "none, value:1.0, value:min=-1,max=0.5, norm:1.0, norm:1.0,norm_type=inf, pertensor:1.0. "
              "Separate methods with ';' when a spec itself has commas."),
    )
    cmp.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="comma-separated seeds (default: %(default)s)")
    cmp.add_argument("--framework", default="torch", help="framework to train with: torch (default), keras or tensorflow")
    cmp.add_argument("--nproc", type=int, default=1, metavar="N",
                     help=("train each run with DistributedDataParallel over N processes (gloo backend, CPU; "
                           "torch only). Same numbers as one process, up to rounding (default: 1)"))
    cmp.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    cmp.add_argument("--log-dir", metavar="DIR",
                     help="write a per-step JSONL log of each run into DIR (default with --json: logs/ beside it)")
    cmp.add_argument("--report", metavar="PATH",
                     help="write the HTML comparison report to PATH (default with --json: report.html beside it)")
    cmp.add_argument("--no-report", action="store_true", help="do not write the HTML comparison report")
    cmp.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                     help="no progress bar (it is drawn only when stderr is a terminal)")
    from gradclip.report._cli import add_report_parser, add_suggest_parser

    add_report_parser(sub)
    add_suggest_parser(sub)
    from gradclip.bench import add_arguments as add_bench_arguments

    add_bench_arguments(sub.add_parser(
        "bench", help="time gradclip against torch.nn.utils and the memory floor (table + JSON)",
        description=("Time clipping (when it clips and when it does not), norms, value clipping, every "
                     "adaptive policy, the Monitor and a clip + AdamW step, gradclip next to torch.nn.utils "
                     "and next to the memory floor measured in the same run. Interleaved repetitions, "
                     "medians, 1 and 2 threads. See BENCHMARKS.md."),
    ))
    return parser


def split_methods(text: str) -> list[str]:
    """Split the ``--method`` list: on ``;`` if present, else on commas that start a new method.

    ``"none,norm:1.0,norm_type=inf,value:1"`` gives ``["none", "norm:1.0,norm_type=inf", "value:1"]``:
    a comma followed by ``key=`` continues the previous spec.
    """
    if ";" in text:
        return [m.strip() for m in text.split(";") if m.strip()]
    methods: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        head = part.split("=", 1)[0]
        if methods and "=" in part and ":" not in head:
            methods[-1] += "," + part
        else:
            methods.append(part)
    return methods


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds takes comma-separated integers such as 0,1,2. Received: {text!r}.") from None


def progress_line(done: int, total: int, method: str, seed: int, width: int = 24) -> str:
    """One frame of the progress bar: ``[#####.....] 3/9 norm:1.0 seed 0``."""
    filled = width * done // max(total, 1)
    label = f"{method} seed {seed}" if seed >= 0 else "done"
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"


def _progress(done: int, total: int, method: str, seed: int) -> None:
    """Redraw the bar in place on stderr (only used when stderr is a terminal)."""
    end = "\n" if done == total else ""
    sys.stderr.write(f"\r{progress_line(done, total, method, seed):<72}{end}")
    sys.stderr.flush()


def _compare(args: argparse.Namespace) -> int:
    from gradclip._render import compare_table
    from gradclip.experiments import compare
    from gradclip.experiments._results import write_json

    beside = Path(args.json).parent if args.json else None
    log_dir = args.log_dir or (beside / "logs" if beside is not None else None)
    report = None if args.no_report else (args.report or (beside / "report.html" if beside is not None else None))
    if report is not None and log_dir is None:
        log_dir = Path(report).parent / "logs"
    result = compare(
        args.task, split_methods(args.method), _seeds(args.seeds), framework=args.framework,
        log_dir=log_dir, progress=None if args.quiet or not sys.stderr.isatty() else _progress,
        nproc=args.nproc,
    )
    print(compare_table(result))
    if args.json:
        print(f"\nresults: {write_json(args.json, result)}")
    if log_dir is not None:
        print(f"per-step logs: {log_dir}/")
    if report is not None:
        from gradclip.report import build_report

        path = build_report([r["log"] for r in result["runs"]], report, title=f"gradclip compare: {args.task}")
        print(f"comparison report: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradclip`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "bench":
            from gradclip.bench import run_and_print

            return run_and_print(args)
        if args.command in ("report", "suggest"):
            from gradclip.report._cli import run_report, run_suggest

            return run_report(args) if args.command == "report" else run_suggest(args)
        return _compare(args)
    except ConfigError as exc:
        print(f"gradclip {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
