"""``ClipStats``: what every clipper returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradclip._errors import Offender

__all__ = ["ClipStats"]


def _scalar(value: Any) -> float | bool | None:
    """Turn a 0-d array of any framework (or a Python number) into a Python scalar."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):  # an asymmetric Value threshold: (lo, hi)
        return tuple(_scalar(v) for v in value)
    if getattr(value, "ndim", 0) > 0:  # per-tensor thresholds
        return value.tolist()
    item = getattr(value, "item", None)  # before the isinstance check: np.float64 is a float
    if item is not None:
        return item()
    if isinstance(value, (bool, int, float)):
        return value
    return float(value)


class ClipStats:
    """The result of one clipping step: the measurement, the decision and what was done.

    Array-valued fields hold 0-d arrays of the gradients' framework and device (a torch tensor in
    ``gradclip.torch``), so that reading them costs no host-device sync until you ask:
    ``float(stats.norm)``, ``bool(stats.clipped)`` or :meth:`to_dict`.

    Attributes:
        norm: Total gradient norm before clipping (the policy's norm type; 2 by default).
        clipped_norm: Total norm after clipping (same norm type). Equals ``norm`` when nothing was
            clipped, and ``norm`` when the step was skipped.
        coef: The global scale applied (``clipped_norm / norm`` for norm clipping), or ``None``
            when the method is not a single global scale (value or per-tensor clipping).
        clipped: True when the gradients were changed by clipping.
        nonfinite: True when some gradient holds NaN or Inf.
        skipped: True when the gradients were left unchanged because of non-finite values (or, for
            policies that skip spikes, because of a spike); the optimizer step should be skipped.
        threshold: The threshold actually used (``max_norm``, the clip value, an adaptive
            threshold, or a 1-D array of per-tensor thresholds), or ``None`` when the method has none.
        offenders: The non-finite tensors as :class:`gradclip.Offender` records, in parameter
            order; empty when everything is finite. Computed only when something is non-finite.
        norm_type: The order of ``norm`` and ``clipped_norm``.
        tensor_norms: 1-D array of the per-tensor norms measured before clipping, in the order of
            ``names`` (the tensors that have a gradient), or ``None`` when not measured. The
            monitor reads it for per-layer detail instead of measuring again.
        names: Names of the tensors behind ``tensor_norms``.

    Example:
        >>> import gradclip
        >>> stats = gradclip.ClipStats(norm=5.0, clipped_norm=1.0, coef=0.2, clipped=True,
        ...                            nonfinite=False, skipped=False, threshold=1.0)
        >>> stats.to_dict()["coef"]
        0.2
    """

    __slots__ = (
        "norm", "clipped_norm", "coef", "clipped", "nonfinite", "skipped", "threshold",
        "norm_type", "tensor_norms", "names", "_offenders", "_find_offenders",
    )

    def __init__(
        self,
        *,
        norm: Any,
        clipped_norm: Any,
        coef: Any,
        clipped: Any,
        nonfinite: Any,
        skipped: Any,
        threshold: Any,
        offenders: tuple[Offender, ...] | Callable[[], tuple[Offender, ...]] = (),
        norm_type: float = 2.0,
        tensor_norms: Any = None,
        names: tuple[str, ...] = (),
    ) -> None:
        self.norm = norm
        self.clipped_norm = clipped_norm
        self.coef = coef
        self.clipped = clipped
        self.nonfinite = nonfinite
        self.skipped = skipped
        self.threshold = threshold
        self.norm_type = norm_type
        self.tensor_norms = tensor_norms
        self.names = tuple(names)
        if callable(offenders):
            self._offenders, self._find_offenders = None, offenders
        else:
            self._offenders, self._find_offenders = tuple(offenders), None

    @property
    def offenders(self) -> tuple[Offender, ...]:
        """The non-finite tensors, found on first access when that was deferred."""
        if self._offenders is None:
            self._offenders = tuple(self._find_offenders()) if bool(self.nonfinite) else ()
            self._find_offenders = None
        return self._offenders

    @property
    def offender_names(self) -> tuple[str, ...]:
        """Names of the non-finite tensors, in parameter order."""
        return tuple(o.name for o in self.offenders)

    def to_dict(self) -> dict[str, Any]:
        """Python scalars for logging (fetches device values: one sync on accelerators)."""
        return {
            "norm": _scalar(self.norm),
            "clipped_norm": _scalar(self.clipped_norm),
            "coef": _scalar(self.coef),
            "clipped": bool(_scalar(self.clipped)),
            "nonfinite": bool(_scalar(self.nonfinite)),
            "skipped": bool(_scalar(self.skipped)),
            "threshold": _scalar(self.threshold),
            "norm_type": self.norm_type,
            "offenders": [o.name for o in self.offenders],
        }

    def __repr__(self) -> str:
        d = self.to_dict()
        body = ", ".join(f"{k}={v!r}" for k, v in d.items() if k != "offenders" or v)
        return f"ClipStats({body})"
