"""gradclip: gradient clipping and gradient-health monitoring for every framework.

The top-level package holds the framework-neutral core: the clipping policies (the "decide"
step), ``ClipStats`` and the typed errors. It imports no deep-learning framework; the adapters do,
one module per framework: ``gradclip.torch``, ``gradclip.keras``, ``gradclip.tensorflow`` and
``gradclip.jax``. ``gradclip.policy`` is the public contract for writing a policy of your own.

Example:
    >>> import gradclip
    >>> policy = gradclip.parse_policy("norm:1.0")
    >>> policy == gradclip.GlobalNorm(max_norm=1.0)
    True
"""

from gradclip._errors import (
    ConfigError,
    GradclipError,
    InputTypeError,
    LogError,
    MissingDependencyError,
    NonFiniteError,
    Offender,
    ReplicaMismatchError,
    StateDictError,
)
from gradclip._policies import (
    AGC,
    AdaGC,
    AutoClip,
    BlockRMS,
    Chain,
    GlobalNorm,
    MaxNormHistory,
    NoClip,
    PerTensorNorm,
    Policy,
    SpikeGuard,
    Value,
    ZClip,
    chain,
)
from gradclip._spec import parse_policy
from gradclip.monitor import Monitor
from gradclip._stats import ClipStats

__version__ = "0.1.0"

__all__ = [
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
