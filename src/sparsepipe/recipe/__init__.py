"""Recipe engine: load, evaluate, validate and schedule SparseML-format recipes.

    python -m sparsepipe.recipe.cli validate recipes/yolov8n-pruned50.yaml --model yolov8n.yaml

Public API (what the training integration calls)::

    recipe = load_recipe(path_or_yaml, recipe_args=None)      # -> Recipe
    report = validate_recipe(recipe, model, teacher=None)     # -> ValidationReport (raises)
    recipe.num_epochs, recipe.modifiers, recipe.to_yaml()
    schedule.lr_at(recipe, epoch, group, base_lr), schedule.qat_state(recipe, epoch), ...

The format is described in ``docs/recipes.md``; every user mistake raises
:class:`sparsepipe.errors.RecipeError` (or a subclass from :mod:`sparsepipe.recipe.errors`).
"""

from __future__ import annotations

import importlib
from typing import Any

from sparsepipe.recipe.errors import (
    RecipeError,
    RecipeExpressionError,
    RecipeSyntaxError,
    RecipeValidationError,
    RecipeWarning,
)

# Attributes resolved on first use (PEP 562): the modifiers import sparsepipe.recipe.yaml_io
# and sparsepipe.recipe.registry, so this package must not import them eagerly.
_LAZY = {
    "schedule": "sparsepipe.recipe.schedule",
    "evaluate": "sparsepipe.recipe.expr",
    "Recipe": "sparsepipe.recipe.recipe",
    "Stage": "sparsepipe.recipe.recipe",
    "iter_recipe_files": "sparsepipe.recipe.recipe",
    "load_recipe": "sparsepipe.recipe.recipe",
    "load_recipe_string": "sparsepipe.recipe.recipe",
    "parse_recipe_args": "sparsepipe.recipe.recipe",
    "recipe_from_data": "sparsepipe.recipe.recipe",
    "build_modifier": "sparsepipe.recipe.registry",
    "known_tags": "sparsepipe.recipe.registry",
    "ModelIndex": "sparsepipe.recipe.validate",
    "ValidationReport": "sparsepipe.recipe.validate",
    "index_model": "sparsepipe.recipe.validate",
    "match_selector": "sparsepipe.recipe.validate",
    "resolve_pruning": "sparsepipe.recipe.validate",
    "validate_recipe": "sparsepipe.recipe.validate",
    "MAX_RECIPE_BYTES": "sparsepipe.recipe.yaml_io",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sparsepipe.recipe' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if name == "schedule" else getattr(module, name)
    globals()[name] = value
    return value


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
