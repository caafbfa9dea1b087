"""gradclip for Hugging Face Accelerate: clip after ``accelerator.prepare``, with any policy.

``clip_grad_norm_(accelerator, parameters, max_norm)`` is ``accelerator.clip_grad_norm_`` with
gradclip's norm (same numbers, same pre-clip norm returned). ``Clipper(accelerator, policy)``
runs any policy once per optimizer step: it does nothing while ``accelerator.accumulate`` is
accumulating, unscales fp16 gradients first, and turns a skipped step into a no-op
``optimizer.step()``. Register it with ``accelerator.register_for_checkpointing(clipper)`` and
``save_state``/``load_state`` keep the policy state.

Example:
    >>> import torch, accelerate, gradclip.accelerate as gca
    >>> accelerator = accelerate.Accelerator(cpu=True)
    >>> model = accelerator.prepare(torch.nn.Linear(4, 1))
    >>> accelerator.backward(model(torch.ones(8, 4)).sum())
    >>> stats = gca.Clipper(accelerator, "zclip").step(model)
    >>> float(stats.norm) > 0
    True
"""

from gradclip._require import require

require(("accelerate", "torch"), extra="accelerate", user="gradclip.accelerate")

from gradclip.accelerate._clip import Clipper, clip_grad_norm_  # noqa: E402

__all__ = ["Clipper", "clip_grad_norm_"]
