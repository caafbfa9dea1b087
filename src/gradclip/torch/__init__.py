"""gradclip for PyTorch: drop-ins for ``torch.nn.utils`` clipping, ``Clipper`` for any policy, and
``clipped(optimizer, policy)`` to clip inside ``optimizer.step()``. Both have ``last_stats()``, the
last step's :class:`gradclip.ClipStats`, as every adapter's clipper has.

Example:
    >>> import torch, gradclip, gradclip.torch as gct
    >>> model = torch.nn.Linear(3, 1)
    >>> model(torch.ones(4, 3)).sum().backward()
    >>> norm = gct.clip_grad_norm_(model.parameters(), max_norm=1.0)   # same as torch's
    >>> stats = gct.Clipper(gradclip.Value(0.1)).step(model)            # any policy
    >>> opt = gct.clipped(torch.optim.AdamW(model.parameters(), fused=True), "norm:1.0")
    >>> opt.step()                                # clips, the factor fused into AdamW's kernel
"""

from gradclip.torch._clipper import Clipper
from gradclip.torch._functional import (
    clip_grad_norm_,
    clip_grad_value_,
    clip_grads_with_norm_,
    get_total_norm,
)
from gradclip.torch._fused import clipped
from gradclip.torch._replicas import ReplicaCheck, check_replicas

__all__ = [
    "Clipper", "ReplicaCheck", "check_replicas", "clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_",
    "clipped", "get_total_norm",
]
