"""Clipping policies (the "decide" step). One module per family; each registers its spec name."""

from gradclip._policies._base import Decision, Measurement, Policy, registry
from gradclip._policies._adagc import AdaGC
from gradclip._policies._agc import AGC
from gradclip._policies._chain import Chain, chain
from gradclip._policies._fixed import GlobalNorm, NoClip, PerTensorNorm, Value
from gradclip._policies._history import AutoClip, MaxNormHistory
from gradclip._policies._rms import BlockRMS
from gradclip._policies._spike import SpikeGuard
from gradclip._policies._zclip import ZClip

__all__ = ["AGC", "AdaGC", "AutoClip", "BlockRMS", "Chain", "Decision", "GlobalNorm", "MaxNormHistory", "Measurement", "NoClip", "PerTensorNorm", "Policy", "SpikeGuard", "Value", "ZClip", "chain", "registry"]
