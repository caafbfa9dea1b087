"""The ``gradclip`` command: a thin shell over functions that return data.

    gradclip compare [--task regression] [--method none,value:1.0,norm:1.0] [--seeds 0,1,2]
                     [--optimizer sgd|momentum|adam|rmsprop|adagrad] [--lr LR]
                     [--json PATH] [--log-dir DIR] [--nproc N]
    gradclip report LOG [LOG ...] [-o report.html]
    gradclip suggest LOG [LOG ...] [--json]
    gradclip bench [--quick] [--threads 1,2] [--json PATH]
    gradclip reproduce NAME [--quick] [--out DIR] | --list

:func:`main` is the one error boundary: a user's mistake (a :class:`GradclipError`, an
``OSError`` on a path, a bad option) becomes one line on stderr, ``gradclip <command>: <message>``,
and exit status 2; Ctrl-C becomes one line and exit status 130. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradclip import __version__
from gradclip._argtypes import int_list, positive_int
from gradclip._errors import ConfigError, GradclipError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a process stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader of stdout went away (``gradclip ... | head``)

#: Options that name a file to write, per command: checked before any work starts.
OUTPUT_FILES = {"compare": ("json", "report"), "report": ("output",), "bench": ("json", "markdown")}


class UsageError(Exception):
    """A bad command line (unknown option, a value of the wrong type); ``prog`` is the (sub)command."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``main`` prints them), not usage + exit."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(self.prog, f"{message}. See '{self.prog} --help'.")


def method_examples() -> list[tuple[str, str, str]]:
    """``(name, example spec, one-line summary)`` of every registered method, sorted by name."""
    from gradclip._policies import registry

    out = []
    for name, cls in sorted(registry().items()):
        try:
            example = cls().spec()
        except GradclipError:  # no default threshold (value): show the positional form
            example = f"{name}:1.0"
        summary = (cls.__doc__ or "").strip().splitlines()[0].replace("``", "")
        out.append((name, example, summary))
    return out


def _optimizer_line(opt: Any) -> str:
    """``--help`` text of one optimizer: its update, hyper-parameters and default lr per task."""
    from gradclip.experiments import TASKS
    from gradclip.experiments._tasks import with_optimizer

    params = ", ".join(f"{k} {v:g}" for k, v in opt.params.items())
    lrs = ", ".join(f"{t.name} {with_optimizer(t, opt.name).lr:g}" for t in TASKS.values() if t.privacy is None)
    return f"{opt.update}{f'; {params}' if params else ''}. Default lr: {lrs}"


def _compare_epilog() -> str:
    from gradclip.experiments import TASKS
    from gradclip.experiments._tasks import OPTIMIZERS

    def block(rows: list[tuple[str, str]]) -> str:
        width = max(len(key) for key, _ in rows) + 2
        return "\n".join(textwrap.fill(text, 100, initial_indent=f"  {key:<{width}}",
                                       subsequent_indent=" " * (width + 2)) for key, text in rows)

    methods = block([(example, summary) for _, example, summary in method_examples()])
    tasks = block([(t.name, t.description) for t in TASKS.values()])
    optimizers = block([(o.name, _optimizer_line(o)) for o in OPTIMIZERS.values()])
    return (
        "methods (a spec is name[:arg,key=value...]; the first value sets the main parameter;\n"
        "join specs with + to chain them, e.g. spikeguard+norm:1.0; a bad key lists the valid ones):\n"
        f"{methods}\n\ntasks (--task):\n{tasks}\n\n"
        "optimizers (--optimizer; torch's update and hyper-parameters in every framework; default lr\n"
        f"per task where --lr is not given):\n{optimizers}\n\n"
        "dp-digits methods (DP-SGD, torch): nonprivate (plain SGD), flat (per-example clipping to C + noise),\n"
        "  per-layer (C/sqrt(P) per parameter), adaptive (C follows the median norm), flat-ghost (flat, ghost norms)\n\n"
        "examples:\n"
        "  gradclip compare --method none,norm:1.0 --seeds 0\n"
        "  gradclip compare --task digits-lstm --method \"none,norm:1.0,zclip,autoclip:p=10\" --json runs/out.json\n"
        "  gradclip compare --task dp-digits --seeds 0,1 --json runs/dp.json   # accuracy and epsilon per method\n"
        "  gradclip compare --optimizer adam --method none,norm:1.0   # does Adam still need clipping?\n"
        "  gradclip compare --task digits-lstm --optimizer rmsprop --lr 0.001 --framework keras\n"
        "  gradclip compare --method \"value:min=-1,max=0.5;norm:1.0,norm_type=inf\"   # ';' when a spec has commas\n"
        "\nWithout a terminal, one line per finished run is printed to stderr as it finishes. Ctrl-C stops\n"
        "after writing the table, the JSON and the report of the runs that finished, marked incomplete."
    )


