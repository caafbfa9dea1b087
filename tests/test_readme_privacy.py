"""README's "Differential privacy (DP-SGD)" example runs as written (between its privacy-example markers)."""

from __future__ import annotations

import pathlib
import re

import pytest

pytest.importorskip("torch")
pytest.importorskip("opacus")

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _block() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- privacy-example:start -->\s*```python\n(.*?)```\s*<!-- privacy-example:end -->", text, re.DOTALL)
    assert m, "README.md has no privacy example between <!-- privacy-example:start --> and end"
    return m.group(1)


def test_readme_privacy_example_runs(capsys):
    globs: dict = {"__name__": "readme_privacy"}
    exec(compile(_block(), "README.md (privacy example)", "exec"), globs)  # noqa: S102
    out = capsys.readouterr().out
    stats = globs["stats"]
    assert stats.steps == 32 and 0 < stats.epsilon < 10 and 0 <= stats.fraction_clipped <= 1
    assert "steps, epsilon = " in out
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in globs["model"].modules())  # close() ran


def test_readme_privacy_section_sits_after_the_jax_section():
    text = README.read_text(encoding="utf-8")
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    i = heads.index("## JAX: optax, Flax, Equinox")
    assert heads[i + 1] == "## Differential privacy (DP-SGD)"
    assert 'pip install "gradclip[privacy]"' in text
