"""Fixtures for the recipe tests: ultralytics models built from YAML once per session.

    .venv/bin/python -m pytest tests/recipe -q -x
"""

from __future__ import annotations

import pytest

from recipe_helpers import build_model


@pytest.fixture(scope="session")
def yolov8n():
    return build_model("yolov8n.yaml")


@pytest.fixture(scope="session")
def yolov5s():
    return build_model("yolov5s.yaml")
