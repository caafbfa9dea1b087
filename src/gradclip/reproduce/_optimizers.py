"""``gradclip reproduce optimizers``: does an adaptive optimizer still need gradient clipping?

The claim, from the tutorials on clipping: adaptive optimizers (Adam, RMSprop, Adagrad) divide
each step by a running root-mean-square of the gradient, so a sudden large gradient moves the
weights by about ``lr`` rather than ``lr * |g|``; they lessen the need for clipping, which plain
SGD at an aggressive learning rate needs to train at all.

The setting: the two ``gradclip compare`` tasks, trained with PyTorch, each optimizer of
:data:`gradclip.experiments._tasks.OPTIMIZERS` (torch's update and hyper-parameters) at its default
learning rate on the task (``gradclip compare --help``: SGD at the task's aggressive lr, 0.07 on
``regression`` and 10 on ``digits-lstm``), without clipping (``none``) and with ``norm:1.0``, over
seeds. On ``regression`` (cheap) every optimizer is also swept over the learning rates 1e-3, 1e-2,
0.1 and 1 (and the task's 0.07 for SGD), so that no optimizer is judged at one lucky or unlucky rate.

The verdict, computed from the numbers, answers the two questions apart: does an adaptive optimizer
*need* clipping where SGD does (the claim), and does clipping still *help* it (reported, not judged).
An optimizer's *outcomes* on a task are its counts of ok/stalled/exploded/diverged runs
(:mod:`gradclip._outcome`); its *quality* the mean test accuracy (``digits-lstm``) or the mean final
training loss of its ok runs (``regression``).

1. Clipping is *needed* by an optimizer on a task when, at its default lr, ``norm:1.0`` has more ok
   runs than ``none``, or (classification, where a failing run still ends) raises the mean test
   accuracy by more than 0.03. A task counts only if SGD or momentum needs clipping there (otherwise
   it says nothing about lessening the need, and it is reported as uninformative).
2. On ``regression``'s sweep an optimizer is *stable alone* when no unclipped run diverged or
   exploded at any learning rate.
3. An adaptive optimizer *agrees* with the claim when it needs no clipping on every informative task
   and (where swept) is stable alone. ``reproduced``: every adaptive optimizer agrees; ``partly``:
   some do; ``not reproduced``: none does, or no task is informative.

Clipping *helps* (table column) when it is needed or lowers the mean final loss of the ok runs more
than twofold; the sweep plot shows the same at every learning rate.

Full: ``regression`` with seeds 0, 1, 2 at the default learning rates and seeds 0, 1 at the other
rates of the sweep; ``digits-lstm`` with seeds 0, 1 (its runs cost 20 times more). ``quick``:
``regression`` only, seed 0, no sweep (10 runs).

References:
    Pascanu, Mikolov & Bengio 2013, "On the difficulty of training recurrent neural networks",
    arXiv:1211.5063 (norm clipping, Algorithm 1).
    Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", arXiv:1412.6980 (Sec. 2.1: the
    effective step is bounded by about the step size, invariant to the gradient's scale).
    Zhang, He, Sra & Jadbabaie 2020, "Why gradient clipping accelerates training: a theoretical
    justification for adaptivity", arXiv:1905.11881 (Sec. 5: clipping and adaptive step sizes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from gradclip._outcome import count_text
from gradclip.experiments._tasks import OPTIMIZERS, get_task, with_optimizer
from gradclip.reproduce._plot import figure, save
from gradclip.reproduce._result import Reproduction

CLAIM = ("Adaptive optimizers (Adam, RMSprop, Adagrad) lessen the need for gradient clipping: where plain SGD "
         "at an aggressive learning rate needs clipping, they train without it (tutorials on clipping; Kingma & "
         "Ba 2015, arXiv:1412.6980, Sec. 2.1: Adam's step is bounded by about its step size).")
METHODS = ("none", "norm:1.0")
ADAPTIVE = ("adam", "rmsprop", "adagrad")
SWEEP = (1e-3, 1e-2, 0.1, 1.0)
ACCURACY_MARGIN = 0.03
LOSS_FACTOR = 2.0
FULL = {"tasks": ("regression", "digits-lstm"), "seeds": {"regression": (0, 1, 2), "digits-lstm": (0, 1)},
        "sweep_seeds": (0, 1), "optimizers": tuple(OPTIMIZERS), "sweep": ("regression",), "epochs": {}}
QUICK = {"tasks": ("regression",), "seeds": {"regression": (0,)}, "sweep_seeds": (), "optimizers": tuple(OPTIMIZERS),
         "sweep": (), "epochs": {}}


def run(quick: bool, out: Path, say: Callable[[str], None]) -> Reproduction:
    """Train every (task, optimizer, lr, method, seed) of the setting and judge the claim (see the module)."""
    from gradclip.experiments import _torch

    setting = QUICK if quick else FULL
    logs_dir = out / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    logs: list[Path] = []
    for name in setting["tasks"]:
        base = get_task(name)
        if name in setting["epochs"]:
            base = replace(base, epochs=setting["epochs"][name])
        data = base.load()
        for opt in setting["optimizers"]:
            default = with_optimizer(base, opt).lr
            rates = [default]
            if name in setting["sweep"]:
                rates = sorted({default, *SWEEP})
            for lr in rates:
                task = with_optimizer(base, opt, lr)
                for method in METHODS:
                    for seed in setting["seeds"][name] if lr == default else setting["sweep_seeds"]:
                        log = None
                        if lr == default:
                            log = logs_dir / f"{name}__{opt}__{method.replace(':', '_')}__seed{seed}.jsonl"
                            logs.append(log)
                        result = _torch.run(task, method, seed, data, log).to_json()
                        runs.append({"task": name, "optimizer": opt, "lr": lr, "default_lr": lr == default, **result})
                        say(f"{name} {opt} lr {lr:g} {method} seed {seed}: {result['outcome']}"
                            + (f", final loss {result['final_loss']:.4g}" if result["final_loss"] is not None else "")
                            + (f", test acc {result['test_accuracy']:.3f}" if result["test_accuracy"] is not None else ""))
    judged = judge(runs, setting)
    plots = [_plot_quality(runs, setting, out), _plot_curves(logs, setting, out)]
    if setting["sweep"]:
        plots.append(_plot_sweep(runs, out))
    config = {"framework": "torch", "methods": list(METHODS), "tasks": list(setting["tasks"]),
              "seeds": {k: list(v) for k, v in setting["seeds"].items()}, "sweep_seeds": list(setting["sweep_seeds"]),
              "epochs": {t: setting["epochs"].get(t, get_task(t).epochs) for t in setting["tasks"]},
              "optimizers": list(setting["optimizers"]),
              "sweep_lrs": list(SWEEP) if setting["sweep"] else [],
              "default_lrs": {t: {o: with_optimizer(get_task(t), o).lr for o in setting["optimizers"]}
                              for t in setting["tasks"]},
              "optimizer_params": {o: OPTIMIZERS[o].params for o in setting["optimizers"]},
              "task_configs": {t: get_task(t).config() for t in setting["tasks"]},
              "rule": {"accuracy_margin": ACCURACY_MARGIN, "loss_factor": LOSS_FACTOR}}
    return Reproduction(name="optimizers", claim=CLAIM, verdict=judged["verdict"], reason=judged["reason"],
                        columns=["task", "optimizer", "lr", "clipping", "outcomes", "final loss", "test acc",
                                 "clipped frac", "needs clipping", "clipping helps"],
                        rows=judged["rows"], numbers={"runs": runs, "summary": judged["summary"]},
                        config=config, plots=plots, logs=logs)


def _group(runs: list[dict[str, Any]], task: str, opt: str, method: str, lr: float | None = None) -> list[dict]:
    return [r for r in runs if r["task"] == task and r["optimizer"] == opt and r["method"] == method
            and (r["default_lr"] if lr is None else r["lr"] == lr)]


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _quality(group: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in group if r["outcome"] == "ok"]
    return {"outcomes": count_text(r["outcome"] for r in group), "ok": len(ok), "runs": len(group),
            "final_loss": _mean([r["final_loss"] for r in ok]),
            "test_accuracy": _mean([r["test_accuracy"] for r in group]),
            "clipped_fraction": _mean([r["clipped_fraction"] for r in group]),
            "failed": sum(r["outcome"] in ("diverged", "exploded") for r in group)}


def needs_clipping(unclipped: dict[str, Any], clipped: dict[str, Any]) -> bool:
    """Rule 1 of the module: with clipping, more ok runs or (classification) +0.03 mean test accuracy.

    Example:
        >>> needs_clipping({"ok": 0, "test_accuracy": None}, {"ok": 3, "test_accuracy": None})
        True
        >>> needs_clipping({"ok": 2, "test_accuracy": 0.95}, {"ok": 2, "test_accuracy": 0.96})
        False
    """
    if clipped["ok"] > unclipped["ok"]:
        return True
    a, b = unclipped["test_accuracy"], clipped["test_accuracy"]
    return a is not None and b is not None and b - a > ACCURACY_MARGIN


def clipping_helps(unclipped: dict[str, Any], clipped: dict[str, Any]) -> bool:
    """Clipping is needed, or lowers the mean final loss of the ok runs more than twofold.

    Example:
        >>> clipping_helps({"ok": 1, "test_accuracy": None, "final_loss": 79.2},
        ...                {"ok": 1, "test_accuracy": None, "final_loss": 4.7})
        True
    """
    a, b = unclipped.get("final_loss"), clipped.get("final_loss")
    return needs_clipping(unclipped, clipped) or (a is not None and b is not None and a > LOSS_FACTOR * b)


def judge(runs: list[dict[str, Any]], setting: dict[str, Any]) -> dict[str, Any]:
    """The verdict table, the per-(task, optimizer) summary and the verdict with its reason."""
    rows, summary = [], {}
    for task in setting["tasks"]:
        for opt in setting["optimizers"]:
            q = {m: _quality(_group(runs, task, opt, m)) for m in METHODS}
            need, helps = needs_clipping(q["none"], q["norm:1.0"]), clipping_helps(q["none"], q["norm:1.0"])
            lr = _group(runs, task, opt, "none")[0]["lr"]
            summary[f"{task}/{opt}"] = {"lr": lr, "needs_clipping": need, "clipping_helps": helps,
                                        **{m: q[m] for m in METHODS}}
            for m in METHODS:
                flags = [("yes" if f else "no") if m == "none" else "" for f in (need, helps)]
                rows.append([task, opt, lr, m, q[m]["outcomes"], q[m]["final_loss"], q[m]["test_accuracy"],
                             q[m]["clipped_fraction"], *flags])
    sweep = {}
    for task in setting["sweep"]:
        for opt in setting["optimizers"]:
            rates = sorted({r["lr"] for r in runs if r["task"] == task and r["optimizer"] == opt})
            per = {lr: {m: _quality(_group(runs, task, opt, m, lr)) for m in METHODS} for lr in rates}
            sweep[f"{task}/{opt}"] = {
                "lrs": rates, "failing_unclipped": [lr for lr in rates if per[lr]["none"]["failed"]],
                "failing_clipped": [lr for lr in rates if per[lr]["norm:1.0"]["failed"]],
                "final_loss": {str(lr): {m: per[lr][m]["final_loss"] for m in METHODS} for lr in rates}}
    informative = [t for t in setting["tasks"] if summary[f"{t}/sgd"]["needs_clipping"]
                   or summary.get(f"{t}/momentum", {}).get("needs_clipping", False)]
    agree = {}
    for opt in (o for o in ADAPTIVE if o in setting["optimizers"]):
        alone = all(not summary[f"{t}/{opt}"]["needs_clipping"] for t in informative)
        stable = all(not sweep[f"{t}/{opt}"]["failing_unclipped"] for t in setting["sweep"])
        agree[opt] = bool(informative) and alone and stable
    n = sum(agree.values())
    verdict = "reproduced" if agree and n == len(agree) else "partly" if n else "not reproduced"
    sgd_fail = {k: v["failing_unclipped"] for k, v in sweep.items() if k.split("/")[1] in ("sgd", "momentum")}
    helped = [f"{k.split('/')[1]} on {k.split('/')[0]}" for k, v in summary.items()
              if k.split("/")[1] in ADAPTIVE and v["clipping_helps"]]
    reason = (f"informative tasks (SGD or momentum needs clipping): {', '.join(informative) or 'none'}; adaptive "
              f"optimizers that need no clipping there{' and never diverge unclipped on the lr sweep' if setting['sweep'] else ''}: "
              f"{', '.join(o for o, a in agree.items() if a) or 'none'} ({n} of {len(agree)})"
              + "".join(f"; unclipped {k.split('/')[1]} fails on the sweep at lr {', '.join(f'{x:g}' for x in v)}"
                        for k, v in sgd_fail.items() if v)
              + f"; clipping still helps {', '.join(helped) or 'none of them'}.")
    summary["sweep"] = sweep
    summary["informative_tasks"] = informative
    summary["agree"] = agree
    return {"rows": rows, "summary": summary, "verdict": verdict, "reason": reason}


COLORS = {"sgd": "#1f77b4", "momentum": "#17becf", "adam": "#d62728", "rmsprop": "#ff7f0e", "adagrad": "#2ca02c"}


def _plot_quality(runs: list[dict[str, Any]], setting: dict[str, Any], out: Path) -> Path:
    """Per task: each run's final loss (regression) or test accuracy by optimizer, none vs norm:1.0."""
    tasks = setting["tasks"]
    fig, axes = figure(4.8 * len(tasks), 3.6, 1, len(tasks))
    axes = [axes] if len(tasks) == 1 else list(axes)
    for ax, task in zip(axes, tasks):
        accuracy = get_task(task).loss == "cross_entropy"
        for i, opt in enumerate(setting["optimizers"]):
            for j, method in enumerate(METHODS):
                x = i + (j - 0.5) * 0.35
                for r in _group(runs, task, opt, method):
                    value = r["test_accuracy"] if accuracy else r["final_loss"]
                    bad = r["outcome"] in ("diverged", "exploded")
                    if value is None or (not accuracy and bad):
                        ax.scatter([x], [0.02 if accuracy else 1e6], marker="x", color="black", zorder=3)
                        continue
                    ax.scatter([x], [value], marker="o" if method == "none" else "s", color=COLORS[opt],
                               facecolors="none" if method == "none" else COLORS[opt], zorder=3)
        ax.set_xticks(range(len(setting["optimizers"])))
        ax.set_xticklabels(setting["optimizers"], fontsize=8)
        if not accuracy:
            ax.set_yscale("log")
        ax.set_ylabel("test accuracy" if accuracy else "final training loss (x: diverged)")
        ax.set_title(f"{task}: open = no clipping, filled = norm:1.0", fontsize=9)
        ax.grid(alpha=0.3)
    return save(fig, out, "optimizers-quality")


