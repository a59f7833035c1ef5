"""Base class of all modifiers: a validated, immutable pydantic model with epoch helpers.

    python -c "from sparsepipe.modifiers import EpochRangeModifier as E; print(E(end_epoch=3).is_active(1.5))"

Epoch conventions (recipes.md section 3): epochs are fractional
(``completed_optimizer_steps / steps_per_epoch``); ``start_epoch: -1`` means from the
beginning, ``end_epoch: -1`` means never ends. A modifier is active on ``[start, end)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

NEVER = -1.0  # the recipe value meaning "from the beginning" / "never ends"


@dataclasses.dataclass
class TaggedModifier:
    """A ``!SomeModifier {...}`` mapping as read from YAML, before variables are applied."""

    tag: str
    fields: dict[str, Any]
    line: int = 0


class Modifier(BaseModel):
    """Fields shared by every modifier; subclasses add their own and set ``tag``."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    tag: ClassVar[str] = "Modifier"
    #: names of extra fields (beyond start/end) holding epochs, shifted with the stage
    extra_epoch_fields: ClassVar[tuple[str, ...]] = ()

    start_epoch: float = Field(-1.0, description="epoch the modifier starts at; -1 = from the beginning")
    end_epoch: float = Field(-1.0, description="epoch the modifier ends at (exclusive); -1 = never")

    # -- epochs ---------------------------------------------------------------------------------
    @property
    def start(self) -> float:
        """Start epoch with -1 (and anything negative) mapped to 0."""
        return max(self.start_epoch, 0.0)

    @property
    def end(self) -> float:
        """End epoch with -1 mapped to +inf."""
        return math.inf if self.end_epoch == NEVER else self.end_epoch

    def is_active(self, epoch: float) -> bool:
        """True on ``[start, end)``."""
        return self.start <= epoch < self.end

    def epochs_used(self) -> list[float]:
        """All non-negative epoch values of this modifier (for the training length)."""
        values = [self.start_epoch, self.end_epoch]
        values += [getattr(self, f) for f in self.extra_epoch_fields]
        return [float(v) for v in values if v is not None and v >= 0]

    def shifted(self, offset: float) -> "Modifier":
        """A copy with every epoch moved by ``offset`` (staged recipes).

        ``start_epoch: -1`` becomes ``offset`` (the start of the stage); ``end_epoch: -1``
        stays "never ends"; unset optional epochs stay unset.
        """
        if offset == 0:
            return self
        update: dict[str, Any] = {
            "start_epoch": offset if self.start_epoch < 0 else self.start_epoch + offset,
        }
        if self.end_epoch >= 0:
            update["end_epoch"] = self.end_epoch + offset
        for name in self.extra_epoch_fields:
            value = getattr(self, name)
            if value is not None and value >= 0:
                update[name] = value + offset
        return self.model_copy(update=update)

    # -- serialisation -------------------------------------------------------------------------
    def to_tagged(self) -> TaggedModifier:
        """The ``!Tag {fields}`` form, with only the fields the recipe set."""
        return TaggedModifier(self.tag, self.model_dump(mode="python", exclude_unset=True))

    def describe(self) -> str:
        """One line for ``sparsepipe recipe validate``."""
        parts = []
        for key, value in self.model_dump(exclude_unset=True).items():
            if isinstance(value, (dict, list)) and len(value) > 4:
                parts.append(f"{key}=<{len(value)} entries>")
            else:
                parts.append(f"{key}={value!r}")
        return f"{self.tag}({', '.join(parts)})"

    def sort_key(self) -> tuple[float, float]:
        """Order in which modifiers are applied at a step: by end epoch, then start epoch.

        A never-ending modifier sorts last (it "ends later"), so it wins ties between
        overlapping LR modifiers.
        """
        return (self.end, self.start)


def check_fraction(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0.0 and 1.0 (a fraction, 0.8 = 80%), got {value}")
    return value
