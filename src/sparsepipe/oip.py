"""Open Inference Protocol (KServe v2) request and response bodies for ``sparsepipe serve``.

    curl -s localhost:8080/v2/models/yolo/infer -H 'Content-Type: application/json' \
      -d '{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "data": ["<base64 JPEG>"]}]}'

Routes (added by :mod:`sparsepipe.serve`): ``GET /v2`` (server metadata), ``GET /v2/health/live``,
``GET /v2/health/ready``, ``GET /v2/models/{name}`` (model metadata), ``GET
/v2/models/{name}/ready`` and ``POST /v2/models/{name}/infer``.

Input: exactly one tensor, either ``BYTES`` of shape ``[N]`` whose elements are base64-encoded
image files (JPEG, PNG, ...), or ``UINT8`` of shape ``[N, H, W, 3]`` (or ``[H, W, 3]``) holding RGB
pixels, ``data`` flat (row-major) or nested. Request ``parameters`` may hold ``conf`` and ``iou``.
Output: ``detections`` (``FP32``, ``[K, 7]``: image index, x1, y1, x2, y2, score, class id, in the
input image's pixels) and ``labels`` (``BYTES``, ``[K]``: the class names), K = all boxes of the batch.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

__all__ = ["DETECTION_COLUMNS", "OipError", "decode_request", "encode_response", "model_metadata"]

DETECTION_COLUMNS = ("image", "x1", "y1", "x2", "y2", "score", "class_id")
PLATFORM = "sparsepipe_yolo"


class OipError(ValueError):
    """A v2 request that cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def model_metadata(name: str, version: str) -> dict[str, Any]:
    """``GET /v2/models/{name}``: the tensors the infer route takes and returns."""
    return {"name": name, "versions": [version], "platform": PLATFORM,
            "inputs": [{"name": "images", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "detections", "datatype": "FP32", "shape": [-1, len(DETECTION_COLUMNS)]},
                        {"name": "labels", "datatype": "BYTES", "shape": [-1]}]}


def _number(params: dict[str, Any], key: str) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise OipError(f"parameters.{key} must be a number between 0 and 1, got {value!r}.")
    return float(value)


def decode_request(body: Any, max_images: int) -> tuple[list[tuple[str, bytes | np.ndarray]], float | None,
                                                     float | None, str]:
    """``(images, conf, iou, request id)`` of an infer request; images are ``(name, encoded bytes or RGB array)``."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or len(body["inputs"]) != 1:
        raise OipError('The body must be {"inputs": [ONE tensor]}: BYTES [N] of base64 images or UINT8 [N, H, W, 3].')
    tensor = body["inputs"][0]
    if not isinstance(tensor, dict):
        raise OipError("inputs[0] must be an object with name, datatype, shape and data.")
    datatype, shape, data = tensor.get("datatype"), tensor.get("shape"), tensor.get("data")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise OipError(f"inputs[0].shape must be a list of non-negative integers, got {shape!r}.")
    if not isinstance(data, list):
        raise OipError("inputs[0].data must be a list.")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise OipError("parameters must be an object.")
    conf, iou = _number(params, "conf"), _number(params, "iou")
    request_id = str(body.get("id", "") or "")
    name = str(tensor.get("name") or "images")
    if datatype == "BYTES":
        if len(shape) != 1 or shape[0] != len(data) or not all(isinstance(d, str) for d in data):
            raise OipError("A BYTES input has shape [N] and N base64 strings in data (one encoded image each).")
        count = len(data)
    elif datatype == "UINT8":
        if len(shape) == 3:
            shape = [1, *shape]
        if len(shape) != 4 or shape[3] != 3:
            raise OipError(f"A UINT8 input has shape [N, H, W, 3] (RGB) or [H, W, 3], got {tensor.get('shape')}.")
        count = shape[0]
    else:
        raise OipError(f"inputs[0].datatype {datatype!r} is not supported: use BYTES (base64 images) or UINT8 (RGB).")
    if count == 0:
        raise OipError("The request holds no image.", 422)
    if count > max_images:
        raise OipError(f"{count} images in one request; the limit is {max_images}.", 413)
    if datatype == "BYTES":
        images: list[tuple[str, bytes | np.ndarray]] = []
        for i, text in enumerate(data):
            try:
                images.append((f"{name}[{i}]", base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                raise OipError(f"inputs[0].data[{i}] is not valid base64; encode the image file bytes.", 422) from None
        return images, conf, iou, request_id
    try:
        pixels = np.asarray(data, dtype=np.int64).reshape(shape)
    except (ValueError, TypeError):
        raise OipError(f"inputs[0].data does not hold {int(np.prod(shape))} integers for shape {shape}.", 422) from None
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise OipError("UINT8 data must lie in 0..255.", 422)
    arrays = pixels.astype(np.uint8)
    return [(f"{name}[{i}]", arrays[i]) for i in range(count)], conf, iou, request_id


def encode_response(predictions: list[dict[str, Any]], model: str, version: str, request_id: str) -> dict[str, Any]:
    """The infer response: ``detections`` ``[K, 7]`` and ``labels`` ``[K]`` over all images of the batch."""
    rows, labels = [], []
    for index, prediction in enumerate(predictions):
        for det in prediction.get("detections", []):
            rows.append([float(index), *(float(v) for v in det["box"]), float(det["score"]), float(det["class_id"])])
            labels.append(str(det["label"]))
    flat = [v for row in rows for v in row]
    out = {"model_name": model, "model_version": version,
           "outputs": [{"name": "detections", "datatype": "FP32", "shape": [len(rows), len(DETECTION_COLUMNS)],
                        "data": flat},
                       {"name": "labels", "datatype": "BYTES", "shape": [len(labels)], "data": labels}]}
    if request_id:
        out["id"] = request_id
    return out
