"""sparsepipe serve: a real uvicorn server on 127.0.0.1 with a model trained on generated data.

    .venv/bin/python -m pytest tests/test_serve.py -q

The server runs in a thread of the test process (random free port) so the tests can hold its
inference workers at a gate: that makes the queue bound observable without timing anything.
"""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from sparsepipe.predict import Predictor
from sparsepipe.serve import ServeConfig, create_app

THREADS, QUEUE = 1, 2


class GatedPredictor:
    """The real predictor behind a gate the test can close (inference then waits for it)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor, self.gate = predictor, threading.Event()
        self.gate.set()
        self.config, self.info = predictor.config, predictor.info

    def predict(self, images, conf=None, iou=None):
        self.gate.wait(timeout=60)
        return self.predictor.predict(images, conf=conf, iou=iou)


class Server:
    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def wait_ready(self) -> None:
        for _ in range(600):
            if self.client.get("/ready").status_code == 200:
                return
            time.sleep(0.05)
        raise RuntimeError(self.client.get("/ready").text)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(trained):
    predictor = GatedPredictor(Predictor(trained.export_dir / "model.onnx", conf=1e-4))
    config = ServeConfig(threads=THREADS, queue_size=QUEUE, max_images=4, max_request_mb=1.0, max_pixels=4_000_000)
    srv = Server(create_app(lambda: predictor, config, model_name="tiny"))
    srv.predictor = predictor
    srv.wait_ready()
    yield srv
    srv.stop()


def _val_files(trained, n=2) -> list[Path]:
    return sorted((trained.data_dir / "images" / "val").iterdir())[:n]


def _metric(server, name: str, **labels) -> float:
    text = server.client.get("/metrics").text
    want = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.split()[-1])
    return 0.0


def test_real_answers_both_endpoints(server, trained):
    files = _val_files(trained)
    direct = Predictor(trained.export_dir / "model.onnx", conf=1e-4).predict([str(f) for f in files])
    answer = server.client.post("/predict/from_files",
                                files=[("files", (f.name, f.read_bytes(), "image/jpeg")) for f in files])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["task"] == "detect" and body["engine"] == "onnxruntime"
    assert [p["source"] for p in body["predictions"]] == [f.name for f in files]
    for got, want in zip(body["predictions"], direct):
        assert (got["width"], got["height"]) == (want.width, want.height) == (128, 128)
        assert got["detections"] == [d.to_dict() for d in want.detections] and got["detections"]

    payload = {"images": [{"data": base64.b64encode(files[0].read_bytes()).decode(), "name": "a.jpg"}], "conf": 0.9}
    answer = server.client.post("/predict", json=payload)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"][0]["source"] == "a.jpg"
    assert answer.json()["predictions"][0]["detections"] == []  # conf 0.9 from the request drops every box


def test_deepsparse_client_request_works_as_written(server, trained):
    """DeepSparse's documented client, unchanged: multipart field `request`, read boxes/scores/labels."""
    import requests

    files = _val_files(trained)
    direct = Predictor(trained.export_dir / "model.onnx", conf=1e-4).predict([str(f) for f in files])
    with open(files[0], "rb") as one, open(files[1], "rb") as two:
        resp = requests.post(server.url + "/predict/from_files", files=[("request", one), ("request", two)],
                             timeout=60)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) >= {"boxes", "scores", "labels"}
    assert len(body["boxes"]) == len(body["scores"]) == len(body["labels"]) == 2  # one list per image
    for i, want in enumerate(direct):
        dets = [d.to_dict() for d in want.detections]
        assert dets
        assert body["boxes"][i] == [d["box"] for d in dets]
        assert body["scores"][i] == [d["score"] for d in dets]
        assert body["labels"][i] == [d["label"] for d in dets]
        assert body["class_ids"][i] == [d["class_id"] for d in dets]
        for box in body["boxes"][i]:
            assert len(box) == 4 and box[0] <= box[2] and box[1] <= box[3]
    # today's field still answers in sparsepipe's shape, and mixing the two is refused clearly
    good = files[0].read_bytes()
    today = server.client.post("/predict/from_files", files=[("files", ("a.jpg", good, "image/jpeg"))])
    assert today.status_code == 200 and "predictions" in today.json()
    both = server.client.post("/predict/from_files", files=[("files", ("a.jpg", good, "image/jpeg")),
                                                            ("request", ("b.jpg", good, "image/jpeg"))])
    assert both.status_code == 422 and "not both" in both.json()["detail"]
    bad = requests.post(server.url + "/predict/from_files", files=[("request", ("x.txt", b"hello"))], timeout=60)
    assert bad.status_code == 422 and "Traceback" not in bad.json()["detail"]


