"""gradclip for Keras 3 (TensorFlow, JAX and PyTorch backends): ``wrap`` and ``GradientMonitor``.

Example:
    >>> import keras, gradclip, gradclip.keras as gck
    >>> opt = gck.wrap(keras.optimizers.Adam(1e-3), gradclip.ZClip())
    >>> isinstance(opt, keras.optimizers.Adam), opt.gradclip_policy.spec()
    (True, 'zclip')
"""

from gradclip.keras._callback import GradientMonitor
from gradclip.keras._optimizer import wrap

__all__ = ["GradientMonitor", "wrap"]
