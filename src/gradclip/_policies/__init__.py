"""Clipping policies (the "decide" step). One module per family; each registers its spec name."""

from gradclip._policies._base import Decision, Measurement, Policy, registry
from gradclip._policies._agc import AGC
from gradclip._policies._fixed import GlobalNorm, NoClip, PerTensorNorm, Value

__all__ = ["AGC", "Decision", "GlobalNorm", "Measurement", "NoClip", "PerTensorNorm", "Policy", "Value", "registry"]
