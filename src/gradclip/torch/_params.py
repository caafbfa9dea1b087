"""Turn whatever the user passed (a model, parameters, named parameters, ...) into named tensors."""

from __future__ import annotations

import types
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from gradclip._errors import ConfigError, InputTypeError

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


#: Accumulation dtypes ``norm_dtype=`` accepts.
NORM_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def norm_dtype(value: Any) -> torch.dtype | None:
    """Check ``norm_dtype=``: ``None`` or a floating ``torch.dtype``.

    Raises:
        InputTypeError: not a ``torch.dtype`` (a string such as ``"float32"``, an int).
        ConfigError: a ``torch.dtype`` that is not floating (``torch.int32``, complex).

    Example:
        >>> norm_dtype(torch.float32)
        torch.float32
    """
    if value is None:
        return None
    if not isinstance(value, torch.dtype):
        hint = f" Did you mean torch.{value}?" if isinstance(value, str) and hasattr(torch, value) else ""
        raise InputTypeError(f"norm_dtype must be None or a torch.dtype such as torch.float32. Received: {value!r} "
                             f"({type(value).__name__}).{hint}")
    if value not in NORM_DTYPES:
        raise ConfigError(f"norm_dtype must be a floating dtype ({', '.join(map(str, NORM_DTYPES))}). Received: {value}.")
    return value


def check_grads(names: list[str], grads: list[torch.Tensor]) -> None:
    """Refuse gradients that no norm is defined for (integer and bool dtypes), naming the first.

    Floating and complex gradients pass (a complex gradient's norm is that of its moduli).

    Raises:
        InputTypeError: a gradient of an integer or bool dtype; nothing was changed.
    """
    if all(d.is_floating_point or d.is_complex for d in {g.dtype for g in grads}):  # one look per dtype
        return
    for name, g in zip(names, grads):
        if not (g.is_floating_point() or g.is_complex()):
            raise InputTypeError(f"The gradient of {name!r} has dtype {g.dtype}: gradients must be floating point (or "
                                 "complex) to be measured and clipped. Received an integer/bool gradient; give the "
                                 "parameter a floating dtype.")


def unique(named: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
    """``named`` with each tensor once (its first name): a tensor listed twice is one gradient.

    Example:
        >>> w = torch.zeros(2)
        >>> [n for n, _ in unique([("a", w), ("b", torch.zeros(1)), ("a_again", w)])]
        ['a', 'b']
    """
    if len({id(t) for _, t in named}) == len(named):  # the usual case: nothing to drop
        return named
    seen: set[int] = set()
    out = []
    for name, t in named:
        if id(t) not in seen:
            seen.add(id(t))
            out.append((name, t))
    return out
