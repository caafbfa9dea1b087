"""Host values for the monitor's buffered tensors: few torch calls, one host read per device.

:class:`gradclip.Monitor` keeps each step's measured values as they come (0-d or 1-d tensors of
the gradients' device, or Python values) and turns them into Python values here, for one step
(``flush_every=1``) or for every buffered step at once. The cost is the number of torch calls,
not the number of values:

* the values are grouped by device, dtype and shape, and each group is stacked into one tensor
  (steps x values of one kind: one ``torch.stack``, not one call per value);
* on the CPU each group is read with one ``tolist()`` (no copy, no sync: the values are already
  in host memory); a handful of values (one step) are read one ``tolist()`` each, cheaper than
  stacking them;
* on an accelerator the groups of one device are cast to float64 and concatenated on the device,
  and read in one transfer (bools and integers are turned back into ``bool``/``int``).

A 0-d tensor becomes a Python scalar, any other tensor a flat list of them.
"""

from __future__ import annotations

import sys
from typing import Any

from gradclip._stats import _scalar

__all__ = ["fetch"]

#: Up to this many CPU tensors are read one ``tolist()`` each; more are stacked by kind first.
FEW = 12
#: Device types whose tensors are in host memory (read without a transfer). Tests empty it to send
#: CPU tensors down the accelerator path.
HOST_MEMORY = ("cpu",)


def fetch(rows: list[list[Any]]) -> list[list[Any]]:
    """Python values for every row (rows of equal length), with one host read per device.

    Example:
        >>> fetch([[1.5, None, True]])
        [[1.5, None, True]]
        >>> import torch
        >>> fetch([[torch.tensor(2.0), torch.tensor(True)], [torch.tensor(3.0), torch.tensor([1, 2])]])
        [[2.0, True], [3.0, [1, 2]]]
    """
    torch = sys.modules.get("torch")
    if len(rows) == 1 and torch is not None and "cpu" in HOST_MEMORY:  # one step: one pass, no stacking
        tensor = torch.Tensor
        row = rows[0]
        if all(v.is_cpu for v in row if isinstance(v, tensor)):
            return [[_cpu_value(v) if isinstance(v, tensor) else _python(v) for v in row]]
    flat = [v for row in rows for v in row]
    if torch is not None:
        tensor = torch.Tensor
        at = [i for i, v in enumerate(flat) if isinstance(v, tensor)]
        if at:
            for i, value in zip(at, _torch_values(torch, [flat[i] for i in at])):
                flat[i] = value
    flat = [_python(v) for v in flat]
    width = len(rows[0]) if rows else 0
    return [flat[i * width : (i + 1) * width] for i in range(len(rows))]


def _python(value: Any) -> Any:
    """A value that is not a torch tensor as a Python value (NumPy/JAX/TF scalars through ``_scalar``)."""
    return value if value is None or isinstance(value, (bool, int, float, list)) else _scalar(value)


def _cpu_value(t: Any) -> Any:
    """A tensor in host memory read with one ``tolist()``: a scalar if 0-d, else a flat list."""
    return t.tolist() if t.dim() < 2 else t.reshape(-1).tolist()


def _torch_values(torch: Any, tensors: list[Any]) -> list[Any]:
    """Python values of torch tensors, in order (see the module docstring for how they are read)."""
    devices: dict[Any, list[int]] = {}
    for i, t in enumerate(tensors):
        devices.setdefault(t.device, []).append(i)
    out: list[Any] = [None] * len(tensors)
    with torch.no_grad():
        for device, idx in devices.items():
            host = device.type in HOST_MEMORY
            if host and len(idx) <= FEW:
                for i in idx:
                    out[i] = _cpu_value(tensors[i])
                continue
            groups: dict[tuple, list[int]] = {}
            for i in idx:
                t = tensors[i]
                groups.setdefault((t.dtype, t.shape), []).append(i)
            if host:
                for (_, shape), members in groups.items():
                    stacked = torch.stack([tensors[i] for i in members])
                    values = (stacked if len(shape) < 2 else stacked.reshape(len(members), -1)).tolist()
                    for i, value in zip(members, values):
                        out[i] = value
                continue
            parts = [torch.stack([tensors[i] for i in members]).reshape(-1).to(torch.float64)
                     for members in groups.values()]
            flat = (torch.cat(parts) if len(parts) > 1 else parts[0]).tolist()  # the one transfer
            at = 0
            for (dtype, shape), members in groups.items():
                n = shape.numel()
                kind = bool if dtype == torch.bool else (None if dtype.is_floating_point else int)
                for i in members:
                    part = flat[at : at + n]
                    at += n
                    if kind is not None:
                        part = [kind(x) for x in part]
                    out[i] = part[0] if len(shape) == 0 else part
    return out
