"""The reproductions ``gradclip reproduce`` knows, by name, each in its own private module."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gradclip._errors import ConfigError
from gradclip.reproduce._result import Reproduction

#: ``run(quick, out, say) -> Reproduction``; ``say`` prints one progress line.
Runner = Callable[[bool, Path, Callable[[str], None]], Reproduction]


@dataclass(frozen=True)
class Entry:
    """One reproduction: its name, one line for ``--list``, and the module that runs it."""

    name: str
    summary: str
    module: str

    def runner(self) -> Runner:
        """The module's ``run`` function (the module is imported only now)."""
        return importlib.import_module(f"gradclip.reproduce.{self.module}").run


REPRODUCTIONS: dict[str, Entry] = {e.name: e for e in (
    Entry("mnist-lstm", "the tutorials' experiment: an LSTM over MNIST rows, no clipping vs clipvalue, clipnorm "
          "and an adaptive method, in PyTorch, a TensorFlow GradientTape loop and Keras fit", "_mnist_lstm"),
    Entry("optimizers", "clipping against adaptive optimizers: SGD, momentum, Adam, RMSprop, Adagrad with and "
          "without clipping on regression and digits-lstm", "_optimizers"),
    Entry("zhang-toy", "Zhang et al. 2020: iterations to reach a small gradient on f(x) = sum x^4/4 grow with the "
          "start scale s much faster for the best fixed step than for clipped GD", "_zhang_toy"),
    Entry("zhang-smoothness", "Zhang et al. 2020: along LSTM language-model training, local smoothness "
          "correlates with the gradient norm (log-log)", "_zhang_smoothness"),
    Entry("pascanu-cliff", "Pascanu et al. 2013: a one-unit RNN's loss has a cliff; unclipped GD is thrown off "
          "it, norm-clipped GD crosses and stays bounded", "_pascanu_cliff"),
    Entry("charlm-spikes", "loss spikes in a small character-level transformer with AdamW at a high learning "
          "rate: none, norm, ZClip, SpikeGuard, AdaGC, AutoClip over 3 seeds", "_charlm_spikes"),
)}


def get(name: str) -> Entry:
    """Look a reproduction up by name.

    Raises:
        ConfigError: unknown name; the message lists the valid ones.
    """
    if name not in REPRODUCTIONS:
        import difflib

        close = difflib.get_close_matches(name, REPRODUCTIONS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown reproduction {name!r}.{hint} Valid: {', '.join(REPRODUCTIONS)} "
                          "(gradclip reproduce --list describes each).")
    return REPRODUCTIONS[name]
