"""Helpers shared by the recipe tests (a uniquely named module, unlike conftest).

    .venv/bin/python -m pytest tests/recipe -q -x
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "true")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
DATA = Path(__file__).resolve().parent / "data"


@functools.lru_cache(maxsize=None)
def build_model(cfg: str):
    """An untrained ultralytics DetectionModel from a config name (never downloads weights)."""
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel(cfg, verbose=False)


def model_for_recipe(path: Path) -> str:
    """Recipes in recipes/ are named '<model>-<what>.<ext>': the model config is '<model>.yaml'."""
    return path.name.split("-")[0] + ".yaml"
