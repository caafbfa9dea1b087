"""The ``lightning`` import, with a one-line error naming the extra to install when it is missing."""

from __future__ import annotations

from typing import Any

from gradclip._errors import MissingDependencyError

__all__ = ["MissingDependencyError", "lightning_pytorch"]


def lightning_pytorch() -> Any:
    """Return the ``lightning.pytorch`` module.

    Raises:
        MissingDependencyError: ``lightning`` (or ``torch``) is not installed; the message names
            ``pip install 'gradclip[lightning]'``.
    """
    try:
        import lightning.pytorch as pl
    except ImportError as exc:
        raise MissingDependencyError(
            f"gradclip.lightning needs PyTorch Lightning ({exc}). Install it with: pip install 'gradclip[lightning]'."
        ) from None
    return pl
