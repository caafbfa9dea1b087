"""Clipping policies (the "decide" step). One module per family; each registers its spec name."""

from gradclip._policies._base import Decision, Measurement, Policy, registry
from gradclip._policies._agc import AGC
from gradclip._policies._chain import Chain, chain
from gradclip._policies._fixed import GlobalNorm, NoClip, PerTensorNorm, Value
from gradclip._policies._spike import SpikeGuard

__all__ = ["AGC", "Chain", "Decision", "GlobalNorm", "Measurement", "NoClip", "PerTensorNorm", "Policy", "SpikeGuard", "Value", "chain", "registry"]
