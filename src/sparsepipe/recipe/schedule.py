"""Schedule queries: pure functions of the fractional epoch over a loaded recipe.

    python -c "from sparsepipe.recipe import load_recipe, schedule; r = load_recipe('recipes/yolov8n-quick-test.yaml'); print(schedule.qat_state(r, 1.5))"

``epoch = completed_optimizer_steps / steps_per_epoch`` (count every batch, even one whose
optimizer step gradient accumulation skips, so the schedule does not drift during warm-up).
The training integration asks, at each step: the LR of each param group (:func:`lr_at`), the
target sparsity of each pruned tensor and whether to recompute masks now
(:meth:`GMPruningModifier.sparsity_at` / :meth:`should_update`, or :class:`MaskSchedule` that
tracks the last update for it), whether QAT / observers / BN freezing / distillation are on.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from sparsepipe.modifiers import lr as _lr
from sparsepipe.modifiers.distillation import DISTILLATION_MODIFIERS
from sparsepipe.modifiers.pruning import ConstantPruningModifier, GMPruningModifier
from sparsepipe.modifiers.quantization import QUANTIZATION_MODIFIERS

if TYPE_CHECKING:
    from sparsepipe.modifiers.base import Modifier
    from sparsepipe.recipe.recipe import Recipe


def training_epochs(recipe: "Recipe") -> int:
    """Training length in whole epochs (overrides the trainer's ``epochs``)."""
    return recipe.num_epochs


def lr_at(recipe: "Recipe", epoch: float, group: int = 0, base_lr: float | None = None) -> float | None:
    """LR of param group ``group`` at ``epoch``; ``base_lr`` if no LR modifier wrote it yet."""
    return _lr.lr_at(recipe.modifiers, epoch, group, base_lr)


def weight_decay_at(recipe: "Recipe", epoch: float, group: int = 0,
                    base: float | None = None) -> float | None:
    """Weight decay of param group ``group`` at ``epoch``."""
    return _lr.weight_decay_at(recipe.modifiers, epoch, group, base)


def controls_lr(recipe: "Recipe") -> bool:
    """True when the recipe has an LR modifier (the trainer's scheduler and warm-up stand down)."""
    return _lr.has_lr_modifier(recipe.modifiers)


def qat_state(recipe: "Recipe", epoch: float) -> dict[str, bool]:
    """``{"active", "observers_frozen", "bn_frozen"}`` at ``epoch`` (any QAT modifier)."""
    mods = recipe.modifiers_of(*QUANTIZATION_MODIFIERS)
    return {
        "active": any(m.qat_active(epoch) for m in mods),
        "observers_frozen": any(m.observers_frozen(epoch) for m in mods),
        "bn_frozen": any(m.bn_frozen(epoch) for m in mods),
    }


def active_distillation(recipe: "Recipe", epoch: float) -> list["Modifier"]:
    """Distillation modifiers active at ``epoch``."""
    return [m for m in recipe.modifiers_of(*DISTILLATION_MODIFIERS) if m.is_active(epoch)]


def constant_pruning_active(recipe: "Recipe", epoch: float) -> list[ConstantPruningModifier]:
    """ConstantPruning modifiers enforcing zeros at ``epoch``."""
    return [m for m in recipe.modifiers_of(ConstantPruningModifier) if m.is_active(epoch)]


class MaskSchedule:
    """Tracks when one GMP-family modifier last recomputed its masks.

    ``step(epoch)`` returns the sparsity factor to recompute masks at now (None = keep the
    current masks). Its state is one float, saved in checkpoints for exact resume.
    """

    def __init__(self, modifier: GMPruningModifier, last_update: float | None = None):
        self.modifier = modifier
        self.last_update = last_update

    def step(self, epoch: float, final: float | None = None) -> float | None:
        if not self.modifier.should_update(epoch, self.last_update):
            return None
        self.last_update = epoch
        return self.modifier.sparsity_at(epoch, final)

    def applied(self, final: float | None = None) -> float:
        """Sparsity of the current masks (0 before the first update)."""
        if self.last_update is None:
            return 0.0
        return self.modifier.sparsity_at(self.last_update, final)

    def state_dict(self) -> dict[str, Any]:
        return {"last_update": self.last_update}


def mask_update_epochs(modifier: GMPruningModifier, steps_per_epoch: int,
                       until: float | None = None) -> list[float]:
    """Epochs (step / steps_per_epoch) at which ``modifier`` recomputes masks."""
    until = modifier.end_epoch + 1 if until is None else until
    sched = MaskSchedule(modifier)
    out = []
    for step in range(int(math.ceil(until * steps_per_epoch)) + 1):
        epoch = step / steps_per_epoch
        if sched.step(epoch) is not None:
            out.append(epoch)
    return out


@dataclasses.dataclass
class Timeline:
    """Sampled schedule for printing/plotting: one row per sample epoch."""

    epochs: list[float]
    lr: dict[int, list[float | None]]
    sparsity: dict[str, list[float]]  # "#i Tag final=0.8" -> applied sparsity
    qat: list[bool]
    distill: list[bool]


def timeline(recipe: "Recipe", steps_per_epoch: int, groups: tuple[int, ...] = (0, 1, 2),
             base_lr: float | None = None, samples_per_epoch: int | None = None) -> Timeline:
    """Simulate every step of the recipe; record LR, applied sparsity and QAT per sample."""
    if steps_per_epoch < 1:
        raise ValueError("steps_per_epoch must be >= 1")
    total_steps = max(recipe.num_epochs, 1) * steps_per_epoch
    every = max(1, steps_per_epoch // samples_per_epoch) if samples_per_epoch else 1
    pruners = [(i, m) for i, m in enumerate(recipe.modifiers) if isinstance(m, GMPruningModifier)]
    scheds = {i: MaskSchedule(m) for i, m in pruners}
    out = Timeline([], {g: [] for g in groups}, {}, [], [])
    labels = {(i, f): f"#{i} {m.tag} final={f:g}" for i, m in pruners for f in m.final_values()}
    for label in labels.values():
        out.sparsity[label] = []
    for step in range(total_steps + 1):
        epoch = step / steps_per_epoch
        for i, sched in scheds.items():
            sched.step(epoch)
        if step % every and step != total_steps:
            continue
        out.epochs.append(epoch)
        for g in groups:
            out.lr[g].append(lr_at(recipe, epoch, g, base_lr))
        for (i, f), label in labels.items():
            mod = scheds[i].modifier
            on = mod.enforced(epoch) and scheds[i].last_update is not None
            out.sparsity[label].append(scheds[i].applied(f) if on else 0.0)
        out.qat.append(qat_state(recipe, epoch)["active"])
        out.distill.append(bool(active_distillation(recipe, epoch)))
    return out
