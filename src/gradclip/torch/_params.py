"""Turn whatever the user passed (a model, parameters, named parameters, ...) into named tensors."""

from __future__ import annotations

import types
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from gradclip._errors import InputTypeError

_ACCEPTED = (
    "a torch.Tensor, an nn.Module, an iterable of tensors (model.parameters()), an iterable of "
    "(name, tensor) pairs (model.named_parameters()), or optimizer.param_groups"
)


def named_tensors(parameters: Any, *, warn_empty_generator: bool = False) -> list[tuple[str, torch.Tensor]]:
    """Return ``[(name, tensor), ...]`` in the order given; unnamed tensors get ``param[i]``.

    Raises:
        InputTypeError: when ``parameters`` or one of its elements is not accepted. The message
            names the position and the type received.
    """
    if isinstance(parameters, torch.Tensor):
        return [("param[0]", parameters)]
    if isinstance(parameters, torch.nn.Module):
        return list(parameters.named_parameters())
    if isinstance(parameters, (str, bytes)) or not isinstance(parameters, Iterable):
        raise InputTypeError(f"parameters must be {_ACCEPTED}. Received: {type(parameters).__name__}.")
    is_generator = isinstance(parameters, types.GeneratorType)
    items = list(parameters)
    if is_generator and not items and warn_empty_generator:
        warnings.warn("`parameters` is an empty generator, no gradient clipping will occur.", stacklevel=4)
    out: list[tuple[str, torch.Tensor]] = []
    for i, item in enumerate(items):
        if isinstance(item, torch.Tensor):
            out.append((f"param[{len(out)}]", item))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
            out.append((str(item[0]), item[1]))
        elif isinstance(item, dict) and "params" in item:  # an optimizer param group
            out.extend((f"param[{len(out) + j}]", p) for j, p in enumerate(item["params"]))
        else:
            raise InputTypeError(
                f"parameters[{i}] must be a torch.Tensor or a (name, tensor) pair. Received: "
                f"{type(item).__name__}. parameters must be {_ACCEPTED}."
            )
    return out


def tensors(values: Any) -> list[torch.Tensor]:
    """Check a list of gradient tensors (``get_total_norm``'s input)."""
    if isinstance(values, torch.Tensor):
        return [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InputTypeError(f"tensors must be a tensor or an iterable of tensors. Received: {type(values).__name__}.")
    out = list(values)
    for i, t in enumerate(out):
        if not isinstance(t, torch.Tensor):
            raise InputTypeError(f"tensors[{i}] must be a torch.Tensor. Received: {type(t).__name__}.")
    return out


def with_grads(named: list[tuple[str, torch.Tensor]]) -> tuple[list[str], list[int], list[torch.Tensor]]:
    """Names, positions and gradients of the parameters that have a gradient."""
    names, index, grads = [], [], []
    for i, (name, p) in enumerate(named):
        if p.grad is not None:
            names.append(name)
            index.append(i)
            grads.append(p.grad)
    return names, index, grads
