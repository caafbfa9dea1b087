"""Chains: several policies applied one after the other, as one policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gradclip._errors import ConfigError
from gradclip._policies._base import Decision, DecisionForm, Measurement, Policy

__all__ = ["Chain", "chain"]


@dataclass(frozen=True)
class Chain(Policy):
    """Apply ``policies`` in order; each sees the gradients as the previous ones left them.

    The factors multiply (global, per-tensor and per-unit), so the gradients are scaled once.
    A skip from any member skips the step, and the members after it keep their state for that
    step (a spike caught by :class:`SpikeGuard` never reaches a later ZClip's statistics).
    ``ClipStats.threshold`` is the last member's threshold. Value clipping (a clamp) has no factor
    and cannot be chained.

    Args:
        policies: Two or more policies (chains are flattened).

    Raises:
        ConfigError: fewer than two policies, a non-policy, or a :class:`Value` member.

    Example:
        >>> import gradclip
        >>> from gradclip._policies._spike import SpikeGuard
        >>> gradclip.parse_policy("spikeguard+norm:1.0") == Chain((SpikeGuard(), gradclip.GlobalNorm(1.0)))
        True
    """

    policies: tuple[Policy, ...] = ()

    def __post_init__(self) -> None:
        flat: list[Policy] = []
        for p in self.policies:
            if not isinstance(p, Policy):
                raise ConfigError(f"chain takes gradclip policies. Received: {p!r} ({type(p).__name__}).")
            flat.extend(p.policies if isinstance(p, Chain) else (p,))
        if len(flat) < 2:
            raise ConfigError(f"A chain needs two or more policies. Received: {len(flat)}.")
        for p in flat:
            if getattr(p, "spec_name", "") == "value":
                raise ConfigError(
                    f"Value clipping cannot be chained (a clamp has no scale factor to compose). Received: {p!r}."
                )
        object.__setattr__(self, "policies", tuple(flat))

    @property
    def needs_tensor_norms(self) -> bool:  # type: ignore[override]
        return True

    @property
    def needs_unit_norms(self) -> bool:  # type: ignore[override]
        return any(p.needs_unit_norms for p in self.policies)

    @property
    def needs_sizes(self) -> bool:  # type: ignore[override]
        return any(p.needs_sizes for p in self.policies)

    @property
    def measure_norm_type(self) -> float:
        return self.policies[-1].measure_norm_type

    @property
    def axis(self) -> Any:
        return next((p.axis for p in self.policies if p.needs_unit_norms), None)

    def members(self) -> tuple[Policy, ...]:
        return self.policies

    def excluded(self, name: str, module_names: frozenset[str] = frozenset()) -> bool:
        return next(p for p in self.policies if p.needs_unit_norms).excluded(name, module_names)

    @property
    def exclude(self) -> tuple[Any, ...]:
        return next((p.exclude for p in self.policies if p.needs_unit_norms), ())

    def spec(self) -> str:
        return "+".join(p.spec() for p in self.policies)

    @property
    def can_skip(self) -> bool:  # type: ignore[override]
        return any(p.can_skip for p in self.policies)

    @property
    def decision_form(self) -> DecisionForm | None:  # type: ignore[override]
        """Per unit if a member scales units, else per tensor if one scales tensors, else one
        global factor; the threshold is that of the last member that has one."""
        forms = [p.decision_form for p in self.policies]
        if any(f is None for f in forms):
            return None
        kinds = {f.kind for f in forms}
        kind = "units" if "units" in kinds else "coefs" if "coefs" in kinds else "coef"
        last = next((f for f in reversed(forms) if f.threshold != "none"), DecisionForm(threshold="none"))
        return DecisionForm(kind, last.threshold, last.fixed)

    def init_state(self, like: Any, ops: Any, names: tuple[str, ...] = ()) -> dict[str, Any]:
        return {f"{i}.{k}": v for i, p in enumerate(self.policies) for k, v in p.init_state(like, ops, names).items()}

    def decide(self, m: Measurement, state: dict[str, Any], ops: Any) -> tuple[Decision, dict[str, Any]]:
        p_norm = self.measure_norm_type
        tn = m.tensor_norms  # per-tensor norms after the members so far
        units = m.unit_norms
        coefs = ops.propagate_nan(ops.full_like(tn, 1.0), tn)
        unit_coefs = None if units is None else [None] * len(units)
        skip, threshold, new_state = None, None, {}
        scalar, per_tensor = ops.propagate_nan(ops.full_like(m.norm, 1.0), m.norm), False  # the product while every factor is global
        for i, policy in enumerate(self.policies):
            mine = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{i}.")}
            # A step an earlier member skipped reaches this member as a non-finite one: every
            # policy leaves its state unchanged on those, and an entry it creates on first sight
            # (AdaGC's "gamma.<name>") gets its "nothing seen yet" value instead of a KeyError.
            finite = m.finite if skip is None else m.finite & ~skip
            sub = Measurement(norm=ops.vector_norm(tn, p_norm), tensor_norms=tn, finite=finite,
                              names=m.names, unit_norms=units, param_unit_norms=m.param_unit_norms,
                              sizes=m.sizes)
            d, updated = policy.decide(sub, mine, ops)
            if skip is not None:  # and for policies that read the norm's finiteness themselves
                updated = {k: ops.where(skip, mine[k], v) if k in mine else v for k, v in updated.items()}
            new_state.update({f"{i}.{k}": v for k, v in updated.items()})
            factor = d.coef if d.coef is not None else d.coefs
            if d.coef is not None:
                scalar = scalar * d.coef
            per_tensor = per_tensor or d.coefs is not None or d.unit_coefs is not None
            if factor is not None:
                coefs, tn = coefs * factor, tn * factor
                units = None if units is None else [u if u is None else u * factor_i(factor, j)
                                                    for j, u in enumerate(units)]
            if d.unit_coefs is not None:
                unit_coefs, units, tn = self._units(d.unit_coefs, unit_coefs, units, tn, ops)
            if d.skip is not None:
                skip = d.skip if skip is None else (skip | d.skip)
            threshold = d.threshold if d.threshold is not None else threshold
        if unit_coefs is not None and any(u is not None for u in unit_coefs):
            per_tensor = [coefs[j] if u is None else u * coefs[j] for j, u in enumerate(unit_coefs)]
            return Decision(threshold=threshold, unit_coefs=per_tensor, skip=skip), new_state
        if not per_tensor:
            return Decision(threshold=threshold, coef=scalar, skip=skip), new_state
        return Decision(threshold=threshold, coefs=coefs, skip=skip), new_state

    @staticmethod
    def _units(new: list, acc: list, units: list, tn: Any, ops: Any) -> tuple[list, list, Any]:
        """Fold one member's unit factors in; update the unit and tensor norms after it."""
        acc = [a if n is None else (n if a is None else a * n) for a, n in zip(acc, new)]
        units = [u if n is None else u * n for u, n in zip(units, new)]
        parts = [tn[j] if n is None else ops.sqrt(ops.sum(units[j] ** 2)) for j, n in enumerate(new)]
        tn = ops.propagate_nan(ops.stack(parts), tn)
        return acc, units, tn


def factor_i(factor: Any, j: int) -> Any:
    """The factor of tensor ``j``: a scalar factor is everyone's."""
    return factor if getattr(factor, "ndim", 0) == 0 else factor[j]


def chain(*policies: Policy) -> Chain:
    """Compose policies: ``gradclip.chain(SpikeGuard(), ZClip())``. See :class:`Chain`."""
    return Chain(tuple(policies))
