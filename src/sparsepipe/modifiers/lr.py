"""Learning-rate and weight-decay modifiers and the pure functions that schedule them.

    python -c "from sparsepipe.modifiers.lr import LearningRateFunctionModifier as L; print(L(lr_func='cosine', init_lr=0.01, final_lr=0.001, start_epoch=0, end_epoch=10).lr_at(5))"

Which modifier wins when several are active at one step: modifiers are applied in the order
of :meth:`Modifier.sort_key` (end epoch, then start epoch; a never-ending one last), so the
one that ends later overwrites the others. :func:`lr_at` reproduces that without simulating
steps: for each modifier it knows when it last wrote the LR, and the latest write wins.

``param_groups`` index the optimizer's parameter groups. Today's ultralytics builds them as
0 = biases, 1 = decayed weights (conv/linear), 2 = batch-norm weights; recipes written for
2021 YOLOv5 code assumed another order, so naming groups triggers a warning
(:func:`param_group_warning`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sparsepipe.modifiers.base import Modifier
from sparsepipe.modifiers.registry import register

ULTRALYTICS_PARAM_GROUPS = {0: "biases (no weight decay)", 1: "conv/linear weights (decayed)",
                            2: "batch-norm weights (no weight decay)"}


class _GroupsMixin(Modifier):
    param_groups: list[int] | None = Field(
        None, description="optimizer param-group indices to change; None = all groups")

    @field_validator("param_groups", mode="before")
    @classmethod
    def _groups(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        return value

    @field_validator("param_groups")
    @classmethod
    def _groups_nonneg(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(g < 0 for g in value):
            raise ValueError("param group indices start at 0")
        return value

    def applies_to(self, group: int) -> bool:
        """True if this modifier changes param group ``group``."""
        return self.param_groups is None or group in self.param_groups


class _LRModifier(_GroupsMixin):
    """An LR modifier: knows its value at an epoch and when it last wrote it."""

    def last_write(self, epoch: float) -> tuple[float, float] | None:
        """(epoch of the last write at or before ``epoch``, LR written), or None if not yet."""
        raise NotImplementedError


@register("SetLearningRateModifier")
class SetLearningRateModifier(_LRModifier):
    """Sets the LR of the chosen param groups once, at the first step at/after ``start_epoch``."""

    tag = "SetLearningRateModifier"
    learning_rate: float = Field(..., gt=0, description="the LR to set")
    constant_logging: bool = Field(False, description="accepted for SparseML compatibility; unused")

    def last_write(self, epoch: float) -> tuple[float, float] | None:
        if epoch < self.start:
            return None
        return (self.start, self.learning_rate)

    def sort_key(self) -> tuple[float, float]:
        # it writes once, at start: treat it as ending there unless an end is given
        return (self.start if self.end_epoch < 0 else self.end, self.start)


@register("LearningRateFunctionModifier")
class LearningRateFunctionModifier(_LRModifier):
    """LR follows ``lr_func`` from ``init_lr`` to ``final_lr`` over ``[start_epoch, end_epoch]``.

    With ``x = (epoch - start) / (end - start)``:
    linear ``init + x (final - init)``; cosine ``final + (init - final)(1 + cos(pi x)) / 2``
    (the same formula rises when final > init); cyclic_linear: a sawtooth from init to final
    restarting every ``cycle_epochs``. After ``end_epoch`` the last value stays.
    """

    tag = "LearningRateFunctionModifier"
    lr_func: Literal["linear", "cosine", "cyclic_linear"] = Field("linear", description="shape")
    init_lr: float = Field(..., ge=0, description="LR at start_epoch (0 = a warm-up from zero)")
    final_lr: float = Field(..., ge=0, description="LR at end_epoch")
    start_epoch: float = Field(0.0, description="first epoch of the schedule")
    end_epoch: float = Field(..., description="last epoch of the schedule (must be set)")
    cycle_epochs: float = Field(1.0, gt=0, description="period of cyclic_linear, in epochs")

    @model_validator(mode="after")
    def _range(self) -> "LearningRateFunctionModifier":
        if self.end_epoch < 0 or self.end_epoch <= self.start:
            raise ValueError(
                f"end_epoch ({self.end_epoch}) must be after start_epoch ({self.start_epoch}); "
                f"an LR function needs a finite range")
        return self

    def lr_at(self, epoch: float) -> float:
        """The LR this modifier sets at ``epoch`` (clamped to its range)."""
        span = self.end - self.start
        e = min(max(epoch, self.start), self.end)
        if self.lr_func == "cyclic_linear":
            phase = ((e - self.start) % self.cycle_epochs) / self.cycle_epochs
            if epoch >= self.end and phase == 0:
                phase = 1.0  # the sawtooth ended exactly at a cycle boundary: keep its last value
            return self.init_lr + phase * (self.final_lr - self.init_lr)
        x = (e - self.start) / span
        if self.lr_func == "linear":
            return self.init_lr + x * (self.final_lr - self.init_lr)
        return self.final_lr + (self.init_lr - self.final_lr) * (1 + math.cos(math.pi * x)) / 2

    def last_write(self, epoch: float) -> tuple[float, float] | None:
        if epoch < self.start:
            return None
        t = min(epoch, self.end)
        return (t, self.lr_at(t))


_SCHEDULERS = ("StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingWarmRestarts",
               "ConstantLR")


@register("LearningRateModifier")
class LearningRateModifier(_LRModifier):
    """A torch LR scheduler class driven by epochs (YOLOv3-era recipes).

    ``lr_class`` and ``lr_kwargs``: StepLR(step_size in epochs, gamma=0.1), MultiStepLR(milestones,
    gamma=0.1; milestones are absolute epochs strictly inside [start, end)), ExponentialLR(gamma;
    per epoch), CosineAnnealingWarmRestarts(T_0 or SparseML's cycle_epochs, T_mult=1, eta_min or
    SparseML's lr_min = 0), ConstantLR (keeps init_lr). SparseML converts these epochs to
    optimizer steps (``round(step_size * steps_per_epoch)``); here the decays happen at the
    exact epochs, which is the same step whenever ``step_size * steps_per_epoch`` is whole.
    """

    tag = "LearningRateModifier"
    lr_class: Literal["StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingWarmRestarts",
                      "ConstantLR"] = Field(..., description="torch scheduler to emulate")
    lr_kwargs: dict[str, Any] = Field(default_factory=dict, description="scheduler arguments")
    init_lr: float = Field(..., gt=0, description="LR at start_epoch")
    start_epoch: float = Field(0.0, description="epoch the scheduler starts")
    update_frequency: float = Field(-1.0, description="accepted for SparseML compatibility")
    constant_logging: bool = Field(False, description="accepted for SparseML compatibility")

    @field_validator("lr_kwargs", mode="before")
    @classmethod
    def _sparseml_names(cls, value: Any) -> Any:
        """SparseML's names for CosineAnnealingWarmRestarts: ``lr_min`` and ``cycle_epochs``.

        SparseML renames them to torch's ``eta_min`` and ``T_0`` before building the
        scheduler; recipes contain SparseML's names, so both spellings are read here.
        """
        if not isinstance(value, dict):
            return value
        out = dict(value)
        for sparseml, torch_name in (("lr_min", "eta_min"), ("cycle_epochs", "T_0")):
            if sparseml in out:
                if torch_name in out:
                    raise ValueError(f"lr_kwargs has both '{sparseml}' (SparseML's name) and "
                                     f"'{torch_name}' (torch's name) for the same argument; "
                                     f"keep one")
                out[torch_name] = out.pop(sparseml)
        return out

    @model_validator(mode="after")
    def _kwargs(self) -> "LearningRateModifier":
        allowed = {"StepLR": {"step_size", "gamma"}, "MultiStepLR": {"milestones", "gamma"},
                   "ExponentialLR": {"gamma"},
                   "CosineAnnealingWarmRestarts": {"T_0", "T_mult", "eta_min"},
                   "ConstantLR": set()}[self.lr_class]
        extra = set(self.lr_kwargs) - allowed
        if extra:
            raise ValueError(f"lr_kwargs {sorted(extra)} are not arguments of {self.lr_class} "
                             f"(allowed: {sorted(allowed) or 'none'})")
        need = {"StepLR": {"step_size"}, "MultiStepLR": {"milestones"}, "ExponentialLR": {"gamma"},
                "CosineAnnealingWarmRestarts": {"T_0"}, "ConstantLR": set()}[self.lr_class]
        missing = need - set(self.lr_kwargs)
        if missing:
            raise ValueError(f"{self.lr_class} needs lr_kwargs {sorted(missing)}")
        k = self.lr_kwargs

        def number(name: str, low: float, default: float | None = None) -> None:
            value = k.get(name, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
                raise ValueError(f"lr_kwargs {name} must be a number >= {low}, got {value!r}")

        if "gamma" in k:
            number("gamma", 0.0)
        if self.lr_class == "StepLR":
            number("step_size", 1e-6)
        if self.lr_class == "MultiStepLR":
            ms = k["milestones"]
            if not isinstance(ms, list) or not all(
                    isinstance(m, (int, float)) and not isinstance(m, bool) for m in ms):
                raise ValueError(f"lr_kwargs milestones must be a list of epochs, got {ms!r}")
            outside = [m for m in ms if m <= self.start or m >= self.end]
            if outside:
                raise ValueError(
                    f"lr_kwargs milestones {outside} must lie after start_epoch "
                    f"({self.start_epoch}) and before end_epoch ({self.end_epoch}); milestones "
                    f"are absolute epochs of the whole run, as in SparseML")
        if self.lr_class == "CosineAnnealingWarmRestarts":
            number("T_0", 1e-3)
            number("T_mult", 1, 1)
            number("eta_min", 0.0, 0.0)
            if float(k.get("T_mult", 1)) != int(k.get("T_mult", 1)):
                raise ValueError("lr_kwargs T_mult must be a whole number >= 1")
        return self

    def shifted(self, offset: float) -> "LearningRateModifier":
        """Staged recipes: milestones are epochs of the stage, so they move with it."""
        moved = super().shifted(offset)
        if offset and self.lr_class == "MultiStepLR":
            kwargs = dict(self.lr_kwargs, milestones=[m + offset for m in self.lr_kwargs["milestones"]])
            moved = moved.model_copy(update={"lr_kwargs": kwargs})
        return moved

    def lr_at(self, epoch: float) -> float:
        k = self.lr_kwargs
        e = max(min(epoch, self.end) - self.start, 0.0)
        if self.lr_class == "StepLR":
            return self.init_lr * float(k.get("gamma", 0.1)) ** math.floor(e / float(k["step_size"]))
        if self.lr_class == "MultiStepLR":
            passed = sum(1 for m in k["milestones"] if self.start + e >= float(m))
            return self.init_lr * float(k.get("gamma", 0.1)) ** passed
        if self.lr_class == "ExponentialLR":
            return self.init_lr * float(k["gamma"]) ** math.floor(e)
        if self.lr_class == "CosineAnnealingWarmRestarts":
            t0, mult, eta_min = float(k["T_0"]), float(k.get("T_mult", 1)), float(k.get("eta_min", 0))
            t_i, t_cur = t0, e
            if mult == 1:
                t_cur = e % t0
            while t_cur >= t_i:  # T_mult >= 2: logarithmically many restarts
                t_cur -= t_i
                t_i *= mult
            return eta_min + (self.init_lr - eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
        return self.init_lr

    def last_write(self, epoch: float) -> tuple[float, float] | None:
        if epoch < self.start:
            return None
        t = min(epoch, self.end)
        return (t, self.lr_at(t))


@register("SetWeightDecayModifier")
class SetWeightDecayModifier(_GroupsMixin):
    """Sets the weight decay of the chosen param groups once, at ``start_epoch``."""

    tag = "SetWeightDecayModifier"
    weight_decay: float = Field(..., ge=0, description="the weight decay to set")
    start_epoch: float = Field(-1.0, description="epoch to set it at; -1 = at the beginning")
    constant_logging: bool = Field(False, description="accepted for SparseML compatibility")


LR_MODIFIERS = (SetLearningRateModifier, LearningRateFunctionModifier, LearningRateModifier)


def lr_at(modifiers: Iterable[Modifier], epoch: float, group: int = 0,
          base_lr: float | None = None) -> float | None:
    """LR of param group ``group`` at ``epoch`` under the recipe's LR modifiers.

    Returns ``base_lr`` when no LR modifier has written to this group yet. Pure: the same
    answer as applying the active modifiers step by step in :meth:`Modifier.sort_key` order.
    """
    lr_mods = sorted((m for m in modifiers if isinstance(m, _LRModifier) and m.applies_to(group)),
                     key=lambda m: m.sort_key())
    best: tuple[float, int, float] | None = None
    for order, mod in enumerate(lr_mods):
        write = mod.last_write(epoch)
        if write is None:
            continue
        t, value = write
        candidate = (t, order, value)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return base_lr if best is None else best[2]


def weight_decay_at(modifiers: Iterable[Modifier], epoch: float, group: int = 0,
                    base: float | None = None) -> float | None:
    """Weight decay of param group ``group`` at ``epoch`` (the latest SetWeightDecay wins)."""
    best: tuple[float, float] | None = None
    for mod in modifiers:
        if isinstance(mod, SetWeightDecayModifier) and mod.applies_to(group) and epoch >= mod.start:
            if best is None or mod.start >= best[0]:
                best = (mod.start, mod.weight_decay)
    return base if best is None else best[1]


def has_lr_modifier(modifiers: Iterable[Modifier]) -> bool:
    """True when the recipe controls the LR (the trainer's own scheduler must then stand down)."""
    return any(isinstance(m, _LRModifier) for m in modifiers)


def param_group_warning(modifiers: Sequence[Modifier]) -> str | None:
    """A warning text if any modifier names param groups (their order changed since 2021)."""
    named = sorted({g for m in modifiers if isinstance(m, _GroupsMixin) and m.param_groups
                    for g in m.param_groups})
    if not named:
        return None
    meaning = "; ".join(f"{g} = {ULTRALYTICS_PARAM_GROUPS.get(g, 'does not exist in ultralytics')}"
                        for g in named)
    return (f"The recipe names optimizer param groups {named}. In today's ultralytics they are: "
            f"{meaning}. Recipes written for 2021 YOLOv5 code assumed a different order; check "
            f"that each modifier targets the group you mean.")

