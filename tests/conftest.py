"""Shared pytest fixtures.

    make test

Service fixtures (a real SeaweedFS S3 server and a real MLflow server on 127.0.0.1) live in
``service_fixtures.py``; model/data fixtures (tiny generated dataset, a trained checkpoint)
in ``model_fixtures.py``. Both are imported here so every test module can use them.
"""

from __future__ import annotations

import os

import tempfile

os.environ.setdefault("YOLO_OFFLINE", "true")
# Generated and downloaded datasets go to a throwaway cache, never the user's ~/.cache.
os.environ["SPARSEPIPE_CACHE"] = tempfile.mkdtemp(prefix="sparsepipe-test-cache-")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

try:  # written in parallel; each file is optional until it lands
    from service_fixtures import *  # noqa: F401,F403
except ImportError as exc:  # pragma: no cover
    if "service_fixtures" not in str(exc):
        raise
try:
    from model_fixtures import *  # noqa: F401,F403
except ImportError as exc:  # pragma: no cover
    if "model_fixtures" not in str(exc):
        raise
