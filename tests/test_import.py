"""``import gradclip`` stays framework-free, and the public API changes only on purpose."""

from __future__ import annotations

import json
import subprocess
import sys

import gradclip

FRAMEWORKS = ("torch", "tensorflow", "keras", "jax", "jaxlib", "matplotlib")


def _modules_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _frameworks_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in FRAMEWORKS)


def test_import_gradclip_imports_no_framework():
    modules = _modules_after("import gradclip")
    assert "gradclip" in modules
    assert _frameworks_in(modules) == []


def test_core_use_imports_no_framework():
    # Parsing a spec and deciding with NumPy is framework-free too (not only the bare import).
    modules = _modules_after(
        "import gradclip\n"
        "from gradclip._ops import NumpyOps\n"
        "from gradclip._policies import Measurement\n"
        "from gradclip import _reference\n"
        "p = gradclip.parse_policy('norm:1.0')\n"
        "p.decide(Measurement(norm=2.0), {}, NumpyOps)"
    )
    assert _frameworks_in(modules) == []


def test_the_check_itself_detects_a_framework():
    # Guards the test above against passing vacuously: importing the torch adapter loads torch.
    modules = _modules_after("import gradclip.torch")
    assert "torch" in _frameworks_in(modules)


def test_public_api_is_frozen():
    assert gradclip.__all__ == [
        "AGC",
        "AdaGC",
        "AutoClip",
        "BlockRMS",
        "Chain",
        "ClipStats",
        "ConfigError",
        "GlobalNorm",
        "GradclipError",
        "InputTypeError",
        "LogError",
        "MaxNormHistory",
        "MissingDependencyError",
        "Monitor",
        "NoClip",
        "NonFiniteError",
        "Offender",
        "PerTensorNorm",
        "Policy",
        "ReplicaMismatchError",
        "SpikeGuard",
        "StateDictError",
        "Value",
        "ZClip",
        "__version__",
        "chain",
        "parse_policy",
    ]
    assert gradclip.__all__ == sorted(gradclip.__all__)
    for name in gradclip.__all__:
        assert hasattr(gradclip, name), name


def test_torch_api_is_frozen():
    import gradclip.torch as gct

    assert gct.__all__ == [
        "Clipper", "ReplicaCheck", "check_replicas", "clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_",
        "clipped", "get_total_norm",
    ]
    assert gct.__all__ == sorted(gct.__all__)
    for name in gct.__all__:
        assert callable(getattr(gct, name)), name


def test_version_is_a_string():
    assert isinstance(gradclip.__version__, str) and gradclip.__version__.count(".") >= 1
