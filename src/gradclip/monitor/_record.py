"""The per-step record: one JSON object per optimizer step, shared by every writer and reader.

``gradclip compare --log-dir``, :class:`gradclip.Monitor` and every sink write these keys; the
report and the advisor read them. Keys other than ``step`` may be missing or ``null``.

Keys:
    step (int): optimizer step, 0-based.
    norm (float | null): global gradient norm before clipping (null when NaN/Inf).
    clipped_norm (float | null): global norm after clipping.
    threshold (float | list | null): the threshold used (a list for per-tensor thresholds).
    coef (float | null): global scale applied, when there is one.
    clipped (bool): the gradients were changed by clipping.
    skipped (bool): the step was skipped (non-finite gradients or a spike guard).
    nonfinite (bool): some gradient held NaN/Inf.
    loss (float | null), lr (float | null): when the user passes them.
    epoch (int | float): when known (a float for a fractional epoch).
    spike (bool): the monitor's spike detector fired on this step.
    offenders (list[dict]): non-finite tensors, in parameter order:
        ``{"name", "shape", "nan", "inf"}``; the first one is the first offender.
    layers (dict[str, dict]): per-tensor detail when recorded:
        ``{name: {"grad_norm", "param_norm", "update_ratio"}}`` (any may be null).
    run (str): a run label, when several runs share a file.
    dp (dict): differential privacy, when ``Monitor.step(privacy=...)`` got a
        :class:`gradclip.privacy.PrivacyStats` (or ``gradclip compare --task dp-digits`` ran):
        ``{"fraction_clipped", "norm_p10", "norm_p50", "norm_p90", "clip", "epsilon"}``: the share
        of the step's examples whose gradient was scaled down, the 10th/50th/90th percentile of
        the per-example gradient norms before clipping, the bound ``C`` used (it moves with
        adaptive clipping), and the privacy spent so far (null without ``delta``). CSV columns
        and dashboard scalars name them ``dp.<key>`` and ``dp/<key>``.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from gradclip._errors import InputTypeError

#: Keys of a record's ``dp`` object, in the order writers emit them.
DP_KEYS = ("fraction_clipped", "norm_p10", "norm_p50", "norm_p90", "clip", "epsilon")

#: Scalar keys in the order writers emit them (CSV columns); ``dp.KEY`` is ``record["dp"][KEY]``.
SCALAR_KEYS = (
    "step", "epoch", "loss", "lr", "norm", "clipped_norm", "threshold", "coef", "clipped", "skipped",
    "nonfinite", "spike", *(f"dp.{key}" for key in DP_KEYS),
)


def scalar(record: dict[str, Any], key: str) -> Any:
    """The value of a :data:`SCALAR_KEYS` column in a record (``dp.KEY`` reads the ``dp`` object).

    Example:
        >>> scalar({"step": 3, "dp": {"clip": 1.0}}, "dp.clip"), scalar({"step": 3}, "dp.clip")
        (1.0, None)
    """
    if key.startswith("dp."):
        dp = record.get("dp")
        return dp.get(key[3:]) if isinstance(dp, dict) else None
    return record.get(key)


def dp_values(privacy: Any) -> dict[str, Any]:
    """The record's ``dp`` object from a :class:`gradclip.privacy.PrivacyStats` (or a mapping of :data:`DP_KEYS`).

    Args:
        privacy: A ``PrivacyStats`` (``PrivateStep.last_stats()``), an object with a
            ``last_stats()`` method (a ``PrivateStep``), or a mapping holding the keys of
            :data:`DP_KEYS` (``epsilon`` may be missing).

    Returns:
        ``{"fraction_clipped", "norm_p10", "norm_p50", "norm_p90", "clip", "epsilon"}`` as Python
        floats (``None`` for NaN/Inf and for a missing ``epsilon``).

    Raises:
        InputTypeError: anything else, or a value that is not a real number (nothing is recorded).

    Example:
        >>> dp_values({"fraction_clipped": 0.25, "norm_p10": 0.5, "norm_p50": 1.0, "norm_p90": 2.0, "clip": 1.0})
        {'fraction_clipped': 0.25, 'norm_p10': 0.5, 'norm_p50': 1.0, 'norm_p90': 2.0, 'clip': 1.0, 'epsilon': None}
    """
    if callable(getattr(privacy, "last_stats", None)):
        privacy = privacy.last_stats()
        if privacy is None:
            raise InputTypeError("Monitor.step(privacy=...) got a PrivateStep before its first step(); call "
                                 "Monitor.step after PrivateStep.step() (nothing was recorded for this step).")
    if isinstance(privacy, dict):
        missing = [k for k in DP_KEYS[:-1] if k not in privacy]
        if missing:
            raise InputTypeError(f"Monitor.step(privacy=...) takes a mapping with the keys {list(DP_KEYS)}; "
                                 f"received one without {missing} (nothing was recorded for this step).")
        raw = {k: privacy.get(k) for k in DP_KEYS}
    elif all(hasattr(privacy, a) for a in ("fraction_clipped", "norm_p10", "norm_p50", "norm_p90", "max_grad_norm")):
        raw = {"fraction_clipped": privacy.fraction_clipped, "norm_p10": privacy.norm_p10,
               "norm_p50": privacy.norm_p50, "norm_p90": privacy.norm_p90, "clip": privacy.max_grad_norm,
               "epsilon": getattr(privacy, "epsilon", None)}
    else:
        raise InputTypeError("Monitor.step(privacy=...) takes a gradclip.privacy.PrivacyStats (PrivateStep.last_stats()), "
                             f"a PrivateStep, or a mapping of {list(DP_KEYS)}. Received: {type(privacy).__name__} "
                             "(nothing was recorded for this step).")
    out = {}
    for key, value in raw.items():
        value = step_value(f"privacy.{key}", value)
        out[key] = clean(float(value)) if value is not None else None
    return out


def clean(value: Any) -> Any:
    """JSON-safe value: NaN/Inf floats become ``None``; tuples become lists; recurse into containers.

    NumPy scalars (``np.int64``, ``np.float32``, 0-d arrays) become Python numbers.

    Example:
        >>> import numpy as np
        >>> clean({"loss": float("nan"), "shape": (2, np.int64(3))})
        {'loss': None, 'shape': [2, 3]}
    """
    kind = type(value)
    if kind is float:
        return value if math.isfinite(value) else None
    if value is None or kind is bool or kind is int or kind is str:
        return value
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if _is_numpy(value) and getattr(value, "ndim", None) == 0:  # before float: np.float64 is a float
        return clean(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


#: What ``Monitor.step`` accepts for ``loss``, ``lr`` and ``epoch`` (error messages say it).
STEP_VALUES = "a Python number, a NumPy scalar, or a 0-d tensor/array (torch, NumPy, TensorFlow, JAX) of a real dtype"


def step_value(name: str, value: Any) -> Any:
    """Check a ``loss``/``lr``/``epoch`` passed to ``Monitor.step`` now, before anything is recorded.

    Host values become Python numbers at once; a 0-d tensor is kept as it is (no host read: it is
    read with the step's other values at the next flush), after its shape and dtype were checked.

    Args:
        name: The argument's name, for the message.
        value: ``None``, a real number, a NumPy scalar or 0-d array, or a 0-d framework tensor.

    Returns:
        ``None``, a Python ``int``/``float``, or the 0-d tensor.

    Raises:
        InputTypeError: a string, a bool, a container, a complex or non-numeric dtype, or an
            array with more than one value. Nothing is recorded for the step then.

    Example:
        >>> import numpy as np
        >>> step_value("epoch", np.int64(3)), step_value("loss", np.array(1.5))
        (3, 1.5)
        >>> step_value("lr", "1e-3")
        Traceback (most recent call last):
        ...
        gradclip._errors.InputTypeError: Monitor.step(lr=...) takes a Python number, a NumPy scalar, or a 0-d tensor/array (torch, NumPy, TensorFlow, JAX) of a real dtype. Received: str '1e-3'. Pass float(value) (nothing was recorded for this step).
    """
    if value is None or (type(value) in (int, float)):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # subclasses, np.float64
        return value.item() if _is_numpy(value) else (int(value) if isinstance(value, int) else float(value))
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if isinstance(value, (bool, str, bytes)) or dtype is None or shape is None:
        got = f"{type(value).__name__} {value!r}" if isinstance(value, (bool, str, bytes)) else type(value).__name__
        raise InputTypeError(f"Monitor.step({name}=...) takes {STEP_VALUES}. Received: {got}. "
                             "Pass float(value) (nothing was recorded for this step).")
    kind = _dtype_kind(dtype)
    if kind is None:
        raise InputTypeError(f"Monitor.step({name}=...) takes {STEP_VALUES}. Received: a {type(value).__name__} "
                             f"of dtype {dtype}. Pass a real value, e.g. float(value.real) "
                             "(nothing was recorded for this step).")
    if tuple(shape) != ():
        raise InputTypeError(f"Monitor.step({name}=...) takes one value ({STEP_VALUES}). Received: a "
                             f"{type(value).__name__} of shape {tuple(shape)}. Pass one value, e.g. {name}.mean() or "
                             f"{name}.reshape(()) (nothing was recorded for this step).")
    if _is_numpy(value):
        return value.item()
    if getattr(value, "requires_grad", False):  # torch: keep no autograd graph alive
        return value.detach()
    return value


def _is_numpy(value: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, (np.generic, np.ndarray))


#: dtype -> kind, for the dtypes seen (a step's values are checked every step).
_KINDS: dict[Any, str | None] = {}


def _dtype_kind(dtype: Any) -> str | None:
    """``"float"``, ``"int"`` or ``None`` (bool, complex, string, object) for a dtype of any framework."""
    try:
        return _KINDS[dtype]
    except (KeyError, TypeError):  # TypeError: an unhashable dtype
        kind = _kind_of(dtype)
    try:
        _KINDS[dtype] = kind
    except TypeError:
        pass
    return kind


def _kind_of(dtype: Any) -> str | None:
    name = str(getattr(dtype, "name", None) or dtype).rsplit(".", 1)[-1]  # torch: "torch.float32"
    if name.startswith(("float", "bfloat", "half", "double")):
        return "float"
    if name.startswith(("int", "uint", "long", "short")):
        return "int"
    return None
