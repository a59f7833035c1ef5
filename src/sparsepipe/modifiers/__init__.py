"""Modifiers: typed, validated recipe steps, one module per family.

    python -c "import sparsepipe.modifiers as m; print([n for n in m.__all__])"

Every class is a frozen pydantic model with ``extra="forbid"`` (a typo in a recipe field fails
at load, naming the field) and pure schedule helpers of the fractional epoch that the training
integration calls.
"""

from __future__ import annotations

from sparsepipe.modifiers.base import Modifier
from sparsepipe.modifiers.channel_pruning import ChannelPruningModifier
from sparsepipe.modifiers.distillation import DistillationModifier, PerLayerDistillationModifier
from sparsepipe.modifiers.epoch import EpochRangeModifier
from sparsepipe.modifiers.lr import (
    LearningRateFunctionModifier,
    LearningRateModifier,
    SetLearningRateModifier,
    SetWeightDecayModifier,
    has_lr_modifier,
    lr_at,
    weight_decay_at,
)
from sparsepipe.modifiers.pruning import (
    ACDCPruningModifier,
    ConstantPruningModifier,
    GlobalMagnitudePruningModifier,
    GMPruningModifier,
    MagnitudePruningModifier,
    global_magnitude_masks,
    magnitude_mask,
)
from sparsepipe.modifiers.second_order import MFACPruningModifier, OBSPruningModifier
from sparsepipe.modifiers.quantization import (
    LegacyQuantizationModifier,
    QuantizationArgs,
    QuantizationModifier,
    QuantizationScheme,
)

__all__ = [
    "ACDCPruningModifier",
    "ChannelPruningModifier",
    "ConstantPruningModifier",
    "DistillationModifier",
    "EpochRangeModifier",
    "GMPruningModifier",
    "GlobalMagnitudePruningModifier",
    "LearningRateFunctionModifier",
    "LearningRateModifier",
    "LegacyQuantizationModifier",
    "MFACPruningModifier",
    "OBSPruningModifier",
    "MagnitudePruningModifier",
    "Modifier",
    "PerLayerDistillationModifier",
    "QuantizationArgs",
    "QuantizationModifier",
    "QuantizationScheme",
    "SetLearningRateModifier",
    "SetWeightDecayModifier",
    "global_magnitude_masks",
    "has_lr_modifier",
    "lr_at",
    "magnitude_mask",
    "weight_decay_at",
]
