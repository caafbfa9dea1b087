"""``compare``: run every (method, seed) pair of a task and collect the results."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gradclip
from gradclip._errors import ConfigError
from gradclip._spec import parse_policy
from gradclip.experiments._tasks import get_task, with_optimizer

FRAMEWORKS = ("torch", "keras", "tensorflow", "jax")
DEFAULT_METHODS = ("none", "value:1.0", "norm:1.0")
DEFAULT_SEEDS = (0, 1, 2)

Progress = Callable[[int, int, str, int], None]
OnRun = Callable[[dict[str, Any], int, int], None]


class CompareInterrupted(KeyboardInterrupt):
    """Ctrl-C (``KeyboardInterrupt``) during :func:`compare`, carrying the runs that finished.

    It is a ``KeyboardInterrupt``, so code that does not look for it stops as before.

    Attributes:
        result: What :func:`compare` returns, holding only the finished runs, with
            ``"incomplete": True``.
        done: Runs finished.
        total: Runs planned.
    """

    def __init__(self, result: dict[str, Any], done: int, total: int) -> None:
        super().__init__(f"{done} of {total} runs finished")
        self.result = result
        self.done = done
        self.total = total


def compare(
    task: str = "regression",
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    *,
    framework: str = "torch",
    log_dir: str | Path | None = None,
    progress: Progress | None = None,
    on_run: OnRun | None = None,
    nproc: int = 1,
    optimizer: str | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """Train the task once per (method, seed) and return the results as JSON-ready data.

    Args:
        task: Task name (``"regression"``, ``"digits-lstm"`` or ``"dp-digits"``).
        methods: Method spec strings; each is checked before any training starts. ``None``
            (default): the task's own list (``dp-digits``: ``nonprivate``, ``flat``, ``per-layer``,
            ``adaptive``, ``flat-ghost``), else :data:`DEFAULT_METHODS`. A DP task
            (``dp-digits``, torch only, one process) takes only those five names.
        seeds: Seeds; every method runs with each.
        framework: ``"torch"`` (``torch.optim.SGD`` + ``gradclip.torch.Clipper``), ``"keras"``
            (``gradclip.keras.clipped(SGD)`` with ``train_on_batch``, on the configured Keras
            backend), ``"tensorflow"`` (a ``GradientTape`` loop with ``gradclip.tensorflow.Clipper``)
            or ``"jax"`` (one jitted step of ``gradclip.jax.guard(optax.sgd(...), policy)``).
        log_dir: When given, a per-step JSONL log per run is written there as
            ``<task>__<method>__seed<seed>.jsonl``.
        progress: Called as ``progress(done, total, method, seed)`` before each run and once at the end.
        on_run: Called as ``on_run(run, done, total)`` as soon as a run finishes, with that run's
            entry of ``"runs"`` (for live output, or to save results as they come).
        nproc: Train each run with DistributedDataParallel over this many processes (gloo, CPU;
            torch only); the results are those of one process up to rounding. Default 1.
        optimizer: ``"sgd"`` (momentum 0), ``"momentum"`` (the task's momentum, else 0.9),
            ``"adam"``, ``"rmsprop"`` or ``"adagrad"`` (torch's update and hyper-parameters in
            every framework: :data:`gradclip.experiments._tasks.OPTIMIZERS`); ``None`` (default): the
            task's own, SGD with its momentum. ``dp-digits`` takes ``sgd`` and ``momentum`` only.
        lr: Learning rate; ``None`` (default): the task's for SGD, else the optimizer's default
            (Adam 1e-3, RMSprop 1e-2, Adagrad 1e-2: ``torch.optim``'s).

    Returns:
        ``{"task", "framework", "gradclip_version", "config", "incomplete", "runs": [...]}``; each
        run is :meth:`RunResult.to_json` plus ``"log"``, the path of its per-step log (or ``None``).
        ``"incomplete"`` is ``False`` here (see Raises).

    Raises:
        ConfigError: unknown task, framework, optimizer or method spec, or a learning rate that is
            not a positive number (nothing is trained then).
        CompareInterrupted: on Ctrl-C; its ``result`` holds the runs that finished, with
            ``"incomplete": True`` (the interrupted run is dropped).

    Example:
        >>> from gradclip.experiments import compare
        >>> out = compare("regression", ["norm:1.0"], [0])
        >>> out["runs"][0]["diverged"]
        False
        >>> out = compare("regression", ["none"], [0], optimizer="adam", lr=0.05)
        >>> out["config"]["optimizer"], out["config"]["lr"], out["runs"][0]["outcome"]
        ('adam', 0.05, 'ok')
    """
    spec = with_optimizer(get_task(task), optimizer, lr)
    if framework not in FRAMEWORKS:
        raise ConfigError(f"Unknown framework {framework!r}. Valid frameworks: {', '.join(FRAMEWORKS)}.")
    if methods is None:
        methods = spec.methods or DEFAULT_METHODS
    if not methods:
        raise ConfigError("No method given. Pass at least one, for example 'none,norm:1.0'.")
    runner = _dp_runner(spec, methods, framework, nproc) if spec.privacy is not None else None
    for m in methods if runner is None else ():
        parse_policy(m)
    runner = runner or _runner(framework)
    if nproc != 1:  # DDP: a pool of processes with the runner's interface
        from gradclip.experiments._ddp import Pool

        runner = Pool(nproc, framework)
    header = {"task": task, "framework": framework, "gradclip_version": gradclip.__version__,
              "config": spec.config() if nproc == 1 else {**spec.config(), "nproc": nproc, "ddp_backend": "gloo"}}
    if framework == "keras":
        import keras

        header["keras_backend"] = keras.backend.backend()
    pairs = [(method, seed) for method in methods for seed in seeds]
    runs: list[dict[str, Any]] = []
    try:
        data = spec.load()
        for method, seed in pairs:
            if progress:
                progress(len(runs), len(pairs), method, seed)
            log = _log_path(log_dir, task, method, seed) if log_dir is not None else None
            runs.append({**runner.run(spec, method, seed, data, log).to_json(), "log": log and str(log)})
            if on_run:
                on_run(runs[-1], len(runs), len(pairs))
    except KeyboardInterrupt:
        raise CompareInterrupted({**header, "incomplete": True, "runs": runs}, len(runs), len(pairs)) from None
    finally:
        if nproc != 1:
            runner.close()
    if progress:
        progress(len(pairs), len(pairs), "", -1)
    return {**header, "incomplete": False, "runs": runs}


def _runner(framework: str) -> Any:
    """The runner module of a framework, with a clear error when the framework is not installed."""
    import importlib

    packages = {"torch": ("torch",), "keras": ("keras",), "tensorflow": ("tensorflow",), "jax": ("jax", "optax")}
    for package in packages[framework]:
        try:
            importlib.import_module(package)
        except ImportError as e:
            raise ConfigError(f"--framework {framework} needs {package}, which is not installed ({e}). "
                              f"Install it with: pip install 'gradclip[{framework}]'.") from None
    return importlib.import_module(f"gradclip.experiments._{framework}")


def _dp_runner(spec: Any, methods: Sequence[str], framework: str, nproc: int) -> Any:
    """The DP runner, after checking its methods and that it runs on torch in one process."""
    if framework != "torch" or nproc != 1:
        raise ConfigError(f"Task {spec.name} trains with PyTorch in one process (--framework torch, --nproc 1). "
                          f"Received: --framework {framework} --nproc {nproc}.")
    _runner("torch")
    try:
        import opacus  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"Task {spec.name} needs opacus, which is not installed ({e}). "
                          "Install it with: pip install 'gradclip[privacy]'.") from None
    from gradclip.experiments import _dp

    for m in methods:
        _dp.check_method(spec, m)
    return _dp


def _log_path(log_dir: str | Path, task: str, method: str, seed: int) -> Path:
    folder = Path(log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", method)
    return folder / f"{task}__{slug}__seed{seed}.jsonl"
