"""Spike detection on the global gradient norm: a rolling mean/std z-score.

This is gradclip's one definition of a *spike*, used by the Monitor (its ``spike`` flag) and by
the report: a finite pre-clip global norm more than ``z`` = 4 standard deviations above the mean
of the previous ``window`` = 50 finite norms, judged once ``min_history`` = 10 earlier finite
norms exist. The report scores logs without ``spike`` flags (``gradclip compare`` logs) with
``SpikeDetector()`` and its defaults, and says "n/a" for a run too short to judge. A clipping
policy's own decisions (ZClip's z = 2.5, SpikeGuard's skips) are not spikes: the report counts
them as "% clipped by policy".
"""

from __future__ import annotations

import math
from collections import deque

from gradclip._errors import ConfigError

#: Largest values of the window that need no scaling (their squares, times the window, stay finite
#: and normal in float64).
_SAFE_LO, _SAFE_HI = 2.0 ** -400, 2.0 ** 400


class SpikeDetector:
    """Flags a norm whose z-score against the previous ``window`` finite norms exceeds ``z``.

    The score of step ``t`` uses steps ``t - window .. t - 1`` only (the current norm is not in its
    own baseline). Non-finite norms are never spikes (they are reported as non-finite) and are
    kept out of the window. No step is flagged before ``min_history`` finite norms were seen.
    The standard deviation is floored at ``rel_floor * |mean|`` so that a perfectly flat history
    does not flag a change in the 7th digit.

    Args:
        window: Number of previous norms in the baseline (>= 2).
        z: Threshold on ``(norm - mean) / std`` (> 0). Only upward spikes are flagged.
        min_history: Finite norms needed before flagging (default ``min(window, 10)``).
        rel_floor: Relative floor of the standard deviation (default 1e-3).

    Raises:
        ConfigError: a value out of range.

    Example:
        >>> d = SpikeDetector(window=5, z=3.0, min_history=3)
        >>> [d.update(x)[0] for x in [1.0, 1.1, 0.9, 1.0, 9.0, 1.0]]
        [False, False, False, False, True, False]
    """

    def __init__(self, window: int = 50, z: float = 4.0, min_history: int | None = None, rel_floor: float = 1e-3):
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ConfigError(f"spike_window must be an int >= 2. Received: {window!r}.")
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not (z > 0 and math.isfinite(z)):
            raise ConfigError(f"spike_z must be a finite number > 0. Received: {z!r}.")
        self.window, self.z, self.rel_floor = window, float(z), rel_floor
        self.min_history = min(window, 10) if min_history is None else max(2, min_history)
        self._values: deque[float] = deque(maxlen=window)

    def update(self, norm: float | None) -> tuple[bool, float | None]:
        """Score ``norm`` against the window, then add it. Returns ``(is_spike, z_score)``."""
        if norm is None or not math.isfinite(norm):
            return False, None
        score = None
        values = self._values
        n = len(values)
        if n >= self.min_history:
            top = max(max(values), -min(values))
            # A power of two scales exactly: the same result as unscaled, and no overflow of the
            # squares for norms near 1e308 (nor underflow near 1e-308).
            scale = 1.0 if _SAFE_LO < top < _SAFE_HI or top == 0 else math.ldexp(1.0, min(max(math.frexp(top)[1] - 1, -1022), 1023))
            if scale != 1.0:
                values = [v / scale for v in values]
            mean = sum(values) / n
            var = sum([(v - mean) * (v - mean) for v in values]) / (n - 1)
            mean, std = mean * scale, math.sqrt(var) * scale
            std = max(std, self.rel_floor * abs(mean), 1e-12)
            score = (norm - mean) / std
        self._values.append(norm)
        return (score is not None and score > self.z), score
