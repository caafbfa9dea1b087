"""Optional packages: import them, or fail with one line naming the extra that installs them."""

from __future__ import annotations

import importlib

from gradclip._errors import MissingDependencyError

__all__ = ["require"]


def require(packages: tuple[str, ...], *, extra: str, user: str) -> None:
    """Import each of ``packages``; the first missing one raises.

    Args:
        packages: Top-level package names, in the order to check them.
        extra: The gradclip extra that installs them (``"transformers"``).
        user: The gradclip module that needs them, for the message (``"gradclip.transformers"``).

    Raises:
        MissingDependencyError: naming the missing package and ``pip install 'gradclip[<extra>]'``.

    Example:
        >>> require(("json",), extra="none", user="gradclip")
        >>> require(("no_such_package_xyz",), extra="demo", user="gradclip.demo")
        Traceback (most recent call last):
        ...
        gradclip._errors.MissingDependencyError: gradclip.demo needs no_such_package_xyz, which is not installed: pip install 'gradclip[demo]'.
    """
    for name in packages:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingDependencyError(f"{user} needs {name}, which is not installed: "
                                         f"pip install 'gradclip[{extra}]'.", name=name) from None