def _plot_curves(logs: list[Path], setting: dict[str, Any], out: Path) -> Path:
    """Mean batch loss per epoch, seed 0 of each optimizer at its default lr, none vs norm:1.0 (x: diverged)."""
    tasks = setting["tasks"]
    fig, axes = figure(4.8 * len(tasks), 3.6, 1, len(tasks))
    axes = [axes] if len(tasks) == 1 else list(axes)
    for ax, task in zip(axes, tasks):
        seed = setting["seeds"][task][0]
        for opt in setting["optimizers"]:
            for method in METHODS:
                path = out / "logs" / f"{task}__{opt}__{method.replace(':', '_')}__seed{seed}.jsonl"
                if path not in logs:
                    continue
                epochs: dict[int, list[float]] = {}
                outcome = "ok"
                for line in path.read_text().splitlines():
                    r = json.loads(line)
                    if "step" in r and r.get("loss") is not None:
                        epochs.setdefault(r["epoch"], []).append(r["loss"])
                    outcome = r.get("outcome", outcome)
                if epochs:
                    xs = sorted(epochs)
                    ys = [sum(epochs[e]) / len(epochs[e]) for e in xs]
                    ax.plot(xs, ys, color=COLORS[opt], lw=1.0, ls="-" if method == "none" else "--",
                            label=f"{opt} {method}")
                    if outcome in ("diverged", "exploded"):  # where it stopped
                        ax.scatter(xs[-1:], ys[-1:], marker="x", color=COLORS[opt], zorder=3)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean batch loss of the epoch")
        ax.set_title(f"{task}, seed {seed}: solid = no clipping, dashed = norm:1.0", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=5, loc="upper left", bbox_to_anchor=(0.0, -0.16))
    return save(fig, out, "optimizers-curves")


