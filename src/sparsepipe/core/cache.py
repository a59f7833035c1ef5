"""Where sparsepipe caches downloads: the one resolution of ``$SPARSEPIPE_CACHE``.

    SPARSEPIPE_CACHE=/big/disk/cache sparsepipe data coco128 --out runs/data
    python -c "from sparsepipe.core.cache import cache_dir; print(cache_dir('models'))"

Every cache (datasets, models from ``s3://`` or the MLflow registry, recipes from ``s3://``) lives
in a sub-folder of one root: ``$SPARSEPIPE_CACHE`` when it is set, else ``~/.cache/sparsepipe``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the cache root.
CACHE_ENV = "SPARSEPIPE_CACHE"
#: The sub-folders in use, one per kind of cached thing.
KINDS = ("data", "models", "recipes")


def cache_root() -> Path:
    """``$SPARSEPIPE_CACHE`` (``~`` expanded) when set and not blank, else ``~/.cache/sparsepipe``."""
    root = os.environ.get(CACHE_ENV, "").strip()
    return Path(root).expanduser() if root else Path.home() / ".cache" / "sparsepipe"


def cache_dir(kind: str) -> Path:
    """The cache folder of one ``kind`` (``data``, ``models`` or ``recipes``), under :func:`cache_root`."""
    if kind not in KINDS:
        raise ValueError(f"cache kind {kind!r} is not one of {', '.join(KINDS)}.")
    return cache_root() / kind
