"""Method spec strings: ``"norm:1.0"``, ``"value:0.5"``, ``"pertensor:1.0,norm_type=inf"``.

Grammar: ``name[:arg[,arg...]]`` where an ``arg`` is a bare value (sets the policy's positional
field) or ``key=value`` (a field name or one of the policy's short aliases). Values are parsed as
the field's type: numbers (``inf`` allowed; ``1e3`` is the int 1000 where an int is expected),
booleans (``true``/``false``), strings, ``none``; a list (AGC's ``exclude`` and ``axis``) is
joined with ``|``. ``+``, ``,`` and ``|`` are separators, so a value cannot hold them: every
``policy.spec()`` parses back to an equal policy, or raises ``ConfigError`` saying why it cannot.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gradclip._errors import ConfigError, GradclipError
from gradclip._policies import Policy, registry

__all__ = ["parse_policy"]


def parse_policy(spec: str | Policy) -> Policy:
    """Build a policy from a method spec string (a :class:`Policy` is returned as is).

    Args:
        spec: ``"none"``, ``"norm:1.0"``, ``"norm:1.0,norm_type=inf"``, ``"value:0.5"``,
            ``"value:min=-1,max=0.5"``, ``"pertensor:1.0"``, ``"agc:0.01"``, or several joined
            with ``+`` to chain them (``"spikeguard+norm:1.0"``).

    Returns:
        The policy. ``"none"`` gives :class:`gradclip.NoClip` (measure only).

    Raises:
        ConfigError: unknown name or key, a value of the wrong type, or invalid hyper-parameters;
            the message lists what is valid.

    Example:
        >>> import gradclip
        >>> gradclip.parse_policy("norm:0.5,norm_type=inf")
        GlobalNorm(max_norm=0.5, norm_type=inf, semantics='torch')
    """
    if isinstance(spec, Policy):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"A method spec must be a string such as 'norm:1.0'. Received: {spec!r}.")
    text = spec.strip()
    if "+" in text:
        from gradclip._policies._chain import Chain

        members = [parse_policy(part) for part in text.split("+")]
        try:
            return Chain(tuple(members))
        except GradclipError as exc:
            raise ConfigError(f"Invalid spec {spec!r}: {exc}") from None
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    policies = registry()
    if name not in policies:
        raise ConfigError(
            f"Unknown method {name!r} in spec {spec!r}. Valid methods: {', '.join(sorted(policies))} "
            "(for example 'norm:1.0', 'value:0.5', 'pertensor:1.0')."
        )
    cls = policies[name]
    kwargs = _parse_args(cls, rest, spec) if rest.strip() else {}
    try:
        return cls(**kwargs)
    except GradclipError as exc:
        raise ConfigError(f"Invalid spec {spec!r}: {exc}") from None


def _parse_args(cls: type[Policy], rest: str, spec: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for i, raw in enumerate(a.strip() for a in rest.split(",")):
        key, eq, value = raw.partition("=")
        if not eq:
            if i != 0 or cls.spec_positional is None:
                raise ConfigError(
                    f"In spec {spec!r}, {raw!r} needs a key (key=value). Valid keys for "
                    f"{cls.spec_name!r}: {_keys(cls, fields)}."
                )
            key, value = cls.spec_positional, raw
        key = cls.spec_aliases.get(key.strip(), key.strip())
        if key not in fields:
            raise ConfigError(
                f"Unknown key {key!r} in spec {spec!r}. Valid keys for {cls.spec_name!r}: {_keys(cls, fields)}."
            )
        kwargs[key] = _convert(value.strip(), fields[key], spec)
    return kwargs


def _keys(cls: type[Policy], fields: dict[str, Any]) -> str:
    aliases = [f"{a} (={k})" for a, k in cls.spec_aliases.items()]
    return ", ".join(list(fields) + aliases)


def _convert(value: str, field: dataclasses.Field, spec: str) -> Any:
    low = value.lower()
    if low == "none":
        return None
    if low in ("true", "false"):
        return low == "true"
    kind = str(field.type)
    if "float" in kind or "int" in kind:
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"In spec {spec!r}, {field.name} must be a number. Received: {value!r}.") from None
        return int(number) if kind.startswith("int") and number.is_integer() else number
    return value
