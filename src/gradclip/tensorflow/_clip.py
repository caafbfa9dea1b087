"""``clip`` and ``Clipper`` for TensorFlow ``GradientTape`` loops (eager and ``tf.function``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from gradclip import _step, _validate
from gradclip._errors import ConfigError, InputTypeError, NonFiniteError, Offender, StateDictError, nonfinite_message
from gradclip._policies import Policy, _statecheck
from gradclip._policies._agc import names_only
from gradclip._spec import parse_policy
from gradclip._stats import ClipStats
from gradclip.tensorflow._ops import TFOps

__all__ = ["Clipper", "clip"]

SPARSE_MODES = ("combine", "values")


def clip(grads: Sequence[Any], policy: Policy | str, *, variables: Sequence[Any] | None = None,
         nonfinite: str = "propagate", sparse: str | None = None) -> tuple[list[Any], ClipStats]:
    """Clip a list of gradients with a policy that keeps no state; return ``(grads, stats)``.

    The functional form for ``GradientTape`` loops, eager or inside ``tf.function`` (no Python
    branch on a tensor value). ``None`` entries pass through; ``tf.IndexedSlices`` stay
    ``IndexedSlices``. Policies with state (AutoClip, ZClip, AdaGC, SpikeGuard, history) need
    :class:`Clipper`, which keeps the state in ``tf.Variable``\\ s.

    With ``GlobalNorm(c, semantics="tf")``, ``PerTensorNorm(c, semantics="tf")`` and
    ``Value(c)`` the results equal ``tf.clip_by_global_norm``, ``tf.clip_by_norm`` and
    ``tf.clip_by_value``.

    Args:
        grads: Gradients from ``tape.gradient`` (tensors, ``IndexedSlices`` or ``None``).
        policy: A stateless :class:`gradclip.Policy` or spec string (``"norm:1.0"``).
        variables: The variables, in the order of ``grads``: they name the tensors in
            ``stats.offenders`` and are required by AGC (which reads their values).
        nonfinite: ``"propagate"`` (default), ``"skip"`` (gradients unchanged,
            ``stats.skipped`` True: skip ``apply_gradients`` with ``tf.cond``), ``"zero"``, or
            ``"error"`` (raise :class:`gradclip.NonFiniteError`; eager only, in a graph it raises
            ``tf.errors.InvalidArgumentError`` with the same message).
        sparse: How ``IndexedSlices`` with repeated indices are measured. ``"combine"`` (default):
            repeated rows are summed first (the dense gradient is what gets measured and clipped;
            the result has unique indices). ``"values"``: the stored rows as they are, as
            TensorFlow's ``clip_by_*`` do; the default when the policy has ``semantics="tf"``
            or ``"keras"``.

    Returns:
        ``(clipped_grads, stats)``: a list like ``grads`` and a :class:`gradclip.ClipStats` of
        0-d tensors.

    Raises:
        ConfigError: a stateful policy, AGC without ``variables``, a bad option.
        InputTypeError: ``grads`` is not a list of tensors / ``IndexedSlices`` / ``None``.
        NonFiniteError: ``nonfinite="error"`` and a NaN/Inf gradient (eager).

    Example:
        >>> import tensorflow as tf, gradclip, gradclip.tensorflow as gtf
        >>> grads = [tf.constant([3.0, 4.0]), None]
        >>> clipped, stats = gtf.clip(grads, gradclip.GlobalNorm(1.0, semantics="tf"))
        >>> [round(float(v), 2) for v in clipped[0]], clipped[1], round(float(stats.norm), 2)
        ([0.6, 0.8], None, 5.0)
    """
    policy = parse_policy(policy)
    names_only(policy, "gradclip.tensorflow.clip")
    if policy.init_state(tf.constant(0.0), TFOps):
        raise ConfigError(
            f"{policy.spec()!r} keeps state from step to step, which clip() cannot hold. Use "
            "gradclip.tensorflow.Clipper(policy): its state lives in tf.Variables and it works "
            "inside tf.function."
        )
    return _clip(policy, grads, variables, {}, _validate.choice("nonfinite", nonfinite, _validate.NONFINITE_MODES),
                 _sparse_mode(sparse, policy))[:2]


class Clipper(tf.Module):
    """Clip TensorFlow gradients with any policy, keeping its state in ``tf.Variable``\\ s.

    Call it once per step, between ``tape.gradient`` and ``optimizer.apply_gradients``, eager or
    inside ``tf.function``. The state variables are created at the first call (so the first call
    may be inside the traced function) and are tracked by ``tf.train.Checkpoint``; the last
    step's statistics are kept too, for :meth:`last_stats` and :class:`gradclip.Monitor`. A
    checkpoint restored before the first call is checked when the variables are made; after a
    restore into a Clipper that has already run, call :meth:`validate`.
    An unbounded ``AutoClip`` history keeps the last ``history`` norms (a variable has a fixed
    shape).

    Args:
        policy: Any :class:`gradclip.Policy` or spec string.
        nonfinite: As in :func:`clip`. With ``"skip"`` and ``"error"`` a non-finite step never
            changes the state.
        sparse: As in :func:`clip`.
        history: Capacity of an unbounded AutoClip history (default 10,000 norms).

    Example:
        >>> import tensorflow as tf, gradclip, gradclip.tensorflow as gtf
        >>> w = tf.Variable([1.0, 2.0], name="w")
        >>> clipper = gtf.Clipper(gradclip.AutoClip(percentile=50))
        >>> for scale in [1.0, 3.0, 2.0]:
        ...     with tf.GradientTape() as tape:
        ...         loss = scale * tf.reduce_sum(w * w)
        ...     grads, stats = clipper(tape.gradient(loss, [w]), [w])
        >>> round(float(stats.threshold), 3) == round(float(clipper.last_stats().threshold), 3)
        True
    """

    def __init__(self, policy: Policy | str, *, nonfinite: str = "propagate", sparse: str | None = None,
                 history: int = _step.HISTORY_CAPACITY, name: str | None = None) -> None:
        super().__init__(name=name)
        self.policy = _step.fixed_shape(parse_policy(policy), history)
        names_only(self.policy, "gradclip.tensorflow.Clipper")  # no modules here to resolve AGC(exclude=(type,))
        self.nonfinite = _validate.choice("nonfinite", nonfinite, _validate.NONFINITE_MODES)
        self.sparse = _sparse_mode(sparse, self.policy)
        self.state: dict[str, tf.Variable] | None = None
        self.stats_vars: dict[str, tf.Variable] | None = None
        self._names: tuple[str, ...] = ()
        self._threshold: Any = None
        self._template: Any = None

    def __call__(self, grads: Sequence[Any], variables: Sequence[Any] | None = None) -> tuple[list[Any], ClipStats]:
        """Clip ``grads`` (``variables`` name them, and AGC reads them); return ``(grads, stats)``."""
        grads = list(grads)
        if self.state is None:
            self._build(grads, variables)
        got = sum(g is not None for g in grads)
        if got != len(self._names):
            raise InputTypeError(
                f"This Clipper was built on {len(self._names)} gradient(s) and received {got} (of {len(grads)}, None "
                "excluded): its per-tensor state and statistics belong to the first set. Pass the same variables' "
                "gradients every step, or use one Clipper per set of variables.")
        state = {k: v.read_value() for k, v in self.state.items()}
        out, stats, new = _clip(self.policy, grads, variables, state, self.nonfinite, self.sparse)
        _step.check_state(self.policy, self.state, new)  # static shapes: checked when traced
        _step.check_outcome(self.policy, self._template, stats)
        for k, v in new.items():
            self.state[k].assign(tf.cast(v, self.state[k].dtype))
        for k, var in self.stats_vars.items():
            value = getattr(stats, k)
            var.assign(tf.cast(tf.broadcast_to(value, var.shape), var.dtype))
        return out, stats

    def validate(self) -> None:
        """Check the policy state held in the variables, as ``torch``'s ``load_state_dict`` does.

        ``tf.train.Checkpoint`` restores the variables itself, so gradclip checks them when they
        are made (a checkpoint restored before the first call is checked there, and a bad one is
        replaced by the initial state before the error is raised). Call this after restoring into
        a Clipper that has already run (one host read; eager only).

        Raises:
            StateDictError: a value the policy cannot use (a NaN mean, a negative variance, a count
                or ring position out of range), naming the key, what was found and what was expected.
        """
        if self.state is not None:
            with tf.init_scope():
                _statecheck.check_values(self.policy, {k: v.numpy() for k, v in self.state.items()})

    def last_stats(self) -> ClipStats:
        """The statistics of the last step, read from the variables (a host read)."""
        if self.stats_vars is None:
            raise ConfigError("This Clipper has not run a step yet; call it on gradients first.")
        v = {k: var.numpy() for k, var in self.stats_vars.items()}
        flags = {k: bool(v[k]) for k in ("clipped", "nonfinite", "skipped")}
        names = self._names
        bad = ~np.isfinite(v["tensor_norms"])
        offenders = tuple(Offender(names[i], i, (), -1, -1) for i in np.flatnonzero(bad))
        return ClipStats(norm=v["norm"], clipped_norm=v["clipped_norm"], coef=v.get("coef"),
                         threshold=v.get("threshold", self._threshold), offenders=offenders,
                         norm_type=self.policy.measure_norm_type, tensor_norms=v["tensor_norms"], names=names, **flags)

    def _build(self, grads: list[Any], variables: Sequence[Any] | None) -> None:
        dense = [g for g in grads if g is not None]
        names = _names(grads, variables)
        self._names = tuple(n for n, g in zip(names, grads) if g is not None)
        acc = TFOps.acc_dtype([_values(g) for g in dense])
        shapes = [tuple(_values(g).shape) for g in dense]
        state, outcome = _step.initial_state(self.policy, shapes, self._names, acc.as_numpy_dtype)
        self._template = outcome
        if isinstance(outcome.threshold, (float, int, tuple)):  # fixed: not a variable
            self._threshold = outcome.threshold
        with tf.init_scope():  # variables are created eagerly even inside tf.function
            self.state = {k: tf.Variable(np.asarray(v), trainable=False, name=_var_name(k)) for k, v in state.items()}
            try:  # a checkpoint restored before this call fills the variables as they are made
                self.validate()
            except StateDictError:
                for k, v in state.items():
                    self.state[k].assign(np.asarray(v))
                raise
            self.stats_vars = {
                k: tf.Variable(np.zeros(np.shape(v), np.asarray(v).dtype if k != "threshold" else acc.as_numpy_dtype),
                               trainable=False, name=f"stats_{k}")
                for k, v in vars(outcome).items() if v is not None and not isinstance(v, (float, int, tuple))
            }


def _clip(policy: Policy, grads: Sequence[Any], variables: Sequence[Any] | None, state: dict[str, Any],
          nonfinite: str, sparse: str) -> tuple[list[Any], ClipStats, dict[str, Any]]:
    grads = _check(grads)
    names = _names(grads, variables)
    keep = [i for i, g in enumerate(grads) if g is not None]
    if not keep:
        zero = tf.constant(0.0)
        false = tf.constant(False)
        return list(grads), ClipStats(norm=zero, clipped_norm=zero, coef=None, clipped=false, nonfinite=false,
                                      skipped=false, threshold=None, norm_type=policy.measure_norm_type), state
    dense_needed = policy.needs_unit_norms or policy.needs_sizes  # unit norms, or the RMS over a whole tensor
    prepared = [_prepare(grads[i], sparse, dense_needed) for i in keep]
    values = [_values(g) for g in prepared]
    params = None if variables is None else [tf.convert_to_tensor(variables[i]) for i in keep]
    kept_names = tuple(names[i] for i in keep)
    mode = "skip" if nonfinite == "error" else nonfinite
    new_values, outcome, new_state = _step.run(policy, values, state, TFOps, names=kept_names, params=params,
                                               nonfinite=mode)
    if nonfinite == "error":
        _raise_if_nonfinite(outcome, kept_names, policy.measure_norm_type, values)
    out = list(grads)
    for i, g, v in zip(keep, prepared, new_values):
        out[i] = tf.IndexedSlices(v, g.indices, g.dense_shape) if isinstance(g, tf.IndexedSlices) else v
    stats = ClipStats(
        norm=outcome.norm, clipped_norm=outcome.clipped_norm, coef=outcome.coef, clipped=outcome.clipped,
        nonfinite=outcome.nonfinite, skipped=outcome.skipped, threshold=outcome.threshold,
        offenders=lambda: _offenders(outcome.tensor_norms, kept_names, values), norm_type=policy.measure_norm_type,
        tensor_norms=outcome.tensor_norms, names=kept_names,
    )
    return out, stats, new_state


def _check(grads: Any) -> list[Any]:
    if isinstance(grads, (tf.Tensor, tf.Variable, tf.IndexedSlices)) or not isinstance(grads, Sequence):
        raise InputTypeError(
            "grads must be a list of gradients (tensors, tf.IndexedSlices or None), as returned by "
            f"tape.gradient(loss, variables). Received: {type(grads).__name__}."
        )
    for g in grads:
        if g is not None and not isinstance(g, tf.IndexedSlices) and not tf.is_tensor(g):
            raise InputTypeError(f"Every gradient must be a tensor, tf.IndexedSlices or None. Received: {type(g).__name__}.")
    return list(grads)


def _prepare(g: Any, sparse: str, dense: bool) -> Any:
    """Make an IndexedSlices what is measured: dense (AGC), combined rows, or as stored."""
    if not isinstance(g, tf.IndexedSlices):
        return g
    if dense:
        return tf.convert_to_tensor(g)
    if sparse == "values":
        return g
    unique, pos = tf.unique(g.indices)
    summed = tf.math.unsorted_segment_sum(g.values, pos, tf.shape(unique)[0])
    return tf.IndexedSlices(summed, unique, g.dense_shape)


def _values(g: Any) -> Any:
    return g.values if isinstance(g, tf.IndexedSlices) else tf.convert_to_tensor(g)


def _names(grads: Sequence[Any], variables: Sequence[Any] | None) -> list[str]:
    if variables is None:
        return [f"grads[{i}]" for i in range(len(grads))]
    variables = list(variables)
    if len(variables) != len(grads):
        raise ConfigError(f"variables must match grads one to one. Received {len(variables)} variables for "
                          f"{len(grads)} gradients.")
    return [getattr(v, "path", None) or getattr(v, "name", None) or f"grads[{i}]" for i, v in enumerate(variables)]


def _sparse_mode(sparse: str | None, policy: Policy) -> str:
    if sparse is not None:
        return _validate.choice("sparse", sparse, SPARSE_MODES)
    tf_like = any(getattr(p, "semantics", None) in ("tf", "keras") for p in policy.members())
    return "values" if tf_like else "combine"


def _offenders(tensor_norms: Any, names: tuple[str, ...], values: list[Any]) -> tuple[Offender, ...]:
    bad = np.flatnonzero(~np.isfinite(np.asarray(tensor_norms)))
    out = []
    for i in bad:
        v = values[i].numpy()
        out.append(Offender(names[i], int(i), tuple(v.shape), int(np.isnan(v).sum()), int(np.isinf(v).sum())))
    return tuple(out)


def _raise_if_nonfinite(outcome: Any, names: tuple[str, ...], p: float, values: list[Any]) -> None:
    if tf.executing_eagerly():
        if bool(outcome.nonfinite):
            found = _offenders(outcome.tensor_norms, names, values)
            raise NonFiniteError(nonfinite_message(float(outcome.norm), p, found), found, float(outcome.norm))
        return
    bad = tf.strings.reduce_join(tf.boolean_mask(tf.constant(list(names)), ~tf.math.is_finite(outcome.tensor_norms)),
                                 separator=", ")
    tf.debugging.Assert(~outcome.nonfinite, ["gradclip: non-finite gradients in:", bad, "total norm:", outcome.norm])


def _var_name(key: str) -> str:
    return "state_" + "".join(c if c.isalnum() or c in "_-" else "_" for c in key)
