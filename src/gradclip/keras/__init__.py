"""gradclip for Keras 3 (TensorFlow, JAX and PyTorch backends): ``clipped`` and ``GradientMonitor``.

``clipped(optimizer, policy)`` is the optimizer wrapper, as in :mod:`gradclip.torch`, and
``opt.last_stats()`` the last step's statistics, as everywhere. ``wrap`` (its former name) still
works and emits a ``DeprecationWarning``.

Example:
    >>> import keras, gradclip, gradclip.keras as gck
    >>> opt = gck.clipped(keras.optimizers.Adam(1e-3), gradclip.ZClip())
    >>> isinstance(opt, keras.optimizers.Adam), opt.gradclip_policy.spec()
    (True, 'zclip')
"""

from gradclip.keras._callback import GradientMonitor
from gradclip.keras._optimizer import clipped, wrap

__all__ = ["GradientMonitor", "clipped", "wrap"]
