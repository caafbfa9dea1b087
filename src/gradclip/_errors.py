"""Typed errors.

Every error gradclip raises on bad input is a :class:`GradclipError` and also the built-in
exception a user would expect (``ValueError``, ``TypeError``, ``FloatingPointError``), so both
``except gradclip.GradclipError`` and ``except ValueError`` work. Messages say what was received,
what is allowed and, where a check can be turned off, how.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "GradclipError",
    "InputTypeError",
    "LogError",
    "MissingDependencyError",
    "NonFiniteError",
    "Offender",
    "ReplicaMismatchError",
    "StateDictError",
]


class GradclipError(Exception):
    """Base class of every error raised by gradclip."""


class ConfigError(GradclipError, ValueError):
    """A threshold, norm type, option or method spec has a value that is not allowed."""


class InputTypeError(GradclipError, TypeError):
    """An argument has the wrong type (for example a parameter container holding non-tensors)."""


class LogError(GradclipError, ValueError):
    """A run log is missing, empty or corrupt. The message names the file and the line."""


class StateDictError(GradclipError, ValueError):
    """A state dict does not match the clipper or policy it is loaded into."""


class MissingDependencyError(GradclipError, ModuleNotFoundError):
    """An optional package that a gradclip module needs is not installed; the message names the extra.

    Also a ``ModuleNotFoundError`` (an ``ImportError``), so ``except ImportError`` keeps working.
    """


class ReplicaMismatchError(GradclipError, RuntimeError):
    """Ranks that should hold the same value (the global gradient norm) hold different ones.

    Raised by the cross-rank consistency check (``gradclip.torch.Clipper(check_every=N)``) on
    every rank alike.

    Attributes:
        values: The value on each rank, in the order of ``ranks``.
        ranks: The global ranks compared.
    """

    def __init__(self, message: str, values: tuple[float, ...] = (), ranks: tuple[int, ...] = ()):
        super().__init__(message)
        self.values = tuple(values)
        self.ranks = tuple(ranks)


@dataclass(frozen=True)
class Offender:
    """A gradient tensor that holds NaN or Inf values.

    Attributes:
        name: The parameter's name (``"layer.0.weight"``), or ``"param[i]"`` when the caller
            passed no names; ``i`` is the position among the parameters passed.
        index: Position of the parameter among those passed (forward order for ``model``).
        shape: Shape of the gradient.
        nan_count: Number of NaN elements.
        inf_count: Number of +Inf or -Inf elements.
        rank: The distributed rank holding the values (``None`` in one process). The counts
            are that rank's part's; ``shape`` is the whole tensor's for a DTensor, else the part's.
    """

    name: str
    index: int
    shape: tuple[int, ...]
    nan_count: int
    inf_count: int
    rank: int | None = None

    def describe(self) -> str:
        """One line for messages and logs: ``name shape=(3, 4) nan=2 inf=0`` (then `` rank=1``)."""
        where = "" if self.rank is None else f" rank={self.rank}"
        return f"{self.name} shape={self.shape} nan={self.nan_count} inf={self.inf_count}{where}"


class NonFiniteError(GradclipError, FloatingPointError, RuntimeError):
    """The gradients hold NaN or Inf values and the caller asked for an error.

    It is also a ``RuntimeError`` so that code written for torch's ``error_if_nonfinite=True``
    keeps catching it. The gradients are left untouched when it is raised.

    Attributes:
        offenders: The non-finite tensors, in parameter order.
        norm: The non-finite total norm, as a Python float.
    """

    def __init__(self, message: str, offenders: tuple[Offender, ...] = (), norm: float = float("nan")):
        super().__init__(message)
        self.offenders = tuple(offenders)
        self.norm = norm


def nonfinite_message(norm: float, norm_type: float, offenders: tuple[Offender, ...], limit: int = 8) -> str:
    """Build the message of a :class:`NonFiniteError` naming the offending tensors.

    It starts with the sentence torch's ``error_if_nonfinite=True`` error starts with, so code and
    tests that match torch's wording keep working; then it names the tensors.

    Example:
        >>> nonfinite_message(float("nan"), 2, ())[:82]
        'The total norm of order 2.0 for gradients from `parameters` is non-finite, so it c'
    """
    shown = "; ".join(o.describe() for o in offenders[:limit])
    more = f"; and {len(offenders) - limit} more" if len(offenders) > limit else ""
    where = f" Non-finite gradients ({len(offenders)}): {shown}{more}." if offenders else ""
    return (
        f"The total norm of order {float(norm_type)} for gradients from `parameters` is non-finite, so it cannot "
        f"be clipped. The norm is {norm}.{where} "
        "Gradients were left untouched. To scale by the non-finite norm anyway pass "
        "nonfinite='propagate' (error_if_nonfinite=False); to skip this step pass nonfinite='skip'."
    )
