"""Images and models that are valid files but wrong for a YOLO detector (issue 15, items 8 and 11).

    .venv/bin/python -m pytest tests/test_hardening_inputs.py -q

A 20000x1 PNG made OpenCV assert inside letterboxing (a 500 from the server, a traceback from
``predict``); 16 PNGs of 6300x6300 in a 1.85 MB body took the server to 2.4 GB. The server here is
a real uvicorn in a thread with a hand-built YOLO-shaped ONNX (no training).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_serve import Server, _bright_cell_model

from sparsepipe.cli import main
from sparsepipe.predict import Predictor
from sparsepipe.serve import ServeConfig, create_app


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 200).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture()
def bright(tmp_path):
    return _bright_cell_model(tmp_path / "bright.onnx")


@pytest.fixture()
def server(bright):
    config = ServeConfig(max_pixels=4_000_000, max_request_pixels=6_000_000)
    srv = Server(create_app(lambda: Predictor(bright, conf=0.5), config, model_name="bright"))
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.mark.parametrize("size", [(20000, 1), (1, 20000), (3000, 10)])
def test_extreme_aspect_ratio_is_a_422_not_a_500(server, size):
    answer = server.client.post("/predict/from_files", files=[("files", ("wide.png", _png(*size), "image/png"))])
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert f"{size[0]}x{size[1]}" in detail and "aspect ratio" in detail, detail
    ok = server.client.post("/predict/from_files", files=[("files", ("ok.png", _png(128, 96), "image/png"))])
    assert ok.status_code == 200, ok.text


def test_decoded_pixels_per_request_are_bounded(server):
    """Each image is under max_pixels (4 M), together they are above max_request_pixels (6 M): 413,
    answered from the headers before any image is decoded."""
    files = [("files", (f"{i}.png", _png(1500, 1500), "image/png")) for i in range(3)]
    answer = server.client.post("/predict/from_files", files=files)
    assert answer.status_code == 413, answer.text
    assert "6750000 pixels" in answer.json()["detail"] and "6000000" in answer.json()["detail"]
    two = server.client.post("/predict/from_files", files=files[:2])
    assert two.status_code == 200, two.text


def test_predict_cli_refuses_an_extreme_aspect_ratio(bright, tmp_path, capsys):
    (tmp_path / "wide.png").write_bytes(_png(20000, 1))
    code = main(["predict", str(bright), str(tmp_path / "wide.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "aspect ratio" in err and "wide.png" in err, err


def test_an_array_with_an_extreme_aspect_ratio_is_refused(bright):
    from sparsepipe.image_input import ImageInputError

    with pytest.raises(ImageInputError, match="aspect ratio"):
        Predictor(bright).predict(np.zeros((1, 20000, 3), np.uint8))


def test_letterbox_never_resizes_to_zero_pixels():
    """The refusal is the user-facing answer; letterboxing itself stays total for any size."""
    from sparsepipe.letterbox import letterbox

    image, info = letterbox(np.zeros((1, 20000, 3), np.uint8), (64, 64))
    assert image.shape == (64, 64, 3) and info.width == 20000


# ------------------------------------------------------------------ item 11: not a YOLO export


def _plain_onnx(path, output_shape):
    """A valid ONNX with one 1x3x64x64 image input that is no YOLO export (output ``output_shape``)."""
    import onnx
    from onnx import TensorProto, helper

    numel = int(np.prod(output_shape))
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[1], keepdims=0),
         helper.make_node("Reshape", ["pooled", "shape"], ["flat"]),
         helper.make_node("Slice", ["flat", "starts", "ends"], ["cut"]),
         helper.make_node("Reshape", ["cut", "out_shape"], ["output0"])],
        "not-yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output_shape))],
        [helper.make_tensor("shape", TensorProto.INT64, [1], [64 * 64]),
         helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
         helper.make_tensor("ends", TensorProto.INT64, [1], [numel]),
         helper.make_tensor("out_shape", TensorProto.INT64, [len(output_shape)], list(output_shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


NOT_YOLO = {
    "4-d output (an image model)": (1, 1, 32, 32),
    "2-d output (a classifier)": (1, 10),
    "3-d output with too few rows": (1, 3, 20),
}


@pytest.mark.parametrize("shape", list(NOT_YOLO.values()), ids=list(NOT_YOLO))
def test_predict_on_an_onnx_that_is_not_a_yolo_export(shape, tmp_path, capsys):
    model = _plain_onnx(tmp_path / "plain.onnx", shape)
    (tmp_path / "a.png").write_bytes(_png(64, 48))
    code = main(["predict", str(model), str(tmp_path / "a.png"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "not a YOLO export" in err and str(model) in err, err


def test_serve_ready_says_the_model_is_not_a_yolo_export(tmp_path):
    model = _plain_onnx(tmp_path / "plain.onnx", (1, 1, 32, 32))
    srv = Server(create_app(lambda: Predictor(model), ServeConfig(), model_name="plain"))
    try:
        for _ in range(200):
            ready = srv.client.get("/ready")
            if "not a YOLO export" in ready.text:
                break
            import time

            time.sleep(0.05)
        answer = srv.client.post("/predict/from_files", files=[("files", ("a.png", _png(64, 48), "image/png"))])
    finally:
        srv.stop()
    assert ready.status_code == 503 and "not a YOLO export" in ready.json()["detail"], ready.text
    assert answer.status_code == 503 and "not a YOLO export" in answer.json()["detail"], answer.text


def test_evaluate_on_an_onnx_that_is_not_a_yolo_export(tmp_path, capsys):
    from sparsepipe.synthetic import SyntheticConfig, generate_dataset

    data = generate_dataset(tmp_path / "ds", SyntheticConfig(train_images=2, val_images=2, image_size=64), progress=False)
    model = _plain_onnx(tmp_path / "plain.onnx", (1, 1, 32, 32))
    code = main(["evaluate", "--model", str(model), "--data", str(data), "--imgsz", "64", "--no-track",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "not a YOLO export" in err, err


def test_quantize_on_random_bytes_names_the_file(tmp_path, capsys):
    from sparsepipe.synthetic import SyntheticConfig, generate_dataset

    data = generate_dataset(tmp_path / "ds", SyntheticConfig(train_images=2, val_images=2, image_size=64), progress=False)
    model = tmp_path / "random.onnx"
    model.write_bytes(bytes(range(256)) * 4)
    code = main(["quantize", "--model", str(model), "--data", str(data), "--no-track", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and f"Cannot read '{model}' as ONNX" in err, err
