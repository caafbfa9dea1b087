"""gradclip for the Hugging Face ``Trainer``: any policy through ``GradientClippingCallback``.

``attach(trainer, policy)`` adds the callback ahead of the ``report_to`` integrations, so that
TensorBoard, W&B or MLflow receive the clip statistics with the Trainer's own logs. Turn the
Trainer's clipping off (``TrainingArguments(max_grad_norm=0)``): gradclip clips instead.

Example:
    >>> import gradclip.transformers as gctr
    >>> callback = gctr.GradientClippingCallback("zclip", nonfinite="skip")
    >>> callback
    GradientClippingCallback('zclip', nonfinite='skip')
"""

from gradclip._require import require

require(("transformers", "accelerate", "torch"), extra="transformers", user="gradclip.transformers")

from gradclip.transformers._callback import GradientClippingCallback, attach  # noqa: E402

__all__ = ["GradientClippingCallback", "attach"]
