"""Adaptive gradient clipping (AGC): clip each unit's gradient relative to its weight's norm.

References:
    Brock, De, Smith, Simonyan. "High-Performance Large-Scale Image Recognition Without
    Normalization", ICML 2021 (arXiv:2102.06171), Section 4.1.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gradclip import _validate
from gradclip._errors import ConfigError
from gradclip._policies._base import Decision, DecisionForm, Measurement, Policy

__all__ = ["AGC", "names_only", "optax_unit_axes", "unit_axes"]

#: Where the "unit" (output row, filter) sits in a weight, per framework.
LAYOUTS = ("torch", "jax", "keras")
#: Whose AGC arithmetic to reproduce: the paper's / timm's (default) or optax's.
SEMANTICS = ("torch", "optax")
GRAD_FLOOR = 1e-6


def unit_axes(ndim: int, layout: str, axis: int | Sequence[int] | None = None) -> tuple[int, ...] | None:
    """Axes to reduce over to get one norm per unit; ``None`` means the whole tensor.

    PyTorch weights are ``[out, in, *kernel]``: reduce every axis but the first. JAX/Keras
    kernels are ``[*kernel, in, out]``: reduce every axis but the last. Vectors and scalars are
    one unit. An explicit ``axis`` wins for tensors of rank >= 2 (a bias stays one unit, so
    ``axis=(0, 1)`` does not name its one axis twice).

    Example:
        >>> unit_axes(4, "torch"), unit_axes(4, "jax"), unit_axes(1, "torch"), unit_axes(1, "torch", (0, 1))
        ((1, 2, 3), (0, 1, 2), None, None)
    """
    if ndim <= 1:
        return None
    if axis is not None:
        return tuple(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))
    return tuple(range(1, ndim)) if layout == "torch" else tuple(range(ndim - 1))


def optax_unit_axes(shape: tuple[int, ...], axis: int | Sequence[int] | None = None) -> tuple[int, ...] | None:
    """``optax.adaptive_grad_clip``'s unit axes (``optax.unitwise_norm``) for ``[..., in, out]`` kernels.

    A tensor whose squeezed rank is <= 1 is one unit (a ``(1, n)`` kernel too); rank 2 and 3
    (multi-head ``[in, heads, out]``) reduce axis 0; rank 4 ``(0, 1, 2)``; rank 5 ``(0, 1, 2, 3)``.
    An explicit ``axis`` is used for every tensor, vectors included, as optax does.

    Raises:
        ConfigError: rank 6 or more without ``axis`` (optax has no rule for it), or an ``axis``
            outside the tensor's rank.

    Example:
        >>> optax_unit_axes((3, 4, 5)), optax_unit_axes((1, 7)), optax_unit_axes((2, 3, 4, 5))
        ((0,), None, (0, 1, 2))
    """
    ndim = len(shape)
    if axis is not None:
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        if any(not -ndim <= a < ndim for a in axes):
            raise ConfigError(f"AGC axis={axis!r} does not fit a tensor of shape {tuple(shape)}. Received: "
                              f"a rank-{ndim} tensor. Exclude it (exclude=...) or pass axes within its rank.")
        return tuple(a % ndim for a in axes)
    if sum(d != 1 for d in shape) <= 1:  # jnp.squeeze(x).ndim <= 1
        return None
    rules = {2: (0,), 3: (0,), 4: (0, 1, 2), 5: (0, 1, 2, 3)}
    if ndim not in rules:
        raise ConfigError(f"AGC(semantics='optax') has unit rules for ranks 1 to 5, as optax. Received: a tensor "
                          f"of shape {tuple(shape)}. Pass axis=... for it, or exclude it.")
    return rules[ndim]


@dataclass(frozen=True)
class AGC(Policy):
    """Adaptive gradient clipping, unit-wise: ``G_i ← λ·max(‖W_i‖, ε)/max(‖G_i‖, 1e-6)·G_i``
    when ``‖G_i‖ / max(‖W_i‖, ε) > λ``; other units are left bitwise unchanged.

    A unit is an output row of a linear weight or an output filter of a convolution; biases,
    gains and scalars are one unit each. AGC never scales a gradient up, and a zero-initialised
    weight still gets gradient (its norm is floored at ``eps``).

    Args:
        clip_factor: λ > 0. Default 0.01 (the paper uses 0.01 for batch size 4096 and larger λ
            for smaller batches).
        eps: ε >= 0, the floor on ‖W_i‖. Default 1e-3 (the paper's value).
        exclude: Parameters left unclipped: names (``"head.weight"``), glob patterns
            (``"head.*"``) or module types (``torch.nn.Linear``; the adapter resolves them to names
            when it is given the model; the Keras and TensorFlow adapters see variables only and
            refuse types). The paper excludes the final linear classifier; we exclude nothing by
            default and never guess by position. In a spec string entries are joined with ``|``.
        axis: Unit axes override (an int or tuple of ints) for every tensor of rank >= 2;
            ``None`` uses the adapter's layout (torch ``[out, in, ...]``, JAX/Keras
            ``[..., in, out]``). In a spec string: ``axis=1`` or ``axis=0|1``.
        semantics: Whose arithmetic to reproduce. ``"torch"`` (default): the paper's and
            timm's, as above (a NaN unit norm gives NaN). ``"optax"``:
            ``optax.adaptive_grad_clip``: a unit is left unchanged when ``‖G_i‖ < limit`` and
            scaled otherwise (so a NaN norm scales by NaN), and in the JAX and Keras layouts the
            unit axes follow optax's rank rule (:func:`optax_unit_axes`: rank 3 reduces axis 0
            only, a ``(1, n)`` kernel is one unit, rank > 5 needs ``axis``; an explicit ``axis``
            applies to vectors too). In the torch layout the axes stay torch's. Under
            ``gradclip.jax.transform`` this is bit-identical to optax.

    Raises:
        ConfigError: ``clip_factor`` <= 0 or not finite, ``eps`` < 0, an ``exclude`` entry that is
            neither a string nor a type, an ``axis`` that is not an int or a tuple of ints, an
            unknown ``semantics``.

    References:
        Brock et al., ICML 2021 (arXiv:2102.06171).

    Example:
        >>> from gradclip._policies._agc import AGC
        >>> AGC(0.02, exclude=("head.*", "fc.weight"), axis=(0, 1)).spec()
        'agc:0.02,exclude=head.*|fc.weight,axis=0|1'
    """

    clip_factor: float = 0.01
    eps: float = 1e-3
    exclude: tuple[Any, ...] = ()
    axis: Any = None
    semantics: str = "torch"

    spec_name = "agc"
    spec_positional = "clip_factor"
    needs_unit_norms = True

    def __post_init__(self) -> None:
        lam = _validate.threshold("clip_factor", self.clip_factor, allow_inf=False)
        if lam == 0:
            raise ConfigError("clip_factor must be > 0 (0 would zero every gradient). Received: 0.0.")
        object.__setattr__(self, "clip_factor", lam)
        object.__setattr__(self, "eps", _validate.threshold("eps", self.eps, allow_inf=False))
        if isinstance(self.exclude, str):  # from a spec string: "head.*|fc.weight"
            exclude = tuple(e for e in self.exclude.split("|") if e)
        elif self.exclude is None:  # "exclude=none" in a spec string
            exclude = ()
        elif isinstance(self.exclude, type):
            exclude = (self.exclude,)
        elif isinstance(self.exclude, (tuple, list, set, frozenset)):
            exclude = tuple(self.exclude)
        else:
            raise ConfigError("exclude takes a name, a glob pattern, a module type, or a tuple of them. Received: "
                              f"{self.exclude!r} ({type(self.exclude).__name__}).")
        for e in exclude:
            if not isinstance(e, (str, type)):
                raise ConfigError(
                    f"exclude takes parameter names, glob patterns or module types. Received: {e!r}."
                )
        object.__setattr__(self, "exclude", exclude)
        object.__setattr__(self, "axis", _axis(self.axis))
        _validate.choice("semantics", self.semantics, SEMANTICS)

    def spec(self) -> str:
        """The spec string; ``exclude`` and ``axis`` entries are joined with ``|`` (one token).

        Raises:
            ConfigError: an ``exclude`` entry that a spec string cannot hold: a module type, or a
                name with ``+``, ``,`` or ``|`` (the grammar's separators), surrounding spaces, or
                empty.
        """
        for e in self.exclude:
            _check_writable(self, e)
        parts = [Policy.spec(dataclasses.replace(self, exclude=(), axis=None))]
        if self.exclude:
            parts.append("exclude=" + "|".join(self.exclude))
        if self.axis is not None:
            parts.append("axis=" + "|".join(str(a) for a in (self.axis if isinstance(self.axis, tuple) else (self.axis,))))
        return ",".join(parts)

    def excluded(self, name: str, module_names: frozenset[str] = frozenset()) -> bool:
        """Whether the parameter ``name`` is left unclipped (``module_names``: resolved types)."""
        patterns = [e for e in self.exclude if isinstance(e, str)]
        return name in module_names or any(fnmatch.fnmatchcase(name, p) for p in patterns)

    def axes_for(self, shape: tuple[int, ...], layout: str) -> tuple[int, ...] | None:
        """Axes to reduce for one norm per unit of a tensor of ``shape`` (``None``: the whole tensor).

        Example:
            >>> AGC().axes_for((3, 4, 5), "jax"), AGC(semantics="optax").axes_for((3, 4, 5), "jax")
            ((0, 1), (0,))
        """
        if self.semantics == "optax" and layout != "torch":
            return optax_unit_axes(shape, self.axis)
        return unit_axes(len(shape), layout, self.axis)

    @property
    def decision_form(self) -> DecisionForm:  # type: ignore[override]
        return DecisionForm("units", "fixed", self.clip_factor)

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        coefs = []
        for g_norm, w_norm in zip(m.unit_norms, m.param_unit_norms):
            if g_norm is None:  # excluded
                coefs.append(None)
                continue
            limit = self.clip_factor * ops.maximum(w_norm, self.eps)
            if self.semantics == "optax":  # keep below the limit, else scale (NaN scales by NaN)
                keep = ops.full_like(g_norm, 1.0)
                coefs.append(ops.where(g_norm < limit, keep, limit / ops.maximum(g_norm, GRAD_FLOOR)))
                continue
            trigger = g_norm > limit
            one = ops.propagate_nan(ops.full_like(g_norm, 1.0), g_norm)
            coefs.append(ops.where(trigger, limit / ops.maximum(g_norm, GRAD_FLOOR), one))
        return Decision(threshold=self.clip_factor, unit_coefs=coefs), state


def _axis(value: Any) -> int | tuple[int, ...] | None:
    """``None``, an int or a tuple of several ints (a one-element tuple becomes its int).

    A string is the spec form: ``"1"`` or ``"0|1"``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p.strip() for p in value.split("|")]
        try:
            value = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"axis must be ints joined with '|' in a spec string (axis=1, axis=0|1). "
                              f"Received: {value!r}.") from None
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not items:
        raise ConfigError("axis must be an int, a tuple of ints or None. Received: ().")
    axes = tuple(_validate.integer("axis", a, minimum=None, maximum=None) for a in items)
    return axes[0] if len(axes) == 1 else axes


