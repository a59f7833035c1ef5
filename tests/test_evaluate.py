"""The evaluate step: mAP of .pt and of the exported .onnx itself, per class.

    .venv/bin/python -m pytest tests/test_evaluate.py
"""

from __future__ import annotations

import json

import pytest

from sparsepipe.errors import ConfigError
from sparsepipe.evaluate import EvaluateConfig, evaluate


@pytest.fixture(scope="module")
def onnx_eval(trained, tmp_path_factory):
    return evaluate(str(trained.export_dir), str(trained.data_dir), tmp_path_factory.mktemp("ev") / "onnx")


def test_onnx_is_evaluated_through_the_file_at_its_export_size(onnx_eval, trained):
    assert onnx_eval.extra["format"] == "onnx"
    assert onnx_eval.config["imgsz"] == 64  # read from the ONNX metadata
    assert onnx_eval.variant == "baseline"
    assert 0.0 <= onnx_eval.metrics["map50_95"] <= onnx_eval.metrics["map50"] <= 1.0
    rows = json.loads(onnx_eval.path("per_class").read_text())
    assert rows and {"name", "map50", "map50_95", "precision", "recall"} <= set(rows[0])


def test_pt_and_onnx_agree(onnx_eval, trained, tmp_path):
    pt = evaluate(str(trained.train_dir / "model.pt"), str(trained.data_dir), tmp_path / "pt", EvaluateConfig(imgsz=64))
    assert pt.extra["format"] == "pt"
    # Same weights, same data: FP32 ONNX and the torch checkpoint score the same mAP (letterbox/rect
    # batching differs slightly between backends, hence the tolerance).
    assert abs(pt.metrics["map50"] - onnx_eval.metrics["map50"]) <= 0.05


def test_evaluate_config_validation():
    with pytest.raises(ConfigError, match="split"):
        EvaluateConfig(split="train2")


def test_class_count_mismatch_is_refused_before_out_is_touched(trained, tmp_path):
    from sparsepipe.data import prepare_data
    from sparsepipe.errors import DataError

    three = prepare_data("synthetic:train=4,val=4,size=64,classes=3,seed=1", tmp_path / "three").out_dir
    out = tmp_path / "ev"
    with pytest.raises(DataError, match="predicts 6 classes .* has 3"):
        evaluate(str(trained.export_dir), str(three), out)
    assert not out.exists()


def test_evaluate_writes_per_image_records_and_an_interval(onnx_eval, trained):
    from sparsepipe.bootstrap import DetectionRecords

    records = DetectionRecords.load(onnx_eval.path("per_image"))
    assert len(records.names) == 8 and records.gt_counts.sum() > 0  # every val image, every label row
    m = onnx_eval.metrics
    assert m["map50_95_ci_low"] <= m["map50_95"] <= m["map50_95_ci_high"]
    assert onnx_eval.extra["bootstrap"]["resamples"] == 1000
