"""Thresholds learned from the history of gradient norms: AutoClip and a multiple of past norms.

Both policies keep their history as arrays in the state, on the gradients' device, and update it
with array operations only (no host read, no Python branch on a value). Non-finite norms are never
recorded: the state of such a step is left unchanged (selected with ``ops.where``).

Both cap their threshold at ``max_norm`` (1.0 by default, ``None`` for the published rule alone):
a threshold learned from the history of norms is only as small as the norms themselves, so it
cannot protect the first steps (no history yet) nor a run whose every norm is too large for its
learning rate. ZClip's official code keeps the same cap (``max_grad_norm=1.0``) at every step.

References:
    Seetharaman, Wichern, Pardo, Le Roux. "AutoClip: Adaptive Gradient Clipping for Source
    Separation Networks", MLSP 2020 (arXiv:2007.14469), Algorithm 1.
    Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks",
    ICML 2013 (arXiv:1211.5063), Section 3.2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradclip import _validate
from gradclip._errors import ConfigError
from gradclip._policies._base import Decision, DecisionForm, Measurement, Policy
from gradclip._policies._fixed import TORCH_EPS

__all__ = ["AutoClip", "MaxNormHistory", "capped", "history_coef"]

INF = float("inf")
#: How a history threshold becomes a scale factor (see :func:`history_coef`).
COEF_SEMANTICS = ("exact", "torch")


def history_coef(norm: Any, threshold: Any, semantics: str, ops: Any) -> Any:
    """The factor that brings ``norm`` down to ``threshold``.

    - ``"exact"``: ``threshold / norm`` when ``norm > threshold``, else exactly 1. A norm equal to
      the threshold (the first step, a new maximum under ``percentile=100``) is left bitwise
      unchanged, and the clipped norm equals the threshold. NaN when ``norm`` is not finite, so
      that ``nonfinite="propagate"`` spreads NaN as torch does.
    - ``"torch"``: ``min(1, threshold / (norm + 1e-6))``, what the AutoClip authors' code gets from
      ``torch.nn.utils.clip_grad_norm_`` (it scales by ``1 - 2e-7`` even when ``norm == threshold``).
    """
    if semantics == "torch":
        return ops.clamp(threshold / (norm + TORCH_EPS), hi=1.0)
    over = norm > threshold  # implies norm > 0, so the division below is safe where it is used
    one = ops.full_like(norm, 1.0)
    return ops.propagate_nan(ops.where(over, threshold / ops.where(over, norm, one), one), norm)


def capped(threshold: Any, max_norm: float | None, ops: Any) -> Any:
    """``min(threshold, max_norm)``; ``threshold`` unchanged (the same array) when ``max_norm`` is None."""
    return threshold if max_norm is None else ops.minimum(threshold, max_norm)


def _max_norm(value: Any) -> float | None:
    """Validate the optional cap (a threshold >= 0, ``inf`` allowed) or ``None``."""
    return None if value is None else _validate.threshold("max_norm", value)


def _recordable(m: Measurement, ops: Any) -> Any:
    """0-d bool: the step's norms may enter the history (finite gradients and a finite norm)."""
    return ops.isfinite(m.norm) & m.finite


def _insert(rows: Any, x: Any, ops: Any) -> Any:
    """Insert ``x[k]`` into each ascending row of ``rows`` (K, L) and drop the last column.

    The last column must be padding (+inf), so nothing real is dropped. O(L) elementwise work.
    """
    pos = ops.reshape(ops.searchsorted_left(rows, x), (-1, 1))
    col = ops.reshape(x, (-1, 1))
    i = ops.index_arange(rows.shape[-1], x)
    prev = ops.concat([col, rows[..., :-1]])  # prev[:, j] = rows[:, j - 1]
    return ops.where(i < pos, rows, ops.where(i == pos, col, prev))