def _check_writable(policy: AGC, entry: Any) -> None:
    """Raise when an ``exclude`` entry has no spec form (so that a spec always parses back)."""
    if isinstance(entry, type):
        raise ConfigError(
            f"{policy!r} has no spec string: exclude by type ({entry.__name__}) cannot be written. "
            "Exclude by parameter name or glob pattern instead (exclude=('head.*',))."
        )
    bad = [c for c in "+,|" if c in entry]
    if bad or not entry or entry != entry.strip() or entry.lower() in ("none", "true", "false"):
        why = f"holds {bad[0]!r}, a separator of the spec grammar" if bad else "is empty, padded or a keyword"
        raise ConfigError(
            f"{policy!r} has no spec string: the exclude entry {entry!r} {why}. Use a glob pattern "
            "instead ('?' matches any one character: 'a+b' is matched by 'a?b')."
        )


def names_only(policy: Policy, adapter: str) -> None:
    """Refuse AGC exclusions by module type in an adapter that sees variables, not modules.

    Raises:
        ConfigError: ``policy`` (or a chain member) excludes by type.

    Example:
        >>> names_only(AGC(exclude=("head.*",)), "gradclip.keras.clipped")  # names pass
    """
    types = [e for e in getattr(policy, "exclude", ()) if isinstance(e, type)]
    if types:
        raise ConfigError(
            f"{adapter} sees the optimizer's variables, not the layers that own them, so AGC cannot exclude "
            f"by type. Received: exclude=({', '.join(t.__name__ for t in types)},). Exclude by variable path "
            "or glob pattern instead (exclude=('dense_1/*',); the paths are [v.path for v in "
            "model.trainable_variables])."
        )