_TOP_EPILOG = """\
examples:
  gradclip compare --method none,norm:1.0 --seeds 0   # does clipping help? table + report.html
  gradclip report runs/a/grads.jsonl -o report.html   # plots of a run's gradient norms
  gradclip suggest runs/a/grads.jsonl                 # which threshold, and why
  gradclip bench --quick                              # a short timing smoke run
  gradclip reproduce --list                           # classic results of clipping, one command each

'gradclip COMMAND --help' describes each command. Exit status: 0 ok, 2 bad input (one line on
stderr saying what was received and what is valid), 130 interrupted (Ctrl-C)."""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradclip", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_TOP_EPILOG,
        description="Gradient clipping and gradient-health tools for PyTorch, TensorFlow/Keras and JAX.",
    )
    parser.add_argument("--version", action="version", version=f"gradclip {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_compare_parser(sub)
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
    from gradclip.reproduce._cli import add_reproduce_parser

    add_reproduce_parser(sub)
    return parser


def _add_compare_parser(sub: Any) -> None:
    from gradclip.experiments import DEFAULT_METHODS, DEFAULT_SEEDS

    cmp = sub.add_parser(
        "compare", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_compare_epilog(),
        help="train a small model with and without clipping and compare (the before/after experiment)",
        description=(
            "Train one task with each clipping method and seed, and print a table: final loss on the "
            "training set, the run's outcome (diverged: a NaN/Inf loss or gradient; exploded: final loss "
            "> 10x the initial; stalled: final loss not below 0.5x the initial; ok), the largest gradient "
            "norm, how often clipping acted; then per method the outcomes and the mean final loss of the "
            "ok runs. Data comes from installed packages; nothing is downloaded."
        ),
    )
    cmp.add_argument("--task", default="regression", help="task to run (default: regression; see 'tasks' below)")
    cmp.add_argument("--method", default=None,
                     help=(f"comma-separated method specs (default: {','.join(DEFAULT_METHODS)}; for dp-digits: "
                           "nonprivate,flat,per-layer,adaptive,flat-ghost; see 'methods' below)"))
    cmp.add_argument("--seeds", type=int_list("0,1,2"), default=list(DEFAULT_SEEDS),
                     help=f"comma-separated seeds (default: {','.join(map(str, DEFAULT_SEEDS))})")
    cmp.add_argument("--framework", default="torch", help="framework to train with: torch (default), keras, tensorflow or jax")
    cmp.add_argument("--optimizer", default=None, metavar="NAME",
                     help=("sgd (momentum 0), momentum, adam, rmsprop or adagrad, the same update in every framework "
                           "(default: the task's own, SGD with its momentum; dp-digits: sgd or momentum only; see "
                           "'optimizers' below)"))
    cmp.add_argument("--lr", type=_learning_rate, default=None, metavar="LR",
                     help="learning rate, a positive number (default: the task's for its optimizer; see 'optimizers' below)")
    cmp.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                     help=("train each run with DistributedDataParallel over N processes (gloo backend, CPU; "
                           "torch only). Same numbers as one process, up to rounding (default: 1)"))
    cmp.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    cmp.add_argument("--log-dir", metavar="DIR",
                     help="write a per-step JSONL log of each run into DIR (default with --json: logs/ beside it)")
    cmp.add_argument("--report", metavar="PATH",
                     help="write the HTML comparison report to PATH (default with --json: report.html beside it)")
    cmp.add_argument("--no-report", action="store_true", help="do not write the HTML comparison report")
    cmp.add_argument("-q", "--quiet", "--no-progress", dest="quiet", action="store_true",
                     help="no progress on stderr (a bar on a terminal, else one line per finished run)")