def _remove(rows: Any, v: Any, ops: Any) -> Any:
    """Remove one copy of ``v[k]`` from each ascending row (a no-op for ``v = +inf``), pad with +inf."""
    pos = ops.reshape(ops.searchsorted_left(rows, v), (-1, 1))
    i = ops.index_arange(rows.shape[-1], v)
    nxt = ops.concat([rows[..., 1:], ops.filled((rows.shape[0], 1), INF, rows)])
    return ops.where(i < pos, rows, nxt)


def _percentile(rows: Any, count: Any, q: float, like: Any, ops: Any) -> Any:
    """``numpy.percentile(row[:count], 100 q)`` of each row (method "linear"), +inf when count is 0.

    Same arithmetic as NumPy: virtual index ``(n - 1) q`` in float64, then ``a + (b - a) t`` (or
    ``b - (b - a)(1 - t)`` when ``t >= 0.5``) between the neighbouring order statistics.
    """
    h = ops.as_float64(count - 1) * q
    lo = ops.floor(h)
    t = h - lo
    last = ops.maximum(count - 1, 0)
    lo_i = ops.minimum(ops.maximum(ops.as_int64(lo), 0), last)
    hi_i = ops.minimum(lo_i + 1, last)
    a = ops.as_float64(ops.take_last(rows, lo_i))
    b = ops.as_float64(ops.take_last(rows, hi_i))
    diff = b - a
    value = ops.where(t >= 0.5, b - diff * (1.0 - t), a + diff * t)
    return ops.as_dtype_of(ops.where(count > 0, value, INF), like)


