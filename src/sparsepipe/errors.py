"""User-facing errors.

    python -c "from sparsepipe.errors import SparsepipeError"

Every mistake a user can make (a bad path, a bad recipe, a bad config value) raises a
subclass of ``SparsepipeError`` whose message is one paragraph naming the file, field or
value and how to fix it. The CLI prints that paragraph and exits non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SparsepipeError(Exception):
    """Base class of all errors caused by user input; the CLI prints them without traceback."""

    exit_code = 2


class ConfigError(SparsepipeError, ValueError):
    """A config field has a value that cannot work (names the field and the fix)."""


class DataError(SparsepipeError):
    """A dataset source is missing, unreadable or invalid (names the file and line)."""


class ModelError(SparsepipeError):
    """A model name or checkpoint cannot be loaded (names it and lists what would work)."""


class StorageError(SparsepipeError):
    """A local path or s3:// URI cannot be read or written."""


class RecipeError(SparsepipeError, ValueError):
    """A recipe cannot be loaded, evaluated or applied (names the file, modifier and field)."""
