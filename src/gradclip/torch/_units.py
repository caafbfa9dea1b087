"""Unit-wise measurement and scaling for torch (AGC): one norm per output row or filter."""

from __future__ import annotations

from typing import Any

import torch

from gradclip._errors import ConfigError
from gradclip._policies._agc import unit_axes

LAYOUT = "torch"  # weights are [out, in, *kernel]


def excluded_module_params(policy: Any, parameters: Any) -> frozenset[str]:
    """Names of the parameters owned by modules of the types in ``policy.exclude``.

    Raises:
        ConfigError: module types were given but ``parameters`` is not the model.
    """
    types = tuple(e for e in getattr(policy, "exclude", ()) if isinstance(e, type))
    if not types:
        return frozenset()
    if not isinstance(parameters, torch.nn.Module):
        raise ConfigError(
            f"exclude has module types ({', '.join(t.__name__ for t in types)}), which can only be "
            f"resolved from the model. Pass the model to Clipper.step(). Received: {type(parameters).__name__}."
        )
    names = set()
    for mod_name, module in parameters.named_modules():
        if isinstance(module, types):
            names.update(f"{mod_name}.{n}" if mod_name else n for n, _ in module.named_parameters(recurse=False))
    return frozenset(names)


def unit_norms(policy: Any, names: list[str], params: list[torch.Tensor], grads: list[torch.Tensor],
               dtype: torch.dtype, module_names: frozenset[str]) -> tuple[list, list]:
    """Per tensor: unit norms of the gradient and of the parameter (``None`` when excluded)."""
    g_norms: list[torch.Tensor | None] = []
    w_norms: list[torch.Tensor | None] = []
    for name, w, g in zip(names, params, grads):
        if policy.excluded(name, module_names):
            g_norms.append(None)
            w_norms.append(None)
            continue
        axes = unit_axes(g.ndim, LAYOUT, policy.axis)
        g_norms.append(norm(g, axes, dtype))
        w_norms.append(norm(w.detach(), axes, dtype).to(g.device))
    return g_norms, w_norms


def norm(t: torch.Tensor, axes: tuple[int, ...] | None, dtype: torch.dtype) -> torch.Tensor:
    """The L2 norm of each unit of ``t`` (kept dims), or of the whole tensor (``axes=None``)."""
    if axes is None:
        return torch.linalg.vector_norm(t, 2, dtype=dtype)
    return torch.linalg.vector_norm(t, 2, dim=axes, keepdim=True, dtype=dtype)


def scale_units_(grads: list[torch.Tensor], coefs: list) -> None:
    """Multiply each gradient by its unit factors in place (``None``: leave that tensor unchanged).

    The clipped norm and flag come from the unit norms (:func:`gradclip._apply.apply`), not from
    a new pass over the gradients.
    """
    for g, c in zip(grads, coefs):
        if c is not None:
            g.mul_(c)
