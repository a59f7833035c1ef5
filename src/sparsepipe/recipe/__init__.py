"""Recipe engine: load, evaluate, validate and schedule SparseML-format recipes.

    sparsepipe recipe validate recipes/yolov8n-pruned50.yaml --model yolov8n.yaml

Public API (what the training integration calls)::

    recipe = load_recipe(path_or_yaml, recipe_args=None)      # -> Recipe
    report = validate_recipe(recipe, model, teacher=None)     # -> ValidationReport (raises)
    recipe.num_epochs, recipe.modifiers, recipe.to_yaml()
    schedule.lr_at(recipe, epoch, group, base_lr), schedule.qat_state(recipe, epoch), ...

The format is described in ``docs/recipes.md``; every user mistake raises
:class:`sparsepipe.errors.RecipeError` (or a subclass from :mod:`sparsepipe.recipe.errors`).
"""

from __future__ import annotations

from sparsepipe.modifiers.registry import build_modifier, known_tags
from sparsepipe.recipe import schedule
from sparsepipe.recipe.errors import (
    RecipeError,
    RecipeExpressionError,
    RecipeSyntaxError,
    RecipeValidationError,
    RecipeWarning,
)
from sparsepipe.recipe.expr import evaluate
from sparsepipe.recipe.recipe import (
    Recipe,
    Stage,
    iter_recipe_files,
    load_recipe,
    load_recipe_string,
    parse_recipe_args,
    recipe_from_data,
)
from sparsepipe.recipe.validate import ModelIndex, ValidationReport, index_model, match_selector, resolve_pruning, validate_recipe
from sparsepipe.recipe.yaml_io import MAX_RECIPE_BYTES

__all__ = [
    "MAX_RECIPE_BYTES",
    "ModelIndex",
    "Recipe",
    "RecipeError",
    "RecipeExpressionError",
    "RecipeSyntaxError",
    "RecipeValidationError",
    "RecipeWarning",
    "Stage",
    "ValidationReport",
    "build_modifier",
    "evaluate",
    "index_model",
    "iter_recipe_files",
    "known_tags",
    "load_recipe",
    "load_recipe_string",
    "match_selector",
    "parse_recipe_args",
    "recipe_from_data",
    "resolve_pruning",
    "schedule",
    "validate_recipe",
]
