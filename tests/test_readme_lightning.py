"""README's "PyTorch Lightning" example runs as written (the first python block under that heading)."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
HEADING = "## PyTorch Lightning"


def _block() -> str | None:
    """The first ```python block between the heading and the next ``## `` heading, or None."""
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"^{re.escape(HEADING)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    if m is None:
        return None
    code = re.search(r"```python\n(.*?)```", m.group(1), re.DOTALL)
    assert code, f"README.md's {HEADING!r} section has no ```python block"
    return code.group(1)


@pytest.mark.filterwarnings("ignore")  # Lightning's own notes about workers and loggers
def test_readme_lightning_example_runs(capsys):
    pytest.importorskip("lightning.pytorch")
    block = _block()
    if block is None:
        pytest.skip(f"README.md has no {HEADING!r} section yet (the text is in /tmp/h/out/lightning/README.md)")
    globs: dict = {"__name__": "readme_lightning"}
    exec(compile(block, "README.md (PyTorch Lightning example)", "exec"), globs)  # noqa: S102
    trainer, clip = globs["trainer"], globs["clip"]
    assert trainer.global_step == 5 and clip.clipper.steps == 5
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert printed == repr(clip.last_stats()) and printed.startswith("ClipStats(norm=")
