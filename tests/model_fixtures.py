"""Fixtures that do real (tiny) work once per test session: a generated dataset, a trained
checkpoint and its ONNX export. Sized to keep the default suite fast on 2 CPU cores.

    .venv/bin/python -m pytest tests/test_training.py
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

TINY_DATA = "synthetic:train=16,val=8,size=128,seed=3"
TINY_IMGSZ = 64


@dataclasses.dataclass
class Trained:
    data_dir: Path  # out folder of the data step
    train_dir: Path  # out folder of the train step
    export_dir: Path  # out folder of the export step
    events: list[str]  # ultralytics callback events in the order they fired


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A validated 16+8 image generated dataset (data step out folder)."""
    from sparsepipe.data import prepare_data

    out = tmp_path_factory.mktemp("tiny") / "data"
    prepare_data(TINY_DATA, out)
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_data) -> Trained:
    """yolov8n trained 2 epochs at 64 px on the tiny dataset, then exported to ONNX."""
    from sparsepipe.export import ExportConfig, export_onnx
    from sparsepipe.training import TrainConfig, train
    from sparsepipe.ultralytics_hooks import TRAINING_EVENTS

    root = tmp_path_factory.mktemp("trained")
    events: list[str] = []

    def recorder(event):
        return lambda trainer: events.append(event)

    config = TrainConfig(epochs=2, imgsz=TINY_IMGSZ, batch=8, workers=0, plots=True)
    callbacks = {event: [recorder(event)] for event in TRAINING_EVENTS}
    train("yolov8n.yaml", str(tiny_data), root / "train", config, callbacks=callbacks)
    export_onnx(str(root / "train"), root / "export", ExportConfig(imgsz=TINY_IMGSZ))
    return Trained(tiny_data, root / "train", root / "export", events)
