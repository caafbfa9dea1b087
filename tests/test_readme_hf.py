"""README's "Hugging Face Trainer" and "Hugging Face Accelerate" snippets run as written."""

from __future__ import annotations

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def snippet(heading: str, text: str | None = None) -> str:
    """The first ```python block of the README section under ``heading`` (skips if there is none)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    m = re.search(rf"^{re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    if m is None:
        pytest.skip(f"README.md has no section {heading!r} yet")
    block = re.search(r"```python\n(.*?)```", m.group(1), re.DOTALL)
    assert block, f"README section {heading!r} has no ```python block"
    return block.group(1)


def run(code: str, name: str) -> dict:
    globs: dict = {"__name__": name}
    exec(compile(code, f"README.md ({name})", "exec"), globs)  # noqa: S102
    return globs


def test_trainer_section_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    code = snippet("## Hugging Face Trainer")
    monkeypatch.chdir(tmp_path)  # the example writes under runs/
    trainer = run(code, "readme_trainer")["trainer"]
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert logs and all({"grad_norm", "grad_norm_clipped", "grad_clipped", "grad_skipped"} <= set(r) for r in logs)
    assert trainer.state.global_step == 8


def test_accelerate_section_runs():
    pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    code = snippet("## Hugging Face Accelerate")
    AcceleratorState._reset_state(True)  # one Accelerate state per process: start from a clean one
    GradientState._reset_state()
    try:
        globs = run(code, "readme_accelerate")
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert globs["clipper"].clipper.steps == 4  # 16 micro-batches, 4 per optimizer step
    assert globs["stats"] is not None and float(globs["stats"].norm) > 0
