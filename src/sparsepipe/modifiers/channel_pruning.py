"""``!ChannelPruningModifier``: structured pruning that physically removes conv channels.

    python -c "from sparsepipe.modifiers.channel_pruning import ChannelPruningModifier as C; m = C(target_ratio=0.5, start_epoch=0, end_epoch=4, update_frequency=1); print(m.step_epochs(), [m.ratio_at_step(k) for k in range(1, 5)])"

Ratio: ``target_ratio`` (and every value of ``ratios``) is the fraction of **output channels**
removed from each prunable conv layer (channels coupled by concatenations, residual adds and
the split-free C2f are removed together, as one group). It is not a fraction of MACs: a conv
whose inputs and outputs both lose a fraction ``r`` keeps about ``(1 - r)**2`` of its MACs, so
``target_ratio: 0.5`` leaves roughly a quarter of YOLOv8n's MACs (docs/channel-pruning.md).

Schedule (GMP-like): ``N = max(1, round((end_epoch - start_epoch) / update_frequency))``
pruning steps; step ``k`` (1..N) happens at ``start_epoch + k (end_epoch - start_epoch) / N``
and brings every layer to ``ratio * y(k / N)`` of its original channels removed, with ``y``
the ``inter_func`` (cubic: ``1 - (1 - x)**3``, as GMP). ``start_epoch == end_epoch`` is one-shot
pruning at that epoch. Training between steps fine-tunes the smaller model.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sparsepipe.modifiers.base import Modifier
from sparsepipe.modifiers.pruning import InterFunc, interpolate
from sparsepipe.modifiers.registry import register

Importance = Literal["l1", "l2", "bn_scale", "lamp"]
MAX_RATIO = 0.95  # removing more leaves layers with a handful of channels


def _check_regex(sel: str, field: str) -> None:
    if not sel:
        raise ValueError(f"{field}: an empty module selector matches nothing")
    pattern = sel[3:] if sel.startswith("re:") else sel
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{field}: '{sel}' is not a valid regular expression ({exc})") from None


def selector_matches(sel: str, name: str) -> bool:
    """``re:<regex>`` (re.match, like pruning params) or an exact module name / dotted prefix."""
    if sel.startswith("re:"):
        return re.match(sel[3:], name) is not None
    return name == sel or name.startswith(sel + ".")


@register("ChannelPruningModifier")
class ChannelPruningModifier(Modifier):
    """Gradual structured (channel) pruning with torch-pruning; see the module docstring."""

    tag = "ChannelPruningModifier"
    target_ratio: float = Field(..., description="fraction of output channels removed per layer "
                                "(0 <= r <= 0.95), not of MACs")
    ratios: dict[str, float] = Field(default_factory=dict, description="module selector "
                                     "('re:<regex>' or a name prefix) -> its own ratio; overrides "
                                     "target_ratio for the conv layers it matches")
    importance: Importance = Field("l2", description="channel score: l1 | l2 (weight magnitude of "
                                   "the coupled group), bn_scale (|batch-norm gamma|), lamp")
    start_epoch: float = Field(..., description="epoch pruning starts (the first step is one interval later)")
    end_epoch: float = Field(..., description="epoch of the last pruning step (final ratio reached)")
    update_frequency: float = Field(1.0, description="epochs between pruning steps")
    inter_func: InterFunc = Field("cubic", description="linear | cubic | inverse_cubic ratio ramp")
    ignore: list[str] = Field(default_factory=list, description="module selectors whose output "
                              "channels are kept; the Detect head's output convs and DFL always are")
    round_to: int | None = Field(8, description="keep channel counts multiples of this (CPU "
                                 "kernels like 8/16); null = exact ratio")

    @field_validator("ignore", mode="before")
    @classmethod
    def _ignore(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> "ChannelPruningModifier":
        for name, value in [("target_ratio", self.target_ratio),
                            *((f"ratios['{k}']", v) for k, v in self.ratios.items())]:
            if not 0.0 <= value <= MAX_RATIO:
                raise ValueError(f"{name} must be a fraction of channels between 0.0 and {MAX_RATIO} "
                                 f"(0.5 = remove half), got {value}")
        for sel in self.ratios:
            _check_regex(sel, "ratios")
        for sel in self.ignore:
            _check_regex(sel, "ignore")
        if self.start_epoch < 0 or self.end_epoch < 0 or self.end_epoch < self.start_epoch:
            raise ValueError(f"needs 0 <= start_epoch <= end_epoch, got start_epoch="
                             f"{self.start_epoch}, end_epoch={self.end_epoch}")
        if self.update_frequency <= 0:
            raise ValueError(f"update_frequency must be > 0 epochs, got {self.update_frequency}")
        if self.round_to is not None and not 1 <= self.round_to <= 256:
            raise ValueError(f"round_to must be between 1 and 256 channels (or null), got {self.round_to}")
        return self

    # -- schedule -------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """Number of pruning steps."""
        span = self.end_epoch - self.start_epoch
        return max(1, round(span / self.update_frequency)) if span > 0 else 1

    def step_epochs(self) -> list[float]:
        """Epoch of each pruning step, in order."""
        n, span = self.num_steps, self.end_epoch - self.start_epoch
        return [self.start_epoch + span * k / n for k in range(1, n + 1)]

    def ratio_at_step(self, k: int, ratio: float | None = None) -> float:
        """Fraction of original channels removed after step ``k`` (0 = none yet)."""
        final = self.target_ratio if ratio is None else ratio
        return final * interpolate(k / self.num_steps, self.inter_func) if k > 0 else 0.0

    def steps_due(self, epoch: float, eps: float = 1e-9) -> int:
        """How many steps should have happened by ``epoch``."""
        return sum(1 for e in self.step_epochs() if epoch + eps >= e)
