"""User-facing errors.

    python -c "from sparsepipe.errors import SparsepipeError"

Every mistake a user can make (a bad path, a bad recipe, a bad config value) raises a
subclass of ``SparsepipeError`` whose message is one paragraph naming the file, field or
value and how to fix it. The CLI prints that paragraph and exits non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


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


#: errno -> what to do, for the file-system conditions a user can fix (a full disk, a read-only mount...)
_FILE_SYSTEM_HINTS = {
    "ENOSPC": "The disk is full: free space or choose --out (and SPARSEPIPE_CACHE) on another disk",
    "EDQUOT": "The disk quota is used up: free space or choose --out on another disk",
    "EFBIG": "The file is larger than this file system or the process limit allows: choose --out on another disk",
    "EROFS": "That is a read-only file system: choose a writable --out (and SPARSEPIPE_CACHE)",
    "ENAMETOOLONG": "A file or folder name is longer than the file system allows (usually 255 bytes per name, "
                    "4096 per path): shorten --out",
    "EACCES": "Permission denied: choose a folder you can write to",
    "EPERM": "The operation is not permitted there: choose a folder you can write to",
}


def describe_os_error(exc: OSError) -> str | None:
    """One paragraph for a file-system fault the user can fix, or None for any other OSError (a bug)."""
    name = errno.errorcode.get(exc.errno or 0, "")
    hint = _FILE_SYSTEM_HINTS.get(name)
    if hint is None:
        return None
    where = f" at {exc.filename}" if exc.filename else ""
    return (f"{exc.strerror or name}{where}. {hint}. Nothing of this run was recorded as a result "
            f"(result.json is written last), so a later step will not use its partial files.")
