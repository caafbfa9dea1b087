"""``clipped``: any gradclip policy inside any Keras 3 optimizer (every backend, ``fit`` and custom loops).

``wrap`` is the former name of :func:`clipped` and ``opt.gradclip_stats()`` of ``opt.last_stats()``;
both still work and emit a ``DeprecationWarning``.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
from keras import ops as K

from gradclip import _step, _validate
from gradclip._errors import ConfigError, InputTypeError, NonFiniteError, Offender, nonfinite_message
from gradclip._policies import Policy, _statecheck
from gradclip._policies._agc import names_only
from gradclip._spec import parse_policy
from gradclip._stats import ClipStats
from gradclip.keras._ops import KerasOps, narrowed

__all__ = ["clipped", "wrap"]

_CLASSES: dict[type, type] = {}
REGISTERED = "gradclip>ClippedOptimizer"
_FLAGS = ("clipped", "nonfinite", "skipped")


def clipped(optimizer: keras.optimizers.Optimizer, policy: Policy | str, *, nonfinite: str = "propagate",
            history: int = _step.HISTORY_CAPACITY) -> keras.optimizers.Optimizer:
    """Return a copy of a Keras optimizer that clips with ``policy`` before every update.

    The copy is an instance of a subclass of the optimizer's class (``isinstance(opt, Adam)``
    holds), built from its config; the original is not changed. Clipping happens where Keras
    applies ``clipnorm``: at the update step, after gradients are unscaled and accumulated (with
    ``gradient_accumulation_steps`` the mean accumulated gradient is clipped, once per update),
    before weight decay. The policy's state and the last step's statistics are optimizer
    variables, so they are saved and restored with the model (``.keras`` files, checkpoints)
    and work under ``jit_compile`` and every backend. ``import gradclip.keras`` before
    ``keras.models.load_model``. A restored policy state is checked before Keras assigns any
    optimizer variable (``load_model``, ``load_weights``): values the policy cannot use (a NaN
    mean, a negative variance, a count out of range) raise :class:`gradclip.StateDictError` and
    nothing is loaded. An unbounded ``AutoClip`` history keeps the last ``history``
    norms (a variable has a fixed shape).

    Layout: AGC's units follow Keras kernels ``[..., in, out]`` (one unit per output column).
    Parameter names are the variables' paths (``"dense/kernel"``).

    Args:
        optimizer: A Keras 3 optimizer without ``clipnorm``, ``clipvalue`` or ``global_clipnorm``.
        policy: Any :class:`gradclip.Policy` or spec string (``"norm:1.0"``, ``"zclip"``).
        nonfinite: ``"propagate"`` (default, as Keras: NaN spreads), ``"skip"`` (a step with a
            NaN/Inf gradient changes neither the weights nor the optimizer's slots; its
            ``iterations`` still counts), ``"zero"`` (the update uses zero gradients), or
            ``"error"`` (raise :class:`gradclip.NonFiniteError` in eager execution, e.g. the
            torch backend or ``run_eagerly=True``; a ``tf.errors.InvalidArgumentError`` with the
            same names in a TensorFlow graph).
        history: Capacity of an unbounded AutoClip history (default 10,000 norms).

    Returns:
        The clipping optimizer. ``opt.last_stats()`` returns the last step's
        :class:`gradclip.ClipStats` (``opt.gradclip_stats()`` is its deprecated former name).

    Raises:
        InputTypeError: ``optimizer`` is not a Keras optimizer.
        ConfigError: the optimizer is already wrapped or built, sets a Keras clipping argument,
            is a ``LossScaleOptimizer``; a bad policy or option; AGC excluding by layer type
            (exclude by variable path: ``exclude=("dense_1/*",)``).

    Example:
        >>> import keras, gradclip, gradclip.keras as gck
        >>> opt = gck.clipped(keras.optimizers.SGD(0.1), gradclip.GlobalNorm(1.0))
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer=opt, loss="mse")
        >>> history = model.fit(keras.ops.ones((8, 3)), keras.ops.ones((8, 1)) * 50, verbose=0)
        >>> stats = opt.last_stats()
        >>> bool(stats.clipped), round(stats.to_dict()["clipped_norm"], 4)
        (True, 1.0)
    """
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise InputTypeError(f"clipped() takes a Keras optimizer (keras.optimizers.Adam(...), ...). "
                             f"Received: {type(optimizer).__name__}.")
    if isinstance(optimizer, _ClippedMixin):
        raise ConfigError(f"This optimizer already clips with {optimizer.gradclip_policy.spec()!r}; clipping it "
                          "again would clip twice. Combine policies in one: gradclip.chain(a, b) or 'a+b'.")
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ConfigError("Clip the inner optimizer, not the LossScaleOptimizer: "
                          "LossScaleOptimizer(gradclip.keras.clipped(Adam(...), policy)).")
    set_args = {k: getattr(optimizer, k, None) for k in ("clipnorm", "clipvalue", "global_clipnorm")}
    set_args = {k: v for k, v in set_args.items() if v is not None}
    if set_args:
        raise ConfigError(
            f"This optimizer already clips ({', '.join(f'{k}={v}' for k, v in set_args.items())}). Keras would "
            "clip after gradclip (or the other way round), so the logged norm and the threshold would no longer "
            "describe the update. Remove the Keras argument and express it as the policy: global_clipnorm=c is "
            "GlobalNorm(c, semantics='keras'), clipnorm=c is PerTensorNorm(c, semantics='keras'), clipvalue=c is Value(c)."
        )
    if optimizer.built:
        raise ConfigError("clipped() needs an optimizer that has not been built yet (no apply(), fit() or build() "
                          "so far), because it builds its own copy. Pass it right after creating it.")
    policy = _step.fixed_shape(parse_policy(policy), history)
    names_only(policy, "gradclip.keras.clipped")  # no layers here to resolve AGC(exclude=(Dense,)) with
    nonfinite = _validate.choice("nonfinite", nonfinite, _validate.NONFINITE_MODES)
    cls = _clipped_class(type(optimizer))
    opt = super(_ClippedMixin, cls).from_config(optimizer.get_config())
    opt._gradclip_setup(policy, nonfinite, history)
    return opt


def wrap(optimizer: keras.optimizers.Optimizer, policy: Policy | str, *, nonfinite: str = "propagate",
         history: int = _step.HISTORY_CAPACITY) -> keras.optimizers.Optimizer:
    """Deprecated name of :func:`clipped` (the optimizer wrapper is ``clipped`` in every adapter).

    Emits a ``DeprecationWarning`` and returns ``clipped(optimizer, policy, ...)``.
    """
    warnings.warn("gradclip.keras.wrap is deprecated: use gradclip.keras.clipped (the same arguments), the name "
                  "of the optimizer wrapper in every adapter.", DeprecationWarning, stacklevel=2)
    return clipped(optimizer, policy, nonfinite=nonfinite, history=history)


def _clipped_class(base: type) -> type:
    if base not in _CLASSES:
        cls = type(f"Clipped{base.__name__}", (_ClippedMixin, base), {"__module__": __name__})
        keras.saving.register_keras_serializable("gradclip", "ClippedOptimizer")(cls)
        keras.saving.register_keras_serializable("gradclip", "ClippedOptimizer")(_ClippedMixin)
        _CLASSES[base] = cls
    return _CLASSES[base]


class _ClippedMixin:
    """Placed before a Keras optimizer class: clips in ``_clip_gradients``, keeps state in variables."""

    def _gradclip_setup(self, policy: Policy, nonfinite: str, history: int) -> None:
        self.gradclip_policy, self.gradclip_nonfinite = policy, nonfinite
        self._gc = _Scratch(history)  # a plain object: Keras must not track the variable lists in it

    # -- building -------------------------------------------------------------------------------
    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        super().build(var_list)
        names = tuple(v.path for v in var_list)
        acc = "float64" if any(keras.backend.standardize_dtype(v.dtype) == "float64" for v in var_list) else "float32"
        state, outcome = _step.initial_state(self.gradclip_policy, [tuple(v.shape) for v in var_list], names, acc)
        self._gc.names, self._gc.template = names, outcome
        self._gc.may_skip = self.gradclip_policy.can_skip
        self._gc.state = {k: self._gc_variable(f"gradclip_state_{i}", v) for i, (k, v) in enumerate(sorted(state.items()))}
        stats = {k: v for k, v in vars(outcome).items() if v is not None and not isinstance(v, (float, int, tuple))}
        self._gc.threshold = outcome.threshold if isinstance(outcome.threshold, (float, int, tuple)) else None
        self._gc.stats = {k: self._gc_variable(f"gradclip_{k}", np.zeros(np.shape(v), "float32" if k in _FLAGS else acc))
                          for k, v in sorted(stats.items())}

    def _gc_variable(self, name: str, value: Any) -> Any:
        value = np.asarray(value)
        value = value.astype(narrowed(str(value.dtype)))
        init = lambda shape, dtype=None: K.convert_to_tensor(value, dtype=str(value.dtype))  # noqa: E731
        # An initializer, not an assign: Keras may create the variable later (deferred initialization).
        return self.add_variable(shape=value.shape, dtype=str(value.dtype), initializer=init, name=name,
                                 aggregation="none")

    # -- the step -------------------------------------------------------------------------------
    def _backend_apply_gradients(self, grads: list[Any], trainable_variables: list[Any]) -> None:
        self._gc.vars = list(trainable_variables)
        try:
            super()._backend_apply_gradients(grads, trainable_variables)
        finally:
            self._gc.vars, self._gc.restore, self._gc.skip = None, None, None

    def _clip_gradients(self, grads: list[Any]) -> list[Any]:
        if not self.built:
            raise ConfigError(f"This {type(self).__name__} (from gradclip.keras.clipped) was used before it was built, "
                              "so it has no clipping state yet. Build it on the model's variables first: "
                              "optimizer.build(model.trainable_variables), or let fit()/apply(grads, variables) do it.")
        variables = self._gc.vars if self._gc.vars is not None else self._trainable_variables
        index = [self._get_variable_index(v) for v in variables]
        full = [None] * len(self._gc.names)
        for i, g in zip(index, grads):
            full[i] = K.convert_to_tensor(g) if isinstance(g, (np.ndarray, np.generic)) else g  # as clipnorm allows
        params = [v.value for v in self._trainable_variables]
        full = [K.zeros_like(p) if g is None else g for g, p in zip(full, params)]  # no gradient: measured as 0
        state = {k: v.value for k, v in self._gc.state.items()}
        mode = "skip" if self.gradclip_nonfinite == "error" else self.gradclip_nonfinite
        out, outcome, new_state = _step.run(self.gradclip_policy, full, state, KerasOps, names=self._gc.names,
                                            params=params, nonfinite=mode)
        _step.check_state(self.gradclip_policy, self._gc.state, new_state)  # static shapes: checked when traced
        _step.check_outcome(self.gradclip_policy, self._gc.template, outcome)
        if self.gradclip_nonfinite == "error":
            self._gc_check_finite(outcome, full)
        for k, var in self._gc.state.items():
            var.assign(K.cast(new_state[k], var.dtype))
        for k, var in self._gc.stats.items():
            var.assign(K.cast(K.broadcast_to(getattr(outcome, k), var.shape), var.dtype))
        if self._gc.may_skip or mode == "skip":
            self._gc.skip = outcome.skipped
            slots = self._gc_slots()
            self._gc.restore = [(v, K.copy(v.value)) for v in list(variables) + slots]
        return [out[i] for i in index]

    def _backend_update_step(self, grads: list[Any], trainable_variables: list[Any], learning_rate: Any) -> None:
        super()._backend_update_step(grads, trainable_variables, learning_rate)
        if self._gc.restore is not None:  # a skipped step: put back the weights and slots it changed
            for var, before in self._gc.restore:
                var.assign(K.where(self._gc.skip, before, var.value))

    def _gc_slots(self) -> list[Any]:
        """Optimizer variables a skipped step must not change (not ours, not counters or accumulators)."""
        ours = {id(v) for v in [*self._gc.state.values(), *self._gc.stats.values(), self._iterations]}
        ours |= {id(v) for v in (getattr(self, "_accumulated_gradients", None) or [])}
        lr = getattr(self, "_learning_rate", None)
        if lr is not None:
            ours.add(id(lr))
        return [v for v in self.variables if id(v) not in ours]

    def _gc_check_finite(self, outcome: Any, grads: list[Any]) -> None:
        norm = outcome.norm
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if not tf.executing_eagerly():
                bad = tf.boolean_mask(tf.constant(list(self._gc.names)), ~tf.math.is_finite(outcome.tensor_norms))
                tf.debugging.Assert(~outcome.nonfinite, ["gradclip: non-finite gradients in:",
                                                         tf.strings.reduce_join(bad, separator=", "), "norm:", norm])
                return
        elif keras.backend.backend() == "jax":
            import jax

            if isinstance(norm, jax.core.Tracer):
                raise ConfigError("nonfinite='error' must read the gradients on the host, which a jitted JAX step "
                                  "cannot. Compile with run_eagerly=True, or use nonfinite='skip'.")
        if bool(K.convert_to_numpy(outcome.nonfinite)):
            found = _offenders(outcome.tensor_norms, self._gc.names, grads)
            raise NonFiniteError(nonfinite_message(float(K.convert_to_numpy(norm)), self.gradclip_policy.measure_norm_type,
                                                   found), found, float(K.convert_to_numpy(norm)))

    # -- reading, saving ------------------------------------------------------------------------
    def load_own_variables(self, store: Any) -> None:
        """Check gradclip's part of a saved optimizer before Keras assigns any variable."""
        index = {id(v): str(i) for i, v in enumerate(self.variables)}
        if self._gc.state and len(store.keys()) == len(self.variables):  # else Keras skips it with a warning
            _statecheck.check_values(self.gradclip_policy,
                                     {k: np.asarray(store[index[id(v)]]) for k, v in self._gc.state.items()})
        super().load_own_variables(store)

    def last_stats(self) -> ClipStats:
        """The last step's :class:`gradclip.ClipStats`, read from the optimizer's variables (a host read).

        Raises:
            ConfigError: the optimizer has not been built yet.
        """
        if not self._gc.stats:
            raise ConfigError("The optimizer has not been built yet: run a training step first.")
        v = {k: np.asarray(K.convert_to_numpy(var.value)) for k, var in self._gc.stats.items()}
        bad = np.flatnonzero(~np.isfinite(v["tensor_norms"]))
        offenders = tuple(Offender(self._gc.names[i], int(i), (), -1, -1) for i in bad)
        return ClipStats(norm=v["norm"], clipped_norm=v["clipped_norm"], coef=v.get("coef"),
                         threshold=v.get("threshold", self._gc.threshold), offenders=offenders,
                         norm_type=self.gradclip_policy.measure_norm_type, tensor_norms=v["tensor_norms"],
                         names=self._gc.names, **{k: bool(v[k]) for k in _FLAGS})

    def gradclip_stats(self) -> ClipStats:
        """Deprecated name of :meth:`last_stats` (emits a ``DeprecationWarning``)."""
        warnings.warn("opt.gradclip_stats() is deprecated: use opt.last_stats(), the name in every adapter.",
                      DeprecationWarning, stacklevel=2)
        return self.last_stats()

    def get_config(self) -> dict[str, Any]:
        cls = self.__class__
        self.__class__ = cls.__mro__[2]  # serialize as the plain optimizer it extends
        try:
            inner = keras.saving.serialize_keras_object(self)
        finally:
            self.__class__ = cls
        return {"optimizer": inner, "policy": self.gradclip_policy.spec(), "nonfinite": self.gradclip_nonfinite,
                "history": self._gc.history}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Any:
        inner = keras.saving.deserialize_keras_object(config["optimizer"], custom_objects=custom_objects)
        return clipped(inner, config["policy"], nonfinite=config.get("nonfinite", "propagate"),
                       history=config.get("history", _step.HISTORY_CAPACITY))


class _Scratch:
    """gradclip's bookkeeping on a wrapped optimizer (variables are created by ``add_variable``)."""

    def __init__(self, history: int) -> None:
        self.history = history
        self.vars: list[Any] | None = None
        self.state: dict[str, Any] = {}
        self.stats: dict[str, Any] = {}
        self.names: tuple[str, ...] = ()
        self.threshold: Any = None
        self.template: Any = None
        self.restore: list[tuple[Any, Any]] | None = None
        self.skip: Any = None
        self.may_skip = False


def _offenders(tensor_norms: Any, names: tuple[str, ...], grads: list[Any]) -> tuple[Offender, ...]:
    out = []
    for i in np.flatnonzero(~np.isfinite(np.asarray(K.convert_to_numpy(tensor_norms)))):
        g = np.asarray(K.convert_to_numpy(grads[i]))
        out.append(Offender(names[i], int(i), g.shape, int(np.isnan(g).sum()), int(np.isinf(g).sum())))
    return tuple(out)


# Loading a saved model in a fresh process finds wrapped optimizers under this name.
keras.saving.register_keras_serializable("gradclip", "ClippedOptimizer")(_ClippedMixin)
