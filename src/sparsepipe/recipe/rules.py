"""Recipe rules that need no model: how a channel-pruning modifier combines with the others.

    python -c "from sparsepipe.recipe import load_recipe; from sparsepipe.recipe.rules import channel_modifier; print(channel_modifier(load_recipe('recipes/yolov8n-channels50.yaml')))"

Used by :func:`sparsepipe.recipe.validate.validate_recipe` (every error before training) and by
the channel-pruning controller (:mod:`sparsepipe.channel_pruning`).
"""

from __future__ import annotations

from typing import Any

from sparsepipe.errors import SparsepipeError
from sparsepipe.modifiers.channel_pruning import ChannelPruningModifier, selector_matches
from sparsepipe.modifiers.distillation import PerLayerDistillationModifier
from sparsepipe.modifiers.pruning import ConstantPruningModifier, GMPruningModifier
from sparsepipe.modifiers.quantization import QUANTIZATION_MODIFIERS


def channel_alias(name: str) -> str:
    """Module name as the unconverted model spells it (``cv1a``/``cv1b`` -> ``cv1``)."""
    return name.replace(".cv1a", ".cv1").replace(".cv1b", ".cv1")


def channel_selector_matches(sel: str, name: str) -> bool:
    """A channel-pruning selector matches a module name, split-free (``cv1a``) or not."""
    return selector_matches(sel, name) or selector_matches(sel, channel_alias(name))


def unmatched_selectors(names: list[str], modifier: ChannelPruningModifier) -> list[str]:
    """Selectors of ``ignore``/``ratios`` matching none of the module ``names`` (``cv1a`` also answers to ``cv1``)."""
    return [f"{field} '{sel}'" for field, sels in (("ignore", modifier.ignore), ("ratios", modifier.ratios))
            for sel in sels if not any(channel_selector_matches(sel, n) for n in names)]


def channel_modifier(recipe: Any) -> ChannelPruningModifier | None:
    """The recipe's one ChannelPruningModifier, or None; also checks how it combines with others."""
    mods = recipe.modifiers_of(ChannelPruningModifier)
    if not mods:
        return None
    if len(mods) > 1:
        raise SparsepipeError(f"{recipe.source}: the recipe has {len(mods)} ChannelPruningModifiers; "
                              f"use one (per-layer ratios go in its 'ratios' field).")
    mod = mods[0]
    if recipe.modifiers_of(PerLayerDistillationModifier):
        raise SparsepipeError(
            f"{recipe.source}: !PerLayerDistillationModifier cannot be combined with "
            f"!ChannelPruningModifier (its learned projections are sized for the unpruned layers). "
            f"Distill before or after channel pruning in a separate sparsify run, or use the "
            f"output-level !DistillationModifier.")
    for other in recipe.modifiers_of(GMPruningModifier, ConstantPruningModifier, *QUANTIZATION_MODIFIERS):
        if other.start < mod.end_epoch:
            raise SparsepipeError(
                f"{recipe.source}: !{other.tag} starts at epoch {other.start:g}, before "
                f"!ChannelPruningModifier ends (end_epoch {mod.end_epoch:g}). Channel pruning changes "
                f"tensor shapes, so unstructured pruning and QAT must start at or after its end_epoch; "
                f"move their start_epoch to {mod.end_epoch:g} or later.")
    return mod
