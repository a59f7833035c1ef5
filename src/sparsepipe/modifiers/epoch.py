"""``!EpochRangeModifier``: only sets how long training runs.

    python -c "from sparsepipe.modifiers.epoch import EpochRangeModifier; print(EpochRangeModifier(start_epoch=0, end_epoch=3))"
"""

from __future__ import annotations

from pydantic import Field

from sparsepipe.modifiers.base import Modifier
from sparsepipe.modifiers.registry import register


@register("EpochRangeModifier")
class EpochRangeModifier(Modifier):
    """Contributes ``start_epoch``/``end_epoch`` to the training length and nothing else."""

    tag = "EpochRangeModifier"

    start_epoch: float = Field(0.0, description="first epoch (usually 0)")
    end_epoch: float = Field(..., description="the number of epochs to train")
