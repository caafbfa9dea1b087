"""A ``Clipper.state_dict()`` as plain JSON values, for ``trainer_state.json``, and back.

A tensor becomes ``{"dtype": "float32", "shape": [...], "data": [...]}``. Python's ``json`` writes
a float with the shortest repr that reads back to the same float64 (and NaN/Infinity as
``NaN``/``Infinity``), so a float32 or float64 state round-trips bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from gradclip._errors import StateDictError

__all__ = ["from_json", "to_json"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
           "bool": torch.bool}


def to_json(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Replace the tensors of a clipper state dict by JSON-safe records.

    Example:
        >>> import torch
        >>> to_json({"steps": 2, "state": {"mu": torch.tensor(0.5)}})
        {'steps': 2, 'state': {'mu': {'dtype': 'float32', 'shape': [], 'data': 0.5}}}
    """
    out = dict(state_dict)
    out["state"] = {k: _tensor_record(k, v) for k, v in state_dict.get("state", {}).items()}
    return out


def from_json(record: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`to_json` (the clipper's ``load_state_dict`` then checks every value).

    Raises:
        StateDictError: a record is not one :func:`to_json` writes.

    Example:
        >>> import torch
        >>> from_json(to_json({"steps": 1, "state": {"mu": torch.tensor(0.5)}}))["state"]["mu"]
        tensor(0.5000)
    """
    if not isinstance(record, dict) or not isinstance(record.get("state"), dict):
        raise StateDictError(f"A saved GradientClippingCallback state has a dict 'state'. Received: {record!r:.200}.")
    out = dict(record)
    out["state"] = {k: _tensor(k, v) for k, v in record["state"].items()}
    return out


def _tensor_record(key: str, value: Any) -> Any:
    if not isinstance(value, torch.Tensor):
        return value
    dtype = str(value.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise StateDictError(f"State key {key!r}: dtype {dtype} cannot be saved in trainer_state.json; expected one "
                             f"of {sorted(_DTYPES)}.")
    return {"dtype": dtype, "shape": list(value.shape), "data": value.detach().cpu().tolist()}


def _tensor(key: str, value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    if set(value) != {"dtype", "shape", "data"} or value["dtype"] not in _DTYPES:
        raise StateDictError(f"State key {key!r}: expected a record with 'dtype' (one of {sorted(_DTYPES)}), 'shape' "
                             f"and 'data'. Received: {value!r:.200}.")
    return torch.tensor(value["data"], dtype=_DTYPES[value["dtype"]]).reshape(value["shape"])
