"""Run tests/test_keras.py under every other installed Keras backend, each in a fresh process.

Keras chooses its backend once per process (``KERAS_BACKEND``), so the main test process covers
one backend (TensorFlow, set in conftest.py) and this module starts one pytest process per
other backend. A backend whose framework is not installed is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAIN = os.environ.get("KERAS_BACKEND", "tensorflow")
BACKENDS = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != MAIN])
def test_keras_suite_under_backend(backend):
    pytest.importorskip("keras")
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        pytest.skip(f"{BACKENDS[backend]} is not installed, so the Keras {backend} backend cannot run")
    env = dict(os.environ, KERAS_BACKEND=backend)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning",
           str(ROOT / "tests" / "test_keras.py"), str(ROOT / "src" / "gradclip" / "keras")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"Keras {backend} backend:\n{tail}"
    assert re.search(r"\d+ passed", proc.stdout), tail
    print(f"Keras {backend} backend: {re.findall(r'[0-9]+ (?:passed|skipped|failed)', proc.stdout)}")
