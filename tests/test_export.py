"""The export step: ONNX with ultralytics metadata, usable by onnxruntime and ultralytics.

    .venv/bin/python -m pytest tests/test_export.py
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from sparsepipe.errors import ConfigError, ModelError
from sparsepipe.export import ExportConfig, export_onnx, onnx_metadata
from sparsepipe.results import read_result


def test_static_export_carries_metadata_and_runs(trained):
    result = read_result(trained.export_dir)
    path = result.path("onnx")
    meta = onnx_metadata(path)
    assert meta["task"] == "detect"
    assert "circle" in meta["names"]
    assert meta["imgsz"] in ("[64, 64]", "[64,64]")
    assert result.metrics["size_mb"] > 1 and 0 < result.metrics["size_gz_mb"] < result.metrics["size_mb"]
    assert result.metrics["params"] > 1_000_000
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.shape == [1, 3, 64, 64]
    (output,) = session.run(None, {inp.name: np.zeros((1, 3, 64, 64), np.float32)})
    assert output.shape[0] == 1 and output.shape[1] == 4 + 6  # box + 6 classes


def test_dynamic_export_has_symbolic_batch(trained, tmp_path):
    result = export_onnx(str(trained.train_dir), tmp_path / "dyn", ExportConfig(imgsz=64, dynamic=True, opset=13))
    session = ort.InferenceSession(str(result.path("onnx")), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    assert not isinstance(shape[0], int)
    (output,) = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 3, 64, 64), np.float32)})
    assert output.shape[0] == 3
    assert not list((tmp_path / "dyn").glob(".export-*")), "staging folder left behind"


def test_export_of_missing_checkpoint_is_clear(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        export_onnx(str(tmp_path / "nope.pt"), tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_export_config_validation():
    with pytest.raises(ConfigError, match="opset"):
        ExportConfig(opset=9)
    with pytest.raises(ConfigError, match="multiple of 32"):
        ExportConfig(imgsz=65)


def test_ultralytics_predicts_with_the_onnx(trained):
    from ultralytics import YOLO

    image = sorted((trained.data_dir / "images" / "val").glob("*.jpg"))[0]
    results = YOLO(str(trained.export_dir / "model.onnx"), task="detect").predict(str(image), imgsz=64, conf=0.0, verbose=False)
    assert len(results) == 1
    assert results[0].names[0] == "circle"  # class names come from the ONNX metadata
    assert results[0].boxes is not None
