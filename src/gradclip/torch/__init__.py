"""gradclip for PyTorch: drop-ins for ``torch.nn.utils`` clipping, and ``Clipper`` for any policy.

Example:
    >>> import torch, gradclip, gradclip.torch as gct
    >>> model = torch.nn.Linear(3, 1)
    >>> model(torch.ones(4, 3)).sum().backward()
    >>> norm = gct.clip_grad_norm_(model.parameters(), max_norm=1.0)   # same as torch's
    >>> stats = gct.Clipper(gradclip.Value(0.1)).step(model)            # any policy
"""

from gradclip.torch._clipper import Clipper
from gradclip.torch._functional import (
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    get_total_norm,
)

__all__ = ["Clipper", "clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm"]
