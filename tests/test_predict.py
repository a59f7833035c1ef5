"""sparsepipe predict: letterbox, NMS, engines, batching, and agreement with ultralytics' own prediction.

    .venv/bin/python -m pytest tests/test_predict.py -q

Agreement tolerance (test_matches_ultralytics_pt): every detection either side scoring at least
1.5x the confidence threshold has a partner on the other side with the same class, box IoU >= 0.9
and |score difference| <= 0.02 (scores are absolute class probabilities).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sparsepipe.errors import ConfigError
from sparsepipe.image_input import ImageInputError, decode_image_bytes, load_image
from sparsepipe.letterbox import letterbox, unletterbox_boxes
from sparsepipe.nms import batched_nms, box_iou

IOU_MIN, SCORE_TOL = 0.9, 0.02


def _val_images(trained, n=3) -> list[np.ndarray]:
    files = sorted((trained.data_dir / "images" / "val").iterdir())[:n]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def _match(ours, theirs, floor):
    """Unmatched detections of ``ours`` (dicts with box, class_id, score) against ``theirs``, above ``floor``."""
    free = list(range(len(theirs)))
    missing = []
    for det in ours:
        if det["score"] < floor:
            continue
        best, best_iou = None, 0.0
        for j in free:
            other = theirs[j]
            if other["class_id"] != det["class_id"] or abs(other["score"] - det["score"]) > SCORE_TOL:
                continue
            iou = float(box_iou(np.array(det["box"]), np.array([other["box"]]))[0])
            if iou > best_iou:
                best, best_iou = j, iou
        if best is None or best_iou < IOU_MIN:
            missing.append(det)
        else:
            free.remove(best)
    return missing


def _ultralytics(model, array, conf, imgsz):
    result = model.predict(np.ascontiguousarray(array[:, :, ::-1]), imgsz=imgsz, conf=conf, iou=0.7, verbose=False,
                           device="cpu")[0]
    return [{"box": b.tolist(), "class_id": int(c), "score": float(s)}
            for b, c, s in zip(result.boxes.xyxy.numpy(), result.boxes.cls.numpy(), result.boxes.conf.numpy())]


def assert_agrees(ours, theirs, conf):
    floor = conf * 1.5
    assert not _match(ours, theirs, floor), f"ours without an ultralytics partner: {_match(ours, theirs, floor)}"
    assert not _match(theirs, ours, floor), f"ultralytics' without a partner: {_match(theirs, ours, floor)}"


def test_matches_ultralytics_pt(trained):
    """Same boxes, classes and scores as ultralytics' prediction of the .pt, square and non-square images."""
    from ultralytics import YOLO

    from sparsepipe.predict import Predictor

    conf = 1e-4  # the 2-epoch fixture model is barely trained: its scores are tiny
    predictor = Predictor(trained.export_dir / "model.onnx", conf=conf)
    reference = YOLO(str(trained.train_dir / "model.pt"))
    images = _val_images(trained) + [_val_images(trained, 1)[0][:, 10:110]]  # + a 128x100 crop (padding)
    compared = 0
    for array, prediction in zip(images, predictor.predict(images)):
        ours = [d.to_dict() for d in prediction.detections]
        theirs = _ultralytics(reference, array, conf, 64)
        assert (prediction.height, prediction.width) == array.shape[:2]
        assert_agrees(ours, theirs, conf)
        compared += sum(d["score"] >= conf * 1.5 for d in theirs)
    assert compared > 0  # the comparison was not vacuous


def test_input_kinds_and_batching(trained, tmp_path):
    """Paths, bytes, PIL images and arrays give the same answer; a dynamic-batch export batches them."""
    from sparsepipe.export import ExportConfig, export_onnx
    from sparsepipe.predict import Predictor

    array = _val_images(trained, 1)[0]
    path = min((trained.data_dir / "images" / "val").iterdir())
    predictor = Predictor(trained.export_dir / "model.onnx", conf=1e-4)
    by_kind = predictor.predict([str(path), path.read_bytes(), Image.open(path), array])
    first = [d.to_dict() for d in by_kind[0].detections]
    assert first and all([d.to_dict() for d in p.detections] == first for p in by_kind)

    export_onnx(str(trained.train_dir), tmp_path / "dyn", ExportConfig(imgsz=64, dynamic=True))
    dynamic = Predictor(tmp_path / "dyn" / "model.onnx", conf=1e-4, batch_size=3)
    assert dynamic.info.batch is None
    images = _val_images(trained, 4)
    batched = dynamic.predict(images)  # engine calls of 3 + 1 images
    looped = [predictor.predict([a])[0] for a in images]
    for b, one in zip(batched, looped):
        assert_agrees([d.to_dict() for d in b.detections], [d.to_dict() for d in one.detections], 1e-4)


def test_openvino_engine_agrees(trained):
    from sparsepipe.predict import Predictor

    images = _val_images(trained, 2)
    ort = Predictor(trained.export_dir / "model.onnx", conf=1e-4).predict(images)
    ov = Predictor(trained.export_dir / "model.onnx", engine="openvino", conf=1e-4).predict(images)
    for a, b in zip(ort, ov):
        assert_agrees([d.to_dict() for d in a.detections], [d.to_dict() for d in b.detections], 1e-4)


