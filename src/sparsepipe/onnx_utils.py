"""Read and inspect ONNX files: load with a clear error, check the YOLO layout, metadata, weights.

    python -c "from sparsepipe.onnx_utils import onnx_metadata; print(onnx_metadata('runs/export/model.onnx'))"

Shared by export, quantize, evaluate, predict, the DeepSparse engine and model loading, so none
of them imports another step for it. ``onnx`` itself is imported on first use (heavy).
"""

from __future__ import annotations

import ast
import math
from pathlib import Path
from typing import Any

from sparsepipe.errors import ModelError


def read_onnx(path: str | Path) -> Any:
    """Load an ONNX file (without external data), or raise a ModelError that names it."""
    import onnx  # heavy: onnx (protobuf)

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError, OSError and friends
        raise ModelError(
            f"Cannot read '{path}' as ONNX ({type(exc).__name__}: {exc}). Pass a model.onnx written by "
            f"`sparsepipe export` or `sparsepipe quantize`."
        ) from None


YOLO_ONNX_LAYOUT = (
    "one NCHW image input with 3 channels and output0 shaped [batch, 4 + classes, anchors] (segment models "
    "add [batch, 32, h, w] mask prototypes; end-to-end exports give [batch, detections, 6])"
)


def _static_dims(value_info: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") else None for d in value_info.type.tensor_type.shape.dim]


def _not_yolo_reason(model: Any) -> str | None:
    """Why an ONNX graph cannot be a YOLO detect/segment export, or None when its shapes fit."""
    meta = {p.key: p.value for p in model.metadata_props}
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        return f"it has {len(inputs)} inputs"
    dims = _static_dims(inputs[0])
    if len(dims) != 4 or dims[1] not in (3, None):
        return f"its input is shaped {dims}, not [batch, 3, height, width]"
    outputs = [_static_dims(o) for o in model.graph.output]
    if not outputs or len(outputs[0]) != 3:
        return f"its first output is shaped {outputs[0] if outputs else 'nothing'}, not [batch, rows, anchors]"
    if meta.get("end2end") == "True":
        return None if outputs[0][2] in (None,) or outputs[0][2] >= 6 else f"its end-to-end output is {outputs[0]}"
    rows = outputs[0][1]
    if rows is not None and rows < 5:
        return f"output0 has {rows} rows per anchor; a detector has 4 box coordinates plus at least one class score"
    if meta.get("task") == "segment" and (len(outputs) < 2 or len(outputs[1]) != 4):
        return "it is marked task=segment but has no [batch, 32, h, w] mask prototype output"
    try:
        names = ast.literal_eval(meta.get("names", "None"))
    except (ValueError, SyntaxError):
        names = None
    masks = outputs[1][1] if meta.get("task") == "segment" else 0
    if isinstance(names, dict) and rows is not None and masks is not None and rows != 4 + len(names) + masks:
        return f"output0 has {rows} rows per anchor but its metadata names {len(names)} classes (expected {4 + len(names) + masks})"
    return None


def check_yolo_onnx(model: Any, path: str | Path) -> None:
    """Raise a ModelError naming ``path`` unless the ONNX graph is shaped like a YOLO detect/segment export."""
    reason = _not_yolo_reason(model)
    if reason:
        raise ModelError(
            f"'{path}' is a valid ONNX model but not a YOLO export: {reason}. sparsepipe expects {YOLO_ONNX_LAYOUT}; "
            f"pass the model.onnx written by `sparsepipe export` or `sparsepipe quantize`."
        )


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file (ultralytics writes names, stride, imgsz, task...)."""
    model = read_onnx(path)
    return {p.key: p.value for p in model.metadata_props}


def onnx_param_count(path: str | Path) -> int:
    """Number of weight elements stored in an ONNX file's initializers."""
    model = read_onnx(path)
    return int(sum(math.prod(init.dims) for init in model.graph.initializer))