@dataclass(frozen=True)
class AutoClip(Policy):
    """AutoClip: clip to the ``percentile``-th percentile of all gradient norms seen so far.

    Each step (Algorithm 1 of the paper, and the authors' code): append this step's global norm
    to the history, then take ``threshold = numpy.percentile(history, percentile)`` (linear
    interpolation, NumPy's default) and clip by global norm to it. ``percentile=100`` never clips,
    ``percentile=0`` clips to the running minimum (0 once a zero gradient was seen: later steps are
    then zeroed, as in the authors' code). Non-finite norms never enter the history; their step is
    decided with the history as it was.

    **Safe default: a cap.** The threshold used is ``min(percentile, max_norm)``, with
    ``max_norm=1.0`` by default. The paper has no warm-up: on the first step the history holds
    only that step's norm, so the percentile is the norm itself and nothing is clipped, and for a
    while the percentile of a few large norms is large too. Only an absolute cap protects those
    steps, and it has to stay: a percentile of norms that are all too large for the learning rate
    is too large as well (on ``gradclip compare --task regression``, norms of 300-2000 at lr 0.07,
    a cap for the first 25 or 100 steps only still leaves the network dead at its initial loss,
    and no cap at all ends at 1.8e12 or stalls, where the cap trains like ``norm:1.0``). The cap
    is the default ``max_grad_norm=1.0`` of ZClip's official code, applied the same way. It never
    feeds the history (the raw norms do, as in the paper), and norms below ``max_norm`` never
    meet it. ``max_norm=None`` is the paper's and the authors' code's exact rule.

    Data structure and cost: the history is kept **sorted** in the state (``"sorted"``, shape
    ``(K, L)`` padded with +inf; K = 1 row, or one row per tensor with ``scope="tensor"``), with
    the number of stored norms ``"count"`` as a 0-d int64 array. Inserting is a searchsorted plus
    one elementwise shift, and the percentile is two gathers: per step O(log L) + O(L) device work
    and O(1) host work (a fixed number of kernel launches), no host read. Without ``window`` the
    buffer grows by exactly one slot per call (L = number of calls): the fill level lives on the
    device, so a doubling buffer could only grow on a host read, while the functional shift already
    rewrites all L slots each step, so growing by one costs nothing more asymptotically (memory:
    4 or 8 bytes per step and tensor). With ``window=N`` the shape is fixed at ``(K, N)``: a ring
    buffer ``"ring"`` of the raw norms and ``"head"`` (next slot) say which norm leaves the sorted
    buffer before the new one enters; per step O(N). That fixed shape is what ``torch.compile``
    (``fullgraph=True``), ``tf.function`` and ``jax.jit`` need: pass ``window=N`` there (the
    functional adapters bound an unbounded history to the last 10,000 norms themselves), since a
    history that grows by one slot is a new graph every step.

    Args:
        percentile: p in [0, 100]. Default 10 (the paper's recommendation). Spec alias ``p``.
        window: Keep only the last ``window`` recorded norms (int, 1 to 2**24), or ``None`` (default)
            for the whole history, as in the paper.
        scope: ``"global"`` (default): one history of the global norm, clip by global norm.
            ``"tensor"``: one history per gradient tensor, each tensor clipped to the percentile
            of its own norms (the number of tensors must stay the same from step to step).
        semantics: ``"exact"`` (default: ``threshold / norm`` only when ``norm > threshold``,
            else the gradients are left bitwise unchanged) or ``"torch"`` (the authors'
            ``clip_grad_norm_`` factor ``min(1, threshold / (norm + 1e-6))``); see
            :func:`history_coef`.
        max_norm: Cap on the threshold, >= 0 (``inf`` allowed), applied at every step (per
            tensor with ``scope="tensor"``), or ``None`` for the paper's rule alone. Default 1.0.
            Spec alias ``cap``.

    Raises:
        ConfigError: ``percentile`` outside [0, 100] or not a number, ``window`` not an int >= 1,
            unknown ``scope`` or ``semantics``, ``max_norm`` negative or NaN; at a step, a changed
            number of tensors under ``scope="tensor"``.

    References:
        Seetharaman, Wichern, Pardo, Le Roux. "AutoClip: Adaptive Gradient Clipping for Source
        Separation Networks", MLSP 2020 (arXiv:2007.14469).

    Example:
        >>> import numpy as np
        >>> from gradclip._ops import NumpyOps
        >>> from gradclip._policies._base import Measurement
        >>> from gradclip._policies._history import AutoClip
        >>> policy = AutoClip(percentile=50, max_norm=None)  # the paper's rule
        >>> state = policy.init_state(np.float64(0.0), NumpyOps)
        >>> for norm in [1.0, 3.0, 2.0, 10.0]:
        ...     d, state = policy.decide(Measurement(norm=np.float64(norm)), state, NumpyOps)
        >>> float(d.threshold), float(d.coef)  # median of [1, 3, 2, 10]; 10 is clipped to 2.5
        (2.5, 0.25)
        >>> d, _ = AutoClip(50).decide(Measurement(norm=np.float64(300.0)), state, NumpyOps)
        >>> float(d.threshold)  # the default cap: min(median of [1, 2, 3, 10, 300], 1.0)
        1.0
        >>> AutoClip(25.0, window=50, max_norm=None).spec()
        'autoclip:25.0,window=50,max_norm=None'
    """

    percentile: float = 10.0
    window: int | None = None
    scope: str = "global"
    semantics: str = "exact"
    max_norm: float | None = 1.0

    spec_name = "autoclip"
    spec_positional = "percentile"
    spec_aliases = {"p": "percentile", "cap": "max_norm"}
    state_rules = {"sorted": "nonnegative,per_tensor,with=ring", "count": "nonnegative,max=@sorted,with=sorted",
                   "ring": "nonnegative,per_tensor,with=sorted", "head": "nonnegative,below=window,with=ring"}

    def __post_init__(self) -> None:
        p = _validate.real("percentile", self.percentile, "a number in [0, 100]")
        if not 0.0 <= p <= 100.0:
            raise ConfigError(f"percentile must be a number in [0, 100]. Received: {p!r}.")
        object.__setattr__(self, "percentile", p)
        object.__setattr__(self, "window", _window(self.window, allow_none=True))
        _validate.choice("scope", self.scope, ("global", "tensor"))
        _validate.choice("semantics", self.semantics, COEF_SEMANTICS)
        object.__setattr__(self, "max_norm", _max_norm(self.max_norm))

    @property
    def needs_tensor_norms(self) -> bool:  # type: ignore[override]
        return self.scope == "tensor"

    @property
    def decision_form(self) -> DecisionForm:  # type: ignore[override]
        return DecisionForm("coef") if self.scope == "global" else DecisionForm("coefs", "tensor")

    def init_state(self, like: Any, ops: Any, names: tuple[str, ...] = ()) -> dict[str, Any]:
        rows = 1 if self.scope == "global" else len(names)  # no names: per-tensor rows come at the first step
        state = {"sorted": ops.filled((rows, self.window or 0), INF, like), "count": ops.index_scalar(0, like)}
        if self.window is not None:
            state["ring"] = ops.filled((rows, self.window), INF, like)
            state["head"] = ops.index_scalar(0, like)
        return state

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        x = ops.reshape(m.norm, (1,)) if self.scope == "global" else m.tensor_norms
        state = self._rows_for(x, state, ops)
        ok = _recordable(m, ops)
        count = state["count"]
        if self.window is None:
            rows = ops.concat([state["sorted"], ops.filled((x.shape[0], 1), INF, x)])
            new = {"sorted": ops.where(ok, _insert(rows, x, ops), rows)}
        else:
            ring, head = state["ring"], state["head"]
            rows = _insert(_remove(state["sorted"], ops.take_last(ring, head), ops), x, ops)
            slot = ops.index_arange(self.window, x) == head
            new = {
                "sorted": ops.where(ok, rows, state["sorted"]),
                "ring": ops.where(ok & slot, ops.reshape(x, (-1, 1)), ring),
                "head": ops.where(ok, (head + 1) % self.window, head),
            }
            count = ops.minimum(count + 1, self.window) - 1  # so that the shared update below caps it
        new["count"] = ops.where(ok, count + 1, state["count"])
        threshold = _percentile(new["sorted"], new["count"], self.percentile / 100.0, x, ops)
        threshold = capped(threshold, self.max_norm, ops)
        if self.scope == "global":
            threshold = ops.reshape(threshold, ())
            return Decision(threshold=threshold, coef=history_coef(m.norm, threshold, self.semantics, ops)), new
        coefs = ops.propagate_nan(history_coef(m.tensor_norms, threshold, self.semantics, ops), m.norm)
        return Decision(threshold=threshold, coefs=coefs), new  # one threshold per tensor (1-D)

    def _rows_for(self, x: Any, state: dict[str, Any], ops: Any) -> dict[str, Any]:
        """Per-tensor scope: make the rows at the first step; refuse a changed tensor count."""
        k, rows = x.shape[0], state["sorted"].shape[0]
        if rows == k:
            return state
        if rows == 0:
            width = state["sorted"].shape[-1]
            out = dict(state, sorted=ops.filled((k, width), INF, x))
            if "ring" in state:
                out["ring"] = ops.filled((k, self.window), INF, x)
            return out
        raise ConfigError(
            f"AutoClip(scope='tensor') keeps one history per gradient tensor and was started with "
            f"{rows} tensors, but this step has {k}. Pass the same parameters (all with gradients) "
            "every step, or use scope='global'."
        )