def _jpeg(size=(96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _huge_png() -> bytes:
    """A 20000x20000 greyscale PNG that compresses to a few hundred KiB (never decoded by the server)."""
    import struct
    import zlib

    packer = zlib.compressobj(9)
    row = b"\x00" * 20001  # filter byte + 20000 black pixels
    raw = b"".join(packer.compress(row) for _ in range(20000)) + packer.flush()

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_bad_inputs_get_clear_4xx_and_server_keeps_serving(server, trained):
    good = _val_files(trained, 1)[0].read_bytes()
    jpeg = _jpeg()
    cases = {
        "non-image": (server.client.post, "/predict/from_files", {"files": [("files", ("a.txt", b"hello", "text/plain"))]}, 422),
        "truncated jpeg": (server.client.post, "/predict/from_files",
                           {"files": [("files", ("t.jpg", jpeg[: len(jpeg) // 2], "image/jpeg"))]}, 422),
        "20000x20000": (server.client.post, "/predict/from_files",
                        {"files": [("files", ("huge.png", _huge_png(), "image/png"))]}, 413),
        "empty multipart": (server.client.post, "/predict/from_files",
                            {"data": {"other": "x"}, "files": [("other", ("x", b"", "text/plain"))]}, 422),
        "empty json": (server.client.post, "/predict", {"json": {"images": []}}, 422),
        "no body": (server.client.post, "/predict", {"headers": {"content-type": "application/json"}}, 422),
        "wrong content type": (server.client.post, "/predict/from_files", {"json": {"images": []}}, 415),
        "form to json endpoint": (server.client.post, "/predict", {"files": [("files", ("a.jpg", good, "image/jpeg"))]}, 415),
        "bad base64": (server.client.post, "/predict", {"json": {"images": [{"data": "@@@"}]}}, 422),
        "unknown field": (server.client.post, "/predict", {"json": {"images": [{"data": ""}], "extra": 1}}, 422),
        "too many images": (server.client.post, "/predict/from_files",
                            {"files": [("files", (f"{i}.jpg", good, "image/jpeg")) for i in range(5)]}, 413),
        "body over limit": (server.client.post, "/predict/from_files",
                            {"files": [("files", ("big.bin", b"\0" * 1_200_000, "image/jpeg"))]}, 413),
    }
    for name, (call, path, kwargs, status) in cases.items():
        answer = call(path, **kwargs)
        assert answer.status_code == status, (name, answer.status_code, answer.text)
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and len(detail) > 20 and "Traceback" not in detail, (name, detail)
    ok = server.client.post("/predict/from_files", files=[("files", ("ok.jpg", good, "image/jpeg"))])
    assert ok.status_code == 200
    assert _metric(server, "sparsepipe_errors_total", endpoint="/predict/from_files", reason="too_large") >= 1


def test_queue_bound_gives_fast_503_then_recovers(server, trained):
    good = _val_files(trained, 1)[0].read_bytes()
    state = server.app.state.serve_state
    rejected_before = _metric(server, "sparsepipe_rejected_total")
    results: list[int] = []

    def post() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            results.append(client.post("/predict/from_files", files=[("files", ("a.jpg", good, "image/jpeg"))]).status_code)

    server.predictor.gate.clear()
    try:
        admitted = [threading.Thread(target=post) for _ in range(THREADS + QUEUE)]
        for t in admitted:
            t.start()
        for _ in range(600):
            if state["admitted"] == THREADS + QUEUE:
                break
            time.sleep(0.02)
        assert state["admitted"] == THREADS + QUEUE
        assert _metric(server, "sparsepipe_queue_depth") == QUEUE
        flood = [server.client.post("/predict/from_files", files=[("files", ("a.jpg", good, "image/jpeg"))])
                 for _ in range(4)]
        # answered while every worker was still held at the gate: refused at once, not queued
        assert [r.status_code for r in flood] == [503] * 4 and not results
        assert all(r.headers["retry-after"] == "1" and "busy" in r.json()["detail"] for r in flood)
        assert server.client.get("/health").status_code == 200  # the event loop stays free
    finally:
        server.predictor.gate.set()
    for t in admitted:
        t.join(timeout=60)
    assert results == [200] * (THREADS + QUEUE)
    assert server.client.post("/predict/from_files", files=[("files", ("a.jpg", good, "image/jpeg"))]).status_code == 200
    assert _metric(server, "sparsepipe_rejected_total") == rejected_before + 4
    assert state["admitted"] == 0


def test_metrics_move(server, trained):
    good = _val_files(trained, 1)[0].read_bytes()
    labels = {"endpoint": "/predict/from_files", "status": "200"}
    before = _metric(server, "sparsepipe_requests_total", **labels)
    hist_before = _metric(server, "sparsepipe_request_latency_seconds_count", **labels)
    errors_before = _metric(server, "sparsepipe_errors_total", endpoint="/predict", reason="content_type")
    server.client.post("/predict/from_files", files=[("files", ("a.jpg", good, "image/jpeg"))])
    server.client.post("/predict", content=b"x", headers={"content-type": "text/plain"})
    assert _metric(server, "sparsepipe_requests_total", **labels) == before + 1
    assert _metric(server, "sparsepipe_request_latency_seconds_count", **labels) == hist_before + 1
    assert _metric(server, "sparsepipe_errors_total", endpoint="/predict", reason="content_type") == errors_before + 1
    assert _metric(server, "sparsepipe_images_total") >= 1


def test_health_ready_openapi(server):
    assert server.client.get("/health").json()["status"] == "ok"
    assert server.client.get("/ready").json() == {"status": "ready", "detail": "tiny"}
    spec = server.client.get("/openapi.json").json()
    assert {"/predict", "/predict/from_files", "/health", "/ready", "/metrics"} <= set(spec["paths"])


def test_not_ready_until_loaded_and_load_failure():
    from fastapi.testclient import TestClient

    from sparsepipe.errors import ModelError

    release = threading.Event()

    def slow_loader():
        release.wait(timeout=30)
        raise ModelError("'missing.onnx' does not exist")

    with TestClient(create_app(slow_loader, ServeConfig())) as client:
        assert client.get("/ready").status_code == 503 and client.get("/health").status_code == 200
        answer = client.post("/predict", json={"images": [{"data": base64.b64encode(_jpeg()).decode()}]})
        assert answer.status_code == 503 and "loading" in answer.json()["detail"]
        release.set()
        for _ in range(200):
            if "failed" in client.get("/ready").json()["detail"]:
                break
            time.sleep(0.02)
        assert "missing.onnx" in client.get("/ready").json()["detail"]


def test_schemathesis_finds_no_server_errors(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    seen: dict[str, set[int]] = {}

    def fuzz(operation):
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(base_url=server.url)
            seen.setdefault(f"{operation.method} {operation.path}", set()).add(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        check()

    for result in schema.get_all_operations():
        fuzz(result.ok())
    assert len(seen) == 11 and all(code < 500 for codes in seen.values() for code in codes), seen  # 5 + 6 v2


def test_cli_serve_subprocess(trained, tmp_path):
    """`sparsepipe serve` as users run it: a process on a free port that answers once /ready says so."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sparsepipe", "serve", str(trained.export_dir), "--port", str(port),
                             "--threads", "2", "--queue-size", "4", "--conf", "0.0001"], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        f = _val_files(trained, 1)[0]
        answer = httpx.post(f"{url}/predict/from_files", files=[("files", (f.name, f.read_bytes(), "image/jpeg"))])
        assert answer.status_code == 200 and answer.json()["predictions"][0]["detections"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    bad = subprocess.run([sys.executable, "-m", "sparsepipe", "serve", str(tmp_path / "nope.onnx")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "nope.onnx" in bad.stderr and "Traceback" not in bad.stderr


def test_model_from_registry_and_s3(trained, mlflow_server, s3_env, monkeypatch, tmp_path):
    """The server's model can be `models:/name@alias` (the version's .onnx, not its .pt) or an s3:// object."""
    from fastapi.testclient import TestClient

    from sparsepipe.registry import register_model
    from sparsepipe.storage import upload_file

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    monkeypatch.setenv("SPARSEPIPE_CACHE", str(tmp_path / "cache"))
    name = f"serve-test-{tmp_path.name}"
    register_model([trained.train_dir / "model.pt", trained.export_dir / "model.onnx"], name, alias="champion",
                   experiment="serve-tests")
    s3_uri = upload_file(trained.export_dir / "model.onnx", f"s3://{s3_env.bucket}/serve-test/model.onnx")
    image = _val_files(trained, 1)[0]
    answers = []
    for uri in (f"models:/{name}@champion", s3_uri):
        predictor = Predictor(uri, conf=1e-4)
        assert predictor.path.suffix == ".onnx"
        with TestClient(create_app(lambda predictor=predictor: predictor, ServeConfig())) as client:
            for _ in range(200):
                if client.get("/ready").status_code == 200:
                    break
                time.sleep(0.02)
            answer = client.post("/predict/from_files", files=[("files", (image.name, image.read_bytes(), "image/jpeg"))])
            assert answer.status_code == 200, answer.text
            answers.append(answer.json()["predictions"])
    assert answers[0] == answers[1] and answers[0][0]["detections"]


def _bright_cell_model(path: Path) -> Path:
    """A YOLO-shaped ONNX with a known answer: one class 'bright', one candidate box per 16x16 cell of
    the 64x64 input, scored by the cell's mean brightness (so a white square on black is found exactly)."""
    import onnx
    from onnx import TensorProto, helper

    cells = [(16 * c + 8, 16 * r + 8, 16, 16) for r in range(4) for c in range(4)]  # xywh, input pixels
    boxes = np.array(cells, np.float32).T.reshape(1, 4, 16)
    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["images"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
         helper.make_node("ReduceMean", ["pooled"], ["grey"], axes=[1], keepdims=1),
         helper.make_node("Reshape", ["grey", "shape"], ["scores"]),
         helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1)],
        "bright-cells",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 16])],
        [helper.make_tensor("shape", TensorProto.INT64, [3], [1, 1, 16]),
         helper.make_tensor("boxes", TensorProto.FLOAT, [1, 4, 16], boxes.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"names": "{0: 'bright'}", "imgsz": "[64, 64]", "task": "detect", "stride": "16"}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_known_object_found_in_original_pixels(tmp_path):
    """A generated 128x96 image with a white square at x 64..96, y 16..48: the server returns exactly that
    box (letterboxed to 64x64 with 8 px bars, scored, NMS'd and mapped back), and nothing else."""
    model = _bright_cell_model(tmp_path / "bright.onnx")
    image = np.zeros((96, 128, 3), np.uint8)
    image[16:48, 64:96] = 255
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    srv = Server(create_app(lambda: Predictor(model, conf=0.5), ServeConfig(), model_name="bright"))
    try:
        srv.wait_ready()
        answer = srv.client.post("/predict/from_files", files=[("files", ("square.png", buf.getvalue(), "image/png"))])
    finally:
        srv.stop()
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    assert (prediction["width"], prediction["height"]) == (128, 96)
    assert prediction["detections"] == [{"box": [64.0, 16.0, 96.0, 48.0], "class_id": 0, "label": "bright", "score": 1.0}]


def test_open_inference_protocol_v2(tmp_path):
    """A KServe v2 client's requests: health, metadata, infer with base64 image bytes and with a UINT8 tensor."""
    model = _bright_cell_model(tmp_path / "bright.onnx")
    image = np.zeros((96, 128, 3), np.uint8)
    image[16:48, 64:96] = 255
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    config = ServeConfig(max_images=2)
    srv = Server(create_app(lambda: Predictor(model, conf=0.5), config, model_name=str(model), v2_name="detector"))
    try:
        assert srv.client.get("/v2/health/live").json() == {"live": True}
        srv.wait_ready()
        assert srv.client.get("/v2/health/ready").json() == {"ready": True}
        assert srv.client.get("/v2/models/detector/ready").status_code == 200
        meta = srv.client.get("/v2/models/detector").json()
        assert meta["name"] == "detector" and meta["inputs"][0]["datatype"] == "BYTES"
        assert srv.client.get("/v2/models/other").status_code == 404
        encoded = base64.b64encode(buf.getvalue()).decode()
        request = {"id": "r1", "inputs": [{"name": "images", "datatype": "BYTES", "shape": [2],
                                           "data": [encoded, encoded]}]}
        answer = srv.client.post("/v2/models/detector/infer", json=request)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_name"] == "detector" and body["id"] == "r1"
        detections, labels = body["outputs"]
        assert detections["name"] == "detections" and detections["shape"] == [2, 7]
        rows = np.array(detections["data"]).reshape(2, 7)
        np.testing.assert_allclose(rows, [[0, 64, 16, 96, 48, 1, 0], [1, 64, 16, 96, 48, 1, 0]])
        assert labels == {"name": "labels", "datatype": "BYTES", "shape": [2], "data": ["bright", "bright"]}

        tensor = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [96, 128, 3],
                              "data": image.ravel().tolist()}], "parameters": {"conf": 0.5}}
        answer = srv.client.post("/v2/models/detector/infer", json=tensor)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["outputs"][0]["data"], [0, 64, 16, 96, 48, 1, 0])

        for bad, status in (({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0.0]}]}, 400),
                            ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [3], "data": [encoded] * 3}]}, 413),
                            ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}, 422),
                            ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1],
                                          "data": [base64.b64encode(b"not an image").decode()]}]}, 422)):
            answer = srv.client.post("/v2/models/detector/infer", json=bad)
            assert answer.status_code == status and answer.json()["error"], (bad, answer.text)
        assert srv.client.post("/v2/models/detector/infer", content=b"{}", headers={
            "content-type": "text/plain"}).status_code == 415
    finally:
        srv.stop()
