"""sparsepipe: make ultralytics YOLO detectors small and fast on CPUs, and prove it.

    sparsepipe --help

Steps (data, train, export, evaluate, benchmark, report) are plain functions that take
paths/URIs plus a typed config and return a typed result that serialises to ``result.json``.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# Ultralytics must never try to pip-install packages or reach the internet on its own:
# sparsepipe runs on offline build nodes and in pinned images. Users can still override.
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_OFFLINE", "true")

from sparsepipe.errors import SparsepipeError  # noqa: E402

__all__ = ["SparsepipeError", "__version__"]
