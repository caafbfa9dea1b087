"""Block RMS clipping: bound the root-mean-square of each gradient tensor.

References:
    optax ``clip_by_block_rms`` (``optax/transforms/_clipping.py``).
    Shazeer, Stern. "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018
    (arXiv:1804.04235), Section 5: update clipping by the root-mean-square.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gradclip import _validate
from gradclip._errors import ConfigError
from gradclip._policies._base import Decision, DecisionForm, Measurement, Policy

__all__ = ["BlockRMS"]


@dataclass(frozen=True)
class BlockRMS(Policy):
    """Clip each gradient tensor by its RMS: ``g_i ← g_i / max(1, rms(g_i) / threshold)``.

    ``rms(g_i) = ‖g_i‖₂ / sqrt(numel(g_i))``, so the bound does not grow with the tensor's size
    (a per-tensor norm threshold does). Each tensor keeps its direction; the direction of the
    whole gradient changes. This is ``optax.clip_by_block_rms`` and Adafactor's update clipping
    (there applied to the update, here to the gradient). An empty tensor has RMS 0.

    In JAX, ``gradclip.jax.transform(BlockRMS(c))`` is bit-identical to
    ``optax.clip_by_block_rms(c)``: it computes in the leaves' dtype and divides, as optax does.
    The other adapters multiply by the factor measured in float32, which agrees with optax to
    1-2 ulp of the gradient's dtype.

    Args:
        threshold: The largest RMS a tensor keeps, > 0 (``inf`` never clips). Default 1.0
            (Adafactor's ``d``).

    Raises:
        ConfigError: ``threshold`` <= 0 or NaN.

    References:
        optax ``clip_by_block_rms``. Shazeer & Stern, ICML 2018 (arXiv:1804.04235), Section 5.

    Example:
        >>> import numpy as np
        >>> from gradclip._ops import NumpyOps
        >>> from gradclip._policies import Measurement
        >>> m = Measurement(norm=np.float32(5.0), tensor_norms=np.array([4.0, 3.0], np.float32), sizes=(4, 1))
        >>> d, _ = BlockRMS(1.0).decide(m, {}, NumpyOps)
        >>> d.coefs.tolist()  # rms 2.0 and 3.0
        [0.5, 0.3333333432674408]
        >>> BlockRMS(0.5).spec()
        'blockrms:0.5'
    """

    threshold: float = 1.0

    spec_name = "blockrms"
    spec_positional = "threshold"
    needs_tensor_norms = True
    needs_sizes = True

    def __post_init__(self) -> None:
        value = _validate.threshold("threshold", self.threshold)
        if value == 0:
            raise ConfigError("threshold must be > 0 (0 would zero every gradient, and 0/0 makes NaN). "
                              "Received: 0.0.")
        object.__setattr__(self, "threshold", value)

    @property
    def decision_form(self) -> DecisionForm:  # type: ignore[override]
        """One factor per tensor, and the fixed threshold."""
        return DecisionForm("coefs", "fixed", self.threshold)

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        if m.sizes is None:
            raise ConfigError(
                f"{self.spec()!r} needs the element count of each gradient tensor (Measurement.sizes), and "
                "this adapter did not provide it. Received: sizes=None."
            )
        tn = m.tensor_norms
        if not len(m.sizes):  # no gradients
            return Decision(threshold=self.threshold, coefs=ops.full_like(tn, 1.0)), state
        # sqrt(numel) as constants of the norms' dtype and device (a fill each: no host-to-device copy)
        roots = ops.stack([ops.filled((), math.sqrt(max(int(n), 1)), tn) for n in m.sizes])
        rms = tn / roots
        coefs = 1.0 / ops.maximum(rms / self.threshold, 1.0)  # optax's form; NaN stays NaN
        return Decision(threshold=self.threshold, coefs=coefs), state