def _plot_sweep(runs: list[dict[str, Any]], out: Path) -> Path:
    """regression: mean final loss against the learning rate per optimizer; x where a run diverged."""
    fig, ax = figure(6.4, 4.0)
    for k, (opt, color) in enumerate(COLORS.items()):
        for method in METHODS:
            rates = sorted({r["lr"] for r in runs if r["task"] == "regression" and r["optimizer"] == opt})
            xs, ys = [], []
            for lr in rates:
                q = _quality(_group(runs, "regression", opt, method, lr))
                if q["failed"]:  # side by side, not on top of each other
                    ax.scatter([lr * 1.12 ** (k - 2)], [1e6 * (1.0 if method == "none" else 2.0)], marker="x",
                               color=color)
                if q["final_loss"] is not None:
                    xs.append(lr)
                    ys.append(q["final_loss"])
            ax.plot(xs, ys, color=color, marker="o" if method == "none" else "s", ms=3,
                    ls="-" if method == "none" else "--", label=f"{opt} {method}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("mean final loss of the ok runs (x: a run diverged)")
    ax.set_title("regression: solid = no clipping, dashed = norm:1.0", fontsize=9)
    ax.legend(fontsize=6, ncol=5, loc="upper left", bbox_to_anchor=(0.0, -0.14))
    ax.grid(alpha=0.3)
    return save(fig, out, "optimizers-sweep")