@dataclass(frozen=True)
class MaxNormHistory(Policy):
    """Clip by global norm to ``factor`` × the mean (or max) norm of the previous ``window`` steps.

    Pascanu et al. (2013) suggest a threshold of 5 to 10 times the average norm over a
    sufficiently large number of updates. The current step is **not** part of its own
    threshold (a spike cannot raise the bar it is measured against). Non-finite norms are not
    recorded.

    **Safe default: a cap.** The threshold used is ``min(factor x stat, max_norm)`` with
    ``max_norm=1.0`` by default; until one finite norm has been recorded there is no statistic and
    the threshold is ``max_norm`` alone. Without the cap the first step is never clipped and the
    threshold is 5x norms that may already be too large (``maxhist:5,max_norm=none`` diverges at
    step 6 on ``gradclip compare --task regression``). ``max_norm=None`` is Pascanu et al.'s rule
    alone (threshold +inf before the first recorded norm).

    State: a ring buffer ``"ring"`` of the last ``window`` recorded norms (zeros where empty),
    ``"count"`` and ``"head"`` (0-d, in the norm's dtype). Per step O(window) device work (the
    mean is recomputed from the buffer, so no running sum drifts), no host read.

    Args:
        factor: Multiplier of the statistic, > 0. Default 5.0.
        window: Number of past recorded norms (int, 1 to 2**24). Default 100.
        stat: ``"mean"`` (default) or ``"max"`` of the window.
        semantics: ``"exact"`` (default) or ``"torch"``, as for :class:`AutoClip`
            (see :func:`history_coef`).
        max_norm: Cap on the threshold, >= 0 (``inf`` allowed), applied at every step, or
            ``None`` for the rule alone. Default 1.0. Spec alias ``cap``.

    Raises:
        ConfigError: ``factor`` <= 0 or NaN, ``window`` not an int >= 1, unknown ``stat`` or
            ``semantics``, ``max_norm`` negative or NaN.

    References:
        Pascanu, Mikolov, Bengio. "On the difficulty of training recurrent neural networks",
        ICML 2013 (arXiv:1211.5063), Section 3.2.

    Example:
        >>> import numpy as np
        >>> from gradclip._ops import NumpyOps
        >>> from gradclip._policies._base import Measurement
        >>> from gradclip._policies._history import MaxNormHistory
        >>> policy = MaxNormHistory(factor=2.0, window=3, max_norm=None)
        >>> state = policy.init_state(np.float64(0.0), NumpyOps)
        >>> for norm in [1.0, 2.0, 3.0, 10.0]:
        ...     d, state = policy.decide(Measurement(norm=np.float64(norm)), state, NumpyOps)
        >>> float(d.threshold), float(d.coef)  # 2 x mean(1, 2, 3); 10 is clipped to 4
        (4.0, 0.4)
    """

    factor: float = 5.0
    window: int = 100
    stat: str = "mean"
    semantics: str = "exact"
    max_norm: float | None = 1.0

    spec_name = "maxhist"
    decision_form = DecisionForm("coef")
    spec_positional = "factor"
    spec_aliases = {"cap": "max_norm"}
    state_rules = {"ring": "finite,nonnegative", "count": "integer,nonnegative,max=window,with=ring",
                   "head": "integer,nonnegative,below=window,with=ring"}

    def __post_init__(self) -> None:
        factor = _validate.threshold("factor", self.factor)
        if factor == 0:
            raise ConfigError("factor must be > 0 (the threshold is factor x the past norms). Received: 0.0.")
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "window", _window(self.window, allow_none=False))
        _validate.choice("stat", self.stat, ("mean", "max"))
        _validate.choice("semantics", self.semantics, COEF_SEMANTICS)
        object.__setattr__(self, "max_norm", _max_norm(self.max_norm))

    def init_state(self, like: Any, ops: Any, names: tuple[str, ...] = ()) -> dict[str, Any]:
        return {"ring": ops.filled((self.window,), 0.0, like), "count": ops.scalar(0.0, like), "head": ops.scalar(0.0, like)}

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        ring, count, head = state["ring"], state["count"], state["head"]
        if self.stat == "mean":
            stat = ops.sum(ring) / ops.maximum(count, 1.0)
        else:
            stat = ops.amax(ring)  # norms are >= 0, so the empty (zero) slots never win
        threshold = capped(ops.where(count > 0, self.factor * stat, INF), self.max_norm, ops)
        ok = _recordable(m, ops)
        slot = ops.arange(self.window, ring) == head
        new = {
            "ring": ops.where(ok & slot, m.norm, ring),
            "count": ops.where(ok, ops.minimum(count + 1.0, float(self.window)), count),
            "head": ops.where(ok, (head + 1.0) % self.window, head),
        }
        return Decision(threshold=threshold, coef=history_coef(m.norm, threshold, self.semantics, ops)), new


def _window(value: Any, *, allow_none: bool) -> int | None:
    return _validate.integer("window", value, allow_none=allow_none)

