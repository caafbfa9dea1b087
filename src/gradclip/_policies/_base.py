"""The "decide" step: what every policy is, and what it receives and returns.

A policy turns a :class:`Measurement` of the gradients (and its own state) into a
:class:`Decision`. It is written once with the operations of :mod:`gradclip._ops`, so the same
code runs in every framework adapter and on the gradients' device. Adding a method is one small
module with one subclass of :class:`Policy`; subclasses that set ``spec_name`` become available as
method spec strings (``gradclip.parse_policy("norm:1.0")``, ``gradclip compare --method``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from gradclip._errors import ConfigError
from gradclip._ops import PolicyOps

_REGISTRY: dict[str, type[Policy]] = {}


@dataclass(frozen=True)
class Measurement:
    """What the adapter measured on the gradients before deciding.

    Attributes:
        norm: Total norm of all gradients (0-d array, order ``policy.norm_type``).
        tensor_norms: 1-D array with the norm of each gradient tensor (same order). Adapters
            must provide it when the policy sets ``needs_tensor_norms``; the torch adapter always does.
        finite: 0-d boolean array, True when every gradient element is finite.
        names: Parameter names, in the order of ``tensor_norms``.
        unit_norms: For policies that set ``needs_unit_norms``: per gradient tensor, the L2 norm
            of each unit (kept dims, broadcastable to the tensor), or ``None`` for a tensor the
            policy excludes.
        param_unit_norms: The same for the parameter values.
        sizes: Element count of each gradient tensor (a tuple of ints, in the order of
            ``tensor_norms``), or ``None`` where the adapter did not give them. Policies that
            read it (:class:`gradclip.BlockRMS`) refuse ``None``.
    """

    norm: Any
    tensor_norms: Any = None
    finite: Any = True
    names: tuple[str, ...] = ()
    unit_norms: Any = None
    param_unit_norms: Any = None
    sizes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Decision:
    """What to do to the gradients. At most one of ``coef``, ``coefs``, ``unit_coefs`` and
    ``clamp`` is set.

    Attributes:
        threshold: The threshold used (reported in :class:`gradclip.ClipStats`).
        coef: 0-d array: multiply every gradient by it.
        coefs: 1-D array: multiply gradient ``i`` by ``coefs[i]``.
        unit_coefs: Per gradient tensor, an array broadcastable to it (one factor per unit), or
            ``None`` to leave that tensor unchanged.
        clamp: ``(lo, hi)``: clamp every element into ``[lo, hi]`` (either may be ``None``).
        skip: 0-d boolean array (or ``None``): when True the gradients are zeroed, the step is
            reported as skipped and the optimizer step should not be taken. Combines with any
            of the above.
    """

    threshold: Any = None
    coef: Any = None
    coefs: Any = None
    unit_coefs: Any = None
    clamp: tuple[float | None, float | None] | None = None
    skip: Any = None

    @property
    def kind(self) -> str:
        """Which field acts on the gradients: one of :data:`DECISION_KINDS`.

        ``"none"``: the gradients are left as they are (zeroed when ``skip`` is True).
        :mod:`gradclip._apply` dispatches on this, in one place.

        Example:
            >>> Decision(coef=0.5).kind, Decision(clamp=(-1.0, 1.0)).kind, Decision().kind
            ('coef', 'clamp', 'none')
        """
        if self.coef is not None:
            return "coef"
        if self.coefs is not None:
            return "coefs"
        if self.unit_coefs is not None:
            return "units"
        return "clamp" if self.clamp is not None else "none"


#: What a decision does to the gradients (:attr:`Decision.kind`, :attr:`DecisionForm.kind`).
DECISION_KINDS = ("coef", "coefs", "units", "clamp", "none")
#: How a policy's threshold is reported (:attr:`DecisionForm.threshold`).
THRESHOLD_FORMS = ("scalar", "tensor", "fixed", "none")


@dataclass(frozen=True)
class DecisionForm:
    """The form of every decision a policy returns, declared instead of learned by running it.

    A policy's state has its final shapes from :meth:`Policy.init_state`; this says the same of
    its decisions. The functional adapters (Keras, TensorFlow, JAX) keep the last step's
    statistics in variables whose shapes they fix before the first step: whether there is one
    global factor (``ClipStats.coef``), and what the threshold is.

    Attributes:
        kind: Which field of :class:`Decision` the policy sets: ``"coef"`` (one global factor),
            ``"coefs"`` (one per tensor), ``"units"`` (per unit), ``"clamp"``, or ``"none"``
            (a measure-only policy, or a skip flag alone). Default ``"coef"``.
        threshold: ``"scalar"`` (a 0-d array, default), ``"tensor"`` (a 1-D array, one per
            gradient tensor), ``"fixed"`` (a Python number or ``(lo, hi)`` pair that never
            changes: ``fixed``) or ``"none"`` (no threshold).
        fixed: The threshold when ``threshold="fixed"``.

    Raises:
        ConfigError: an unknown ``kind`` or ``threshold``, or ``fixed`` given with another form.

    Example:
        >>> DecisionForm("coefs", threshold="tensor")
        DecisionForm(kind='coefs', threshold='tensor', fixed=None)
    """

    kind: str = "coef"
    threshold: str = "scalar"
    fixed: Any = None

    def __post_init__(self) -> None:
        if self.kind not in DECISION_KINDS:
            raise ConfigError(f"DecisionForm.kind must be one of {DECISION_KINDS}. Received: {self.kind!r}.")
        if self.threshold not in THRESHOLD_FORMS:
            raise ConfigError(
                f"DecisionForm.threshold must be one of {THRESHOLD_FORMS}. Received: {self.threshold!r}."
            )
        if (self.fixed is not None) != (self.threshold == "fixed"):
            raise ConfigError("DecisionForm takes fixed=<value> exactly when threshold='fixed'. Received: "
                              f"threshold={self.threshold!r}, fixed={self.fixed!r}.")


@dataclass(frozen=True)
class Policy:
    """Base class of clipping policies (the "decide" step).

    Subclasses are frozen dataclasses whose fields are the policy's hyper-parameters. They
    validate them in ``__post_init__`` and implement :meth:`decide`. Stateful policies also
    override :meth:`init_state`; the state is a flat ``dict`` of arrays that the adapter keeps,
    saves and restores.

    Class attributes:
        spec_name: Name in method spec strings (``"norm"``), or ``""`` for unregistered classes.
        spec_positional: Field set by an unnamed argument (``"norm:1.0"`` sets ``max_norm``).
        spec_aliases: Short keys accepted in spec strings (``{"p": "percentile"}``).
        needs_tensor_norms: Whether :meth:`decide` reads ``Measurement.tensor_norms``.
        needs_unit_norms: Whether :meth:`decide` reads the unit-wise gradient and parameter
            norms (then the policy also has ``axis`` and ``excluded(name, module_names)``).
        needs_sizes: Whether :meth:`decide` reads ``Measurement.sizes`` (the element count of each
            whole tensor: a sparse gradient is then measured dense).
        state_rules: What a loaded state's values must satisfy, by key (``{"mu": "finite"}``);
            checked with the keys, shapes and dtypes before anything is loaded. The rules are
            listed in :mod:`gradclip._policies._statecheck`.
        can_skip: Whether :meth:`decide` may return a ``skip`` flag (then an adapter keeps the
            optimizer's state to restore on a skipped step). A property where a field decides it.
        decision_form: The :class:`DecisionForm` of every decision (a property where a field
            decides it), read by the adapters that size their variables before the first step.
            Every built-in policy declares it. ``None`` (the default): not declared; such a
            policy runs in the torch adapter only (the Keras, TensorFlow and JAX adapters raise
            :class:`gradclip.ConfigError` asking for it).
    """

    spec_name: ClassVar[str] = ""
    spec_positional: ClassVar[str | None] = None
    spec_aliases: ClassVar[dict[str, str]] = {}
    needs_tensor_norms: ClassVar[bool] = False
    needs_unit_norms: ClassVar[bool] = False
    needs_sizes: ClassVar[bool] = False
    state_rules: ClassVar[dict[str, str]] = {}
    can_skip: ClassVar[bool] = False
    decision_form: ClassVar[DecisionForm | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("spec_name", "")
        if name:
            _REGISTRY[name] = cls

    @property
    def measure_norm_type(self) -> float:
        """Order of the norms the adapter measures for this policy (2 unless it has ``norm_type``)."""
        return float(getattr(self, "norm_type", 2.0))

    def members(self) -> tuple[Policy, ...]:
        """The policies that decide, in order: ``(self,)``, or a chain's members."""
        return (self,)

    def init_state(self, like: Any, ops: PolicyOps, names: tuple[str, ...] = ()) -> dict[str, Any]:
        """Return the initial state: a flat dict of arrays with their final shapes.

        Like optax's ``init(params)``, the state is complete before the first step, so a jitted
        step, a ``tf.Variable`` or a Keras variable can hold it: nothing is learned by running
        the policy. Fixed policies have none.

        Args:
            like: A 0-d array of the measured norm: state arrays take its framework, device and
                dtype (``ops.filled((n,), value, like)``), so deciding never leaves the device.
            ops: The backend's operations (:class:`gradclip._ops.PolicyOps`).
            names: The gradient tensors' names, in the order of ``Measurement.tensor_norms``
                (their count sizes per-tensor state). Empty: not known yet; a policy with
                per-tensor state then makes it at the first step (the torch adapter allows that).
        """
        return {}

    def decide(self, m: Measurement, state: dict[str, Any], ops: PolicyOps) -> tuple[Decision, dict[str, Any]]:
        """Turn a measurement and the state into a decision and the next state."""
        raise NotImplementedError

    def spec(self) -> str:
        """The spec string that :func:`gradclip.parse_policy` turns back into an equal policy.

        Raises:
            ConfigError: the policy has a value no spec string can hold (AGC excluding by type).
        """
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == self.spec_positional and value is not None:
                parts.insert(0, _fmt(value))
            elif value != f.default:
                parts.append(f"{f.name}={_fmt(value)}")
        return self.spec_name + (":" + ",".join(parts) if parts else "")


def _fmt(value: Any) -> str:
    # '1e20', not repr's '1e+20': a '+' in a spec string joins chained policies
    return repr(value).replace("e+", "e") if isinstance(value, float) else str(value)


def registry() -> dict[str, type[Policy]]:
    """Registered policies by spec name (a copy)."""
    return dict(_REGISTRY)
