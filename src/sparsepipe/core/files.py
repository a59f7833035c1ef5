"""Atomic file-system moves shared by the steps, storage and the data cache.

    python -c "from sparsepipe.core.files import replace_dir; help(replace_dir)"
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from sparsepipe.errors import StorageError


def replace_dir(new: str | os.PathLike, target: str | os.PathLike) -> None:
    """Put the finished folder ``new`` at ``target`` (same file system), replacing an old ``target``.

    An old ``target`` is renamed aside first and deleted only once ``new`` is in place; if putting
    ``new`` in place fails, the old folder is renamed back (rollback), so ``target`` is never left
    missing or half-written. A file or link at ``target`` is refused, not replaced.
    """
    new, target = Path(new), Path(target)
    if not (target.exists() or target.is_symlink()):
        os.replace(new, target)
        return
    if target.is_symlink() or not target.is_dir():
        raise StorageError(
            f"Cannot write the folder {target}: a file (or link) of that name is in the way. "
            "Remove it or choose another destination."
        )
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)  # rollback: the previous folder is back where it was
        raise
    shutil.rmtree(old, ignore_errors=True)
