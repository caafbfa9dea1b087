"""Decide: the per-example clipping coefficient, in the convention of three DP libraries.

DP-SGD scales each example's gradient ``g_i`` by a coefficient ``c_i`` so that ``||c_i g_i|| <= C``.
The libraries agree on that bound but differ in the last digits and at the edges (a zero or
non-finite norm), so the convention is a parameter (``semantics=``), not a silent default:

==========  ==============================================  =====================================
semantics   coefficient                                     source
==========  ==============================================  =====================================
"opacus"    ``clamp(C / (n + 1e-6), max=1)``                Opacus 1.6 ``DPOptimizer.clip_and_accumulate``
"optax"     ``nan_to_num(minimum(C / n, 1), nan=1)``        optax 0.2.8 ``per_example_global_norm_clip``
"tf"        ``C * minimum(1 / n, 1 / C) + (n - n)``         ``tf.clip_by_global_norm`` (TF Privacy's
                                                            ``GaussianSumQuery.preprocess_record``)
==========  ==============================================  =====================================

Edge cases (``C = 1``; the test suite checks each against the formula in float64):

==========  ======  =========  =====
semantics   n = 0   n = inf    NaN
==========  ======  =========  =====
"opacus"    1       0          NaN
"optax"     1       0          1
"tf"        1       NaN        NaN
==========  ======  =========  =====

A NaN coefficient makes the summed gradient NaN, as in the library it copies; under "optax" a
NaN example is kept *unclipped*. "tf" can return ``1 - 1ulp`` for an unclipped example
(``C * (1 / C)``), as TensorFlow does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from gradclip._errors import ConfigError, InputTypeError

__all__ = ["SEMANTICS", "check_number", "clip_coef", "per_parameter_thresholds"]

SEMANTICS = ("opacus", "optax", "tf")


def clip_coef(norms: torch.Tensor, max_norm: float | torch.Tensor, semantics: str = "opacus") -> torch.Tensor:
    """Per-example clipping coefficients from per-example norms.

    Args:
        norms: Per-example gradient norms, any shape (``(B,)`` flat, ``(B, P)`` per layer).
        max_norm: The threshold ``C`` (> 0): a float, or a tensor that broadcasts against
            ``norms`` (``(P,)`` for one threshold per parameter).
        semantics: ``"opacus"`` (default), ``"optax"`` or ``"tf"``; see the module docstring.

    Returns:
        A tensor shaped like ``norms``, each value in ``[0, 1]`` for finite input, to multiply
        each example's gradient by.

    Raises:
        ConfigError: ``semantics`` is not one of the three names.

    Example:
        >>> import torch
        >>> clip_coef(torch.tensor([0.5, 4.0]), 1.0, "optax").tolist()
        [1.0, 0.25]

    References:
        Abadi et al. 2016, Deep Learning with Differential Privacy, arXiv:1607.00133 (Alg. 1).
    """
    if semantics == "opacus":
        return (max_norm / (norms + 1e-6)).clamp(max=1.0)
    if semantics == "optax":
        return torch.nan_to_num(torch.clamp(max_norm / norms, max=1.0), nan=1.0)
    if semantics == "tf":
        one = torch.ones((), dtype=norms.dtype, device=norms.device)
        return max_norm * torch.minimum(one / norms, one / max_norm) + (norms - norms)
    raise ConfigError(f"semantics must be one of {SEMANTICS}; received {semantics!r}. Pick the library whose numbers you need.")


def check_number(name: str, value: Any, *, positive: bool, hint: str) -> float:
    """A finite float, > 0 (``positive``) or >= 0; typed one-line errors that name ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputTypeError(f"{name} must be a float; received {type(value).__name__} {value!r}. {hint}")
    value = float(value)
    bad = not math.isfinite(value) or (value <= 0 if positive else value < 0)
    if bad:
        rule = "> 0 and finite" if positive else ">= 0 and finite"
        raise ConfigError(f"{name} must be {rule}; received {value!r}. {hint}")
    return value


def per_parameter_thresholds(max_grad_norm: Any, mode: str, names: list[str]) -> list[float]:
    """Validate ``max_grad_norm``: one threshold per parameter name (``mode="flat"``: a list of one)."""
    hint = "Pass the clipping threshold C, e.g. max_grad_norm=1.0."
    if mode == "flat" or isinstance(max_grad_norm, (int, float)):
        if not isinstance(max_grad_norm, (int, float)) or isinstance(max_grad_norm, bool):
            raise InputTypeError(
                f"max_grad_norm must be a float in mode='flat'; received {type(max_grad_norm).__name__}. "
                "Per-parameter thresholds need mode='per_layer'."
            )
        c = check_number("max_grad_norm", max_grad_norm, positive=True, hint=hint)
        return [c] if mode == "flat" else [c] * len(names)
    if isinstance(max_grad_norm, Mapping):
        missing = [n for n in names if n not in max_grad_norm]
        extra = [k for k in max_grad_norm if k not in names]
        if missing or extra:
            raise ConfigError(
                f"max_grad_norm dict must name each trainable parameter (model.named_parameters()); "
                f"received one missing {missing[:4]} with unknown {extra[:4]}."
            )
        values = [max_grad_norm[n] for n in names]
    elif isinstance(max_grad_norm, Sequence) and not isinstance(max_grad_norm, str):
        values = list(max_grad_norm)
        if len(values) != len(names):
            raise ConfigError(
                f"max_grad_norm list needs {len(names)} thresholds, one per trainable parameter in "
                f"model.named_parameters() order; received {len(values)}."
            )
    else:
        raise InputTypeError(f"max_grad_norm must be a float, list or dict; received {type(max_grad_norm).__name__}.")
    return [check_number(f"max_grad_norm[{n!r}]", v, positive=True, hint=hint) for n, v in zip(names, values)]
