"""``GradientMonitor``: a Keras callback that records a clipped optimizer's ClipStats with gradclip.Monitor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from gradclip._errors import ConfigError
from gradclip.keras._optimizer import _ClippedMixin
from gradclip.monitor import Monitor

__all__ = ["GradientMonitor"]


class GradientMonitor(keras.callbacks.Callback):
    """Write one :class:`gradclip.Monitor` record per optimizer update during ``model.fit``.

    The optimizer must come from :func:`gradclip.keras.clipped` (possibly inside a
    ``LossScaleOptimizer``). Its last step's :class:`gradclip.ClipStats` live in optimizer
    variables; the callback reads them after each batch (one small host read), with the batch
    loss and the learning rate, and hands them to the monitor: the same records, sinks
    (``jsonl:``, ``csv:``, ``tensorboard:`` via tensorboardX, no TensorFlow needed), spike
    detection and ``gradclip report`` as in PyTorch. Per-layer gradient norms come from the
    clipper's per-variable norms (named by variable path); parameter norms are not measured.
    With ``gradient_accumulation_steps`` only update steps are recorded.

    The loss is each batch's own loss, not the running epoch mean that Keras puts in
    ``logs["loss"]`` (that mean smooths spikes away and restarts every epoch). It is recovered
    from the model's loss tracker (the ``keras.metrics.Mean`` named ``"loss"`` in
    ``model.metrics``), which holds ``total`` = sum of batch size x batch loss and ``count`` =
    samples since the epoch began: the loss of the batches since the last record is
    ``(total - total_before) / (count - count_before)``, computed in float64 and restarted with
    the tracker at each epoch. This holds for any batch sizes (a smaller last batch too), up to
    the float32 rounding of Keras's running total: an absolute error of at most about
    ``2**-23 * total / batch_size`` (relative error about ``k * 1.2e-7`` at batch ``k`` of an
    epoch of similar losses; larger for small losses right after a big spike). After a
    non-finite batch loss, Keras's running total stays NaN/Inf until the epoch ends, and so do
    the recorded losses (written as null). When one record covers several batches
    (``steps_per_execution > 1``, where Keras calls back once per execution, or the
    micro-batches of one accumulated update) it is their sample-weighted mean loss. Without such
    a tracker (a custom ``train_step`` that does not update one) ``logs["loss"]`` is recorded as
    it is.

    Args:
        sinks: Sink specs or objects, as for :class:`gradclip.Monitor` (ignored with ``monitor``).
        monitor: An existing Monitor to feed (left open at the end of training); by default
            one is made from ``sinks`` and ``monitor_kwargs`` and closed when training ends.
        **monitor_kwargs: Other :class:`gradclip.Monitor` options (``per_layer``, ``spike_z``...).

    Example:
        >>> import keras, gradclip, gradclip.keras as gck
        >>> records = []
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer=gck.clipped(keras.optimizers.SGD(0.1), "norm:1.0"), loss="mse")
        >>> _ = model.fit(keras.ops.ones((8, 3)), keras.ops.ones((8, 1)), batch_size=4, verbose=0,
        ...               callbacks=[gck.GradientMonitor([records.append])])
        >>> len(records), sorted(records[0])[:3]
        (2, ['clipped', 'clipped_norm', 'coef'])
    """

    def __init__(self, sinks: Iterable[Any] = (), *, monitor: Monitor | None = None, **monitor_kwargs: Any) -> None:
        super().__init__()
        self._owned = monitor is None
        self.monitor = monitor if monitor is not None else Monitor(sinks, **{"framework": "keras", **monitor_kwargs})
        self._epoch: int | None = None
        self._last_iteration = -1
        self._seen = (0.0, 0.0)  # the loss tracker's (total, count) at the last record
        self._tracker: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._last_iteration = _iterations(self._optimizer())
        self._tracker = next((m for m in self.model.metrics if m.name == "loss"), None)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._seen = (0.0, 0.0)  # Keras resets its metrics at every epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        opt = self._optimizer()
        iteration = _iterations(opt)  # counts updates: an accumulating micro-batch leaves it as it is
        if iteration == self._last_iteration:
            return
        self._last_iteration = iteration
        lr = float(np.asarray(keras.ops.convert_to_numpy(opt.learning_rate)))
        self.monitor.step(clip_stats=opt.last_stats(), loss=self._batch_loss(logs), lr=lr, epoch=self._epoch)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._owned:
            self.monitor.close()
        else:
            self.monitor.flush()

    def _batch_loss(self, logs: dict[str, Any] | None) -> float | None:
        """The mean loss of the batches since the last record, from the loss tracker's total and count."""
        total, count = getattr(self._tracker, "total", None), getattr(self._tracker, "count", None)
        if total is None or count is None:
            loss = (logs or {}).get("loss")
            return None if loss is None else float(loss)
        now = (_host(total), _host(count))
        (total_before, count_before), self._seen = self._seen, now
        if now[1] < count_before:  # the tracker was reset under us (e.g. a callback): start again
            total_before, count_before = 0.0, 0.0
        samples = now[1] - count_before
        return (now[0] - total_before) / samples if samples > 0 else None

    def _optimizer(self) -> Any:
        opt = self.model.optimizer
        opt = getattr(opt, "inner_optimizer", opt)  # LossScaleOptimizer
        if not isinstance(opt, _ClippedMixin):
            raise ConfigError("GradientMonitor reads the statistics of an optimizer wrapped by gradclip.keras.clipped(...). "
                              f"Received a {type(opt).__name__}: compile the model with clipped(optimizer, policy).")
        return opt


def _host(variable: Any) -> float:
    """A scalar Keras variable as a Python float (float64 arithmetic from here on)."""
    return float(np.asarray(keras.ops.convert_to_numpy(variable)))


def _iterations(opt: Any) -> int:
    return int(np.asarray(keras.ops.convert_to_numpy(opt.iterations)))