def test_cli_writes_json_and_images(trained, tmp_path, capsys):
    from sparsepipe.cli import main

    images = sorted((trained.data_dir / "images" / "val").iterdir())[:2]
    out = tmp_path / "pred"
    code = main(["predict", str(trained.export_dir), *map(str, images), "--conf", "0.0001", "--out", str(out),
                 "--save-images"])
    assert code == 0
    payload = json.loads((out / "predictions.json").read_text())
    assert [p["source"] for p in payload["predictions"]] == [str(i) for i in images]
    det = payload["predictions"][0]["detections"][0]
    assert set(det) == {"box", "class_id", "label", "score"} and det["label"] in {"circle", "square", "triangle",
                                                                                  "star", "cross", "ring"}
    assert len(list(out.glob("*.jpg"))) == 2 and not list(out.glob(".*"))  # no temp files left

    assert main(["predict", str(trained.export_dir), str(tmp_path / "nope.jpg"), "--out", str(out)]) == 2
    assert main(["predict", str(trained.export_dir), str(images[0]), "--conf", "1.5", "--out", str(out)]) == 2
    assert main(["predict", str(trained.train_dir / "model.pt"), str(images[0]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope.jpg" in err and "conf=1.5" in err and "sparsepipe export" in err and "Traceback" not in err


def test_segment_model_masks(tmp_path, monkeypatch):
    """A segment export (random weights) gives boxes and masks of the original image size."""
    from ultralytics import YOLO

    from sparsepipe.predict import Predictor

    monkeypatch.chdir(tmp_path)  # ultralytics writes the export of a bare YAML into the working directory
    onnx_path = Path(YOLO("yolov8n-seg.yaml").export(format="onnx", imgsz=64, simplify=False)).resolve()
    assert onnx_path.is_relative_to(tmp_path.resolve())
    predictor = Predictor(onnx_path, conf=0.0, masks=True, max_det=5)
    assert predictor.info.task == "segment"
    (prediction,) = predictor.predict([np.random.default_rng(0).integers(0, 255, (80, 120, 3), np.uint8)])
    assert len(prediction.detections) == 5
    for det in prediction.detections:
        assert det.mask["size"] == [80, 120] and sum(det.mask["counts"]) == 80 * 120
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 <= x2 <= 120 and 0 <= y1 <= y2 <= 80


def test_letterbox_round_trip():
    image = np.zeros((100, 200, 3), np.uint8)
    placed, info = letterbox(image, (64, 64))
    assert placed.shape == (64, 64, 3) and info.gain == pytest.approx(0.32)
    assert (info.pad_left, info.pad_top) == (0, 16) and placed[0, 0, 0] == 114 and placed[32, 32, 0] == 0
    box = np.array([[32.0, 16.0, 64.0, 48.0]])  # the whole image inside the letterbox
    assert unletterbox_boxes(box, info).tolist() == [[100.0, 0.0, 200.0, 100.0]]


def test_nms_class_aware_and_max_det():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    classes = np.array([0, 0, 1, 0])
    assert batched_nms(boxes, scores, classes, iou=0.7).tolist() == [0, 2, 3]  # box 1 overlaps box 0 (IoU .81)
    assert batched_nms(boxes, scores, classes, iou=0.85).tolist() == [0, 1, 2, 3]
    assert batched_nms(boxes, scores, classes, iou=0.7, max_det=2).tolist() == [0, 2]
    assert batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.7).tolist() == []


def test_image_input_refusals(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    assert decode_image_bytes(data).shape == (48, 64, 3)
    with pytest.raises(ImageInputError) as err:
        decode_image_bytes(data[: len(data) // 2], "half.jpg")
    assert err.value.kind == "truncated" and "half.jpg" in str(err.value)
    with pytest.raises(ImageInputError) as err:
        decode_image_bytes(b"hello, not an image", "notes.txt")
    assert err.value.kind == "not_image"
    with pytest.raises(ImageInputError) as err:
        decode_image_bytes(data, "big.jpg", max_pixels=1000)
    assert err.value.kind == "too_large" and "64x48" in str(err.value)
    with pytest.raises(ImageInputError):
        load_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ConfigError):
        from sparsepipe.predict import PredictConfig

        PredictConfig(engine="tensorrt")


@pytest.mark.slow
def test_deepsparse_engine_agrees(trained):
    """DeepSparse (its own venv, `make deepsparse-env`) gives the same detections as onnxruntime."""
    from sparsepipe.engines.deepsparse import require_deepsparse_python
    from sparsepipe.predict import Predictor

    require_deepsparse_python()  # fails with the install hint when the venv is missing
    images = _val_images(trained, 3)
    ort = Predictor(trained.export_dir / "model.onnx", conf=1e-4).predict(images)
    ds = Predictor(trained.export_dir / "model.onnx", engine="deepsparse", conf=1e-4)
    try:
        for a, b in zip(ort, ds.predict(images)):
            assert_agrees([d.to_dict() for d in a.detections], [d.to_dict() for d in b.detections], 1e-4)
    finally:
        ds.close()
