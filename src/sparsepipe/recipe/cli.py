"""Moved to :mod:`sparsepipe.recipe_cli` (a front end); ``python -m sparsepipe.recipe.cli`` still runs it."""
from sparsepipe.recipe_cli import add_recipe_commands, cmd_schedule, cmd_validate, main  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
