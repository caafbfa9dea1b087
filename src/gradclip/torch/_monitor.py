"""The torch side of :class:`gradclip.Monitor`: measure what the Clipper did not.

Everything here stays on the gradients' device; the monitor reads the values to the host through
:func:`gradclip.monitor._fetch.fetch`, once per step (CPU) or once per ``flush_every`` steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from gradclip._errors import Offender
from gradclip._stats import ClipStats
from gradclip.torch import _measure, _params

__all__ = ["TorchStep"]


class TorchStep:
    """One optimizer step seen by the monitor: the gradients, and what the Clipper measured.

    Args:
        parameters: What ``Clipper.step`` accepts (``model``, ``named_parameters()``, ...), or
            ``None`` to use ``clip_stats`` alone (no parameter norms then).
        clip_stats: The Clipper's :class:`gradclip.ClipStats` for this step, or ``None`` to
            measure the global norm here (one foreach norm pass over the gradients).
        norm_type: Order of the norm measured when there is no ``clip_stats``.
    """

    def __init__(self, parameters: Any, clip_stats: ClipStats | None, norm_type: float = 2.0) -> None:
        named = _params.named_tensors(parameters) if parameters is not None else []
        self.all_names = [n for n, _ in named]
        self.names, self.index, self.grads = _params.with_grads(named)
        self.params = [named[i][1] for i in self.index]
        self.stats = clip_stats
        self.p = clip_stats.norm_type if clip_stats is not None else norm_type
        self.tensor_norms: torch.Tensor | None = None
        if clip_stats is not None and clip_stats.tensor_norms is not None:
            if not self.grads or len(clip_stats.tensor_norms) == len(self.grads):
                self.tensor_norms = clip_stats.tensor_norms  # the Clipper's measurement: no second pass
            if not self.grads:
                self.names = list(clip_stats.names)
        elif clip_stats is None and self.grads:
            self.tensor_norms = _measure.norms_in_order(self.grads, self.p, None, _acc(self.grads))
        if clip_stats is None and not self.grads:
            self.tensor_norms = None
        self.device = self._device()

    def _device(self) -> str:
        if self.grads:
            return self.grads[0].device.type
        norm = getattr(self.stats, "norm", None)
        return norm.device.type if isinstance(norm, torch.Tensor) else "cpu"

    def scalars(self) -> dict[str, Any]:
        """The global values of the step (0-d tensors or Python values; nothing read yet)."""
        s = self.stats
        if s is not None:
            return {"norm": s.norm, "clipped_norm": s.clipped_norm, "threshold": s.threshold, "coef": s.coef,
                    "clipped": s.clipped, "skipped": s.skipped, "nonfinite": s.nonfinite}
        if self.tensor_norms is None:
            norm = torch.tensor(0.0)
        else:
            norm = torch.linalg.vector_norm(self.tensor_norms, self.p)
        return {"norm": norm, "clipped_norm": norm, "threshold": None, "coef": None, "clipped": False,
                "skipped": False, "nonfinite": ~torch.isfinite(norm)}

    def layers(self, keep: Sequence[int]) -> tuple[list[str], torch.Tensor | None, torch.Tensor | None]:
        """Names, gradient norms and parameter norms of the tensors at positions ``keep``.

        Gradient norms are the Clipper's pre-clip measurement when it was handed over; otherwise
        they are measured now (a second pass over the kept gradients). Parameter norms cost one
        foreach norm over the kept parameters. No host read.
        """
        names = [self.names[i] for i in keep]
        if not keep:
            return names, None, None
        if self.tensor_norms is not None:
            grad_norms = self.tensor_norms[list(keep)] if len(keep) < len(self.tensor_norms) else self.tensor_norms
        else:
            grads = [self.grads[i] for i in keep]
            grad_norms = _measure.norms_in_order(grads, self.p, None, _acc(grads))
        param_norms = None
        if self.params:
            params = [self.params[i].detach() for i in keep]
            param_norms = _measure.norms_in_order(params, 2.0, None, _acc(params)).to(grad_norms.device)
        return names, grad_norms, param_norms

    def offenders(self, exact: bool) -> tuple[Offender, ...] | Callable[[], tuple[Offender, ...]]:
        """The non-finite tensors, or a function that finds them later.

        ``exact`` (CPU, read now): names with NaN/Inf counts. Otherwise the per-tensor non-finite
        flags are kept on the device and turned into names at flush time (counts -1), because the
        gradients may have changed by then.
        """
        if self.stats is not None:
            found = self.stats.offenders if exact else None
            if found is not None:
                return tuple(self._rename(o) for o in found)
            stats = self.stats
            return lambda: tuple(self._rename(o) for o in stats.offenders)
        if exact:
            return _measure.offenders(self.names, self.index, self.grads) if self.grads else ()
        if self.tensor_norms is None:
            return ()
        flags = ~torch.isfinite(self.tensor_norms)
        names, index, shapes = self.names, self.index, [tuple(g.shape) for g in self.grads]
        return lambda: tuple(Offender(names[i], index[i], shapes[i], -1, -1) for i in flags.nonzero().flatten().tolist())

    def _rename(self, o: Offender) -> Offender:
        """Give an unnamed offender (``param[i]``) the name the monitor was handed, if any."""
        if o.name.startswith("param[") and 0 <= o.index < len(self.all_names):
            name = self.all_names[o.index]
            if not name.startswith("param["):
                return Offender(name, o.index, o.shape, o.nan_count, o.inf_count)
        return o


def _acc(tensors: list[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
