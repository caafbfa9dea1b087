"""``GradientMonitor``: a Keras callback that records a wrapped optimizer's ClipStats with gradclip.Monitor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras
import numpy as np

from gradclip._errors import ConfigError
from gradclip.monitor import Monitor

__all__ = ["GradientMonitor"]


class GradientMonitor(keras.callbacks.Callback):
    """Write one :class:`gradclip.Monitor` record per optimizer update during ``model.fit``.

    The optimizer must come from :func:`gradclip.keras.wrap` (possibly inside a
    ``LossScaleOptimizer``). Its last step's :class:`gradclip.ClipStats` live in optimizer
    variables; the callback reads them after each batch (one small host read), with the batch
    loss and the learning rate, and hands them to the monitor: the same records, sinks
    (``jsonl:``, ``csv:``, ``tensorboard:`` via tensorboardX, no TensorFlow needed), spike
    detection and ``gradclip report`` as in PyTorch. Per-layer gradient norms come from the
    clipper's per-variable norms (named by variable path); parameter norms are not measured.
    With ``gradient_accumulation_steps`` only update steps are recorded.

    Args:
        sinks: Sink specs or objects, as for :class:`gradclip.Monitor` (ignored with ``monitor``).
        monitor: An existing Monitor to feed (left open at the end of training); by default
            one is made from ``sinks`` and ``monitor_kwargs`` and closed when training ends.
        **monitor_kwargs: Other :class:`gradclip.Monitor` options (``per_layer``, ``spike_z``...).

    Example:
        >>> import keras, gradclip, gradclip.keras as gck
        >>> records = []
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer=gck.wrap(keras.optimizers.SGD(0.1), "norm:1.0"), loss="mse")
        >>> _ = model.fit(keras.ops.ones((8, 3)), keras.ops.ones((8, 1)), batch_size=4, verbose=0,
        ...               callbacks=[gck.GradientMonitor([records.append])])
        >>> len(records), sorted(records[0])[:3]
        (2, ['clipped', 'clipped_norm', 'coef'])
    """

    def __init__(self, sinks: Iterable[Any] = (), *, monitor: Monitor | None = None, **monitor_kwargs: Any) -> None:
        super().__init__()
        self._owned = monitor is None
        self.monitor = monitor if monitor is not None else Monitor(sinks, **monitor_kwargs)
        self._epoch: int | None = None
        self._last_iteration = -1

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        opt = self._optimizer()
        iteration = int(np.asarray(keras.ops.convert_to_numpy(opt.iterations)))
        steps = getattr(opt, "gradient_accumulation_steps", None)
        if iteration == self._last_iteration or (steps and iteration % steps != 0):
            return
        self._last_iteration = iteration
        loss = (logs or {}).get("loss")
        lr = float(np.asarray(keras.ops.convert_to_numpy(opt.learning_rate)))
        self.monitor.step(clip_stats=opt.gradclip_stats(), loss=None if loss is None else float(loss), lr=lr,
                          epoch=self._epoch)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._owned:
            self.monitor.close()
        else:
            self.monitor.flush()

    def _optimizer(self) -> Any:
        opt = self.model.optimizer
        opt = getattr(opt, "inner_optimizer", opt)  # LossScaleOptimizer
        if not hasattr(opt, "gradclip_stats"):
            raise ConfigError("GradientMonitor reads the statistics of an optimizer made by gradclip.keras.wrap(...). "
                              f"Received a {type(opt).__name__}: compile the model with wrap(optimizer, policy).")
        return opt