def _learning_rate(text: str) -> float:
    """The argparse ``type`` of ``--lr``: a positive finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number such as 0.01. Received: {text!r}")
    return value


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


def progress_line(done: int, total: int, method: str, seed: int, width: int = 24) -> str:
    """One frame of the progress bar: ``[#####.....] 3/9 norm:1.0 seed 0``."""
    filled = width * done // max(total, 1)
    label = f"{method} seed {seed}" if seed >= 0 else "done"
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"


def run_line(run: dict[str, Any], done: int, total: int) -> str:
    """The line printed for a finished run without a terminal.

    ``[3/9] norm:1.0 seed 0: ok, final loss 0.713, 0.5 s``; a diverged run names its step.
    """
    from gradclip._outcome import run_outcome

    outcome = run_outcome(run)
    parts = [outcome + (f" at step {run['first_nonfinite_step']}" if outcome == "diverged"
                        and run.get("first_nonfinite_step") is not None else "")]
    if run.get("final_loss") is not None:
        parts.append(f"final loss {run['final_loss']:.4g}")
    if run.get("test_accuracy") is not None:
        parts.append(f"test acc {run['test_accuracy']:.3f}")
    parts.append(f"{run.get('seconds', 0.0):.1f} s")
    return f"[{done}/{total}] {run['method']} seed {run['seed']}: {', '.join(parts)}"


def _progress(done: int, total: int, method: str, seed: int) -> None:
    """Redraw the bar in place on stderr (only used when stderr is a terminal)."""
    end = "\n" if done == total else ""
    sys.stderr.write(f"\r{progress_line(done, total, method, seed):<72}{end}")
    sys.stderr.flush()


def _print_run(run: dict[str, Any], done: int, total: int) -> None:
    """One line per finished run on stderr, flushed (used when stderr is not a terminal)."""
    print(run_line(run, done, total), file=sys.stderr, flush=True)


def _compare(args: argparse.Namespace) -> int:
    from gradclip.experiments import CompareInterrupted, compare

    beside = Path(args.json).parent if args.json else None
    log_dir = args.log_dir or (beside / "logs" if beside is not None else None)
    report = None if args.no_report else (args.report or (beside / "report.html" if beside is not None else None))
    if report is not None and log_dir is None:
        log_dir = Path(report).parent / "logs"
    terminal = sys.stderr.isatty()
    try:
        result = compare(
            args.task, None if args.method is None else split_methods(args.method), args.seeds, framework=args.framework, log_dir=log_dir,
            progress=_progress if terminal and not args.quiet else None,
            on_run=_print_run if not terminal and not args.quiet else None, nproc=args.nproc,
            optimizer=args.optimizer, lr=args.lr,
        )
    except CompareInterrupted as stop:
        if terminal and not args.quiet:
            sys.stderr.write("\n")  # end the bar's line
        _write_compare(args, stop.result, log_dir, report, f"incomplete: interrupted after {stop}")
        raise
    _write_compare(args, result, log_dir, report)
    return 0


def _write_compare(args: argparse.Namespace, result: dict[str, Any], log_dir: Path | str | None,
                   report: Path | str | None, note: str = "") -> None:
    """Print the table (and ``note`` under it), write the JSON and the HTML report when asked."""
    from gradclip._render import compare_table
    from gradclip.experiments._results import write_json

    print(compare_table(result) + (f"\n{note}" if note else ""), flush=True)
    if args.json:
        print(f"\nresults: {write_json(args.json, result)}")
    if log_dir is not None:
        print(f"per-step logs: {log_dir}/")
    if report is not None and result["runs"]:
        from gradclip.report import build_report

        title = f"gradclip compare: {args.task}" + (" (incomplete)" if result.get("incomplete") else "")
        path = build_report([r["log"] for r in result["runs"]], report, title=title)
        print(f"comparison report: {path}")


def check_outputs(command: str, args: argparse.Namespace) -> None:
    """Refuse, before any work, an output file that is a directory or lies under a file.

    Raises:
        ConfigError: naming the option, the path and what to pass instead.
    """
    for dest in OUTPUT_FILES.get(command, ()):
        value = getattr(args, dest, None)
        if not isinstance(value, (str, Path)):
            continue
        path, flag = Path(value), "-o/--output" if dest == "output" else f"--{dest}"
        if path.is_dir() or str(value).endswith(("/", os.sep)):
            example = path / ("results.json" if dest == "json" else "report.html" if dest in ("report", "output")
                              else "bench.md")
            raise ConfigError(f"{flag} {value} is a directory; it takes a file path, such as {example}.")
        parent = next((p for p in path.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ConfigError(f"{flag} {value}: {parent} is a file, so nothing can be written under it. "
                              "Pass a path in a directory.")


def os_error_message(exc: OSError) -> str:
    """One line for an ``OSError`` on a path: the path, what went wrong, and what to do."""
    where = f"{exc.filename}: " if exc.filename is not None else ""
    what = (exc.strerror or str(exc)).rstrip(".")
    hints = {IsADirectoryError: "pass a file path instead", FileNotFoundError: "check the path",
             PermissionError: "check its permissions or pass another path",
             NotADirectoryError: "a part of the path is a file, not a directory"}
    hint = next((h for kind, h in hints.items() if isinstance(exc, kind)), "")
    return f"{where}{what.lower() if where else what}" + (f"; {hint}." if hint else ".")


def _run(args: argparse.Namespace) -> int:
    check_outputs(args.command, args)
    if args.command == "bench":
        from gradclip.bench import run_and_print

        return run_and_print(args)
    if args.command in ("report", "suggest"):
        from gradclip.report._cli import run_report, run_suggest

        return run_report(args) if args.command == "report" else run_suggest(args)
    if args.command == "reproduce":
        from gradclip.reproduce._cli import run_reproduce

        return run_reproduce(args)
    return _compare(args)


def _fail(prog: str, message: str, status: int) -> int:
    print(f"{prog}: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradclip`` command; returns the exit status.

    Exit status: 0 done, 2 a user's mistake (one line on stderr: ``gradclip <command>: <message>``),
    130 interrupted by Ctrl-C (one line on stderr), 141 stdout closed by its reader.
    """
    prog = "gradclip"
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        prog = f"gradclip {args.command}"
        return _run(args)
    except UsageError as exc:
        return _fail(exc.prog, str(exc), EXIT_USAGE)
    except KeyboardInterrupt as exc:
        return _fail(prog, f"interrupted{f' ({exc})' if str(exc) else ''}", EXIT_INTERRUPTED)
    except GradclipError as exc:
        return _fail(prog, str(exc), EXIT_USAGE)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        return _fail(prog, os_error_message(exc), EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
