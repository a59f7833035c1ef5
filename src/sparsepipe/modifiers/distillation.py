"""Distillation modifiers: per-layer feature distillation and output (logit) distillation.

    python -c "from sparsepipe.modifiers.distillation import DistillationModifier as D; print(D(start_epoch=0, end_epoch=5).loss_weights())"

The teacher is not a recipe field: the training step takes it (a checkpoint path, a registry
URI, or ``self`` = a frozen copy of the starting model).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from sparsepipe.modifiers.base import Modifier
from sparsepipe.modifiers.registry import register


@register("PerLayerDistillationModifier")
class PerLayerDistillationModifier(Modifier):
    """``L + gain * sum_i mse(P_i(s_i), t_i) [/ (mean(t_i^2) + epsilon)]`` over named layers.

    ``P_i`` is a bias-free 1x1 conv from student to teacher channels (``project_features``).
    When only one of the name lists is given it is used for both models.
    """

    tag = "PerLayerDistillationModifier"
    gain: float = Field(1.0, ge=0, description="weight of the feature loss")
    student_layer_names: list[str] | None = Field(None, description="student module names")
    teacher_layer_names: list[str] | None = Field(None, description="teacher module names")
    project_features: bool = Field(True, description="learn a 1x1 conv student->teacher channels")
    normalize: bool = Field(True, description="divide each term by mean(t^2) + epsilon")
    epsilon: float = Field(1e-6, gt=0, description="added to the normaliser")

    @field_validator("student_layer_names", "teacher_layer_names", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _names(self) -> "PerLayerDistillationModifier":
        s, t = self.student_layer_names, self.teacher_layer_names
        if not s and not t:
            raise ValueError("give student_layer_names and/or teacher_layer_names")
        if s and t and len(s) != len(t):
            raise ValueError(f"student_layer_names has {len(s)} names but teacher_layer_names "
                             f"has {len(t)}; they are paired one to one")
        return self

    def layer_pairs(self) -> list[tuple[str, str]]:
        """(student name, teacher name) pairs."""
        s = self.student_layer_names or self.teacher_layer_names or []
        t = self.teacher_layer_names or self.student_layer_names or []
        return list(zip(s, t))


@register("DistillationModifier", "KnowledgeDistillationModifier")
class DistillationModifier(Modifier):
    """``(1 - hardness) L + hardness * KL(student/T || teacher/T) * T^2`` on the outputs."""

    tag = "DistillationModifier"
    hardness: float = Field(0.5, ge=0, le=1, description="weight of the distillation term")
    temperature: float = Field(2.0, gt=0, description="softmax temperature T")
    distill_output_keys: Any = Field(None, description="accepted for SparseML compatibility")

    def loss_weights(self) -> tuple[float, float]:
        """(weight of the task loss, weight of the KL term)."""
        return (1 - self.hardness, self.hardness * self.temperature**2)


DISTILLATION_MODIFIERS = (PerLayerDistillationModifier, DistillationModifier)
