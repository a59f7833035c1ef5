"""Recipe error types (all subclasses of :class:`sparsepipe.errors.RecipeError`).

    python -c "from sparsepipe.recipe.errors import RecipeSyntaxError"

Every message is one paragraph: which file, modifier, field and value, and how to fix it.
"""

from __future__ import annotations

from sparsepipe.errors import RecipeError


class RecipeSyntaxError(RecipeError):
    """The file is not a readable recipe (size, YAML syntax, tags, aliases, layout)."""


class RecipeExpressionError(RecipeError):
    """An ``eval(...)`` expression or a variable reference cannot be evaluated safely."""


class RecipeValidationError(RecipeError):
    """A recipe does not fit the model it is applied to (names that match nothing)."""


class RecipeWarning(UserWarning):
    """Something in a recipe that works but probably does not do what its author meant."""


__all__ = [
    "RecipeError",
    "RecipeExpressionError",
    "RecipeSyntaxError",
    "RecipeValidationError",
    "RecipeWarning",
]
