"""gradclip for PyTorch Lightning: ``GradientClipping``, a callback that clips with any policy.

It needs ``lightning`` (``pip install 'gradclip[lightning]'``); importing this module without it
raises a one-line :class:`MissingDependencyError` (an ``ImportError``) saying so.

Example:
    >>> import gradclip
    >>> from gradclip.lightning import GradientClipping
    >>> callbacks = [GradientClipping(gradclip.ZClip(), nonfinite="skip")]  # Trainer(callbacks=callbacks)
"""

from gradclip.lightning._require import MissingDependencyError, lightning_pytorch

lightning_pytorch()  # the one-line error, before anything else imports lightning or torch

from gradclip.lightning._callback import GradientClipping

__all__ = ["GradientClipping", "MissingDependencyError"]
