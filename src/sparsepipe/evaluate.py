"""Measure accuracy (mAP50, mAP50-95, per class) of a .pt or .onnx model on the val split.

    sparsepipe evaluate --model runs/export --data synthetic --out runs/evaluate

ONNX files are evaluated through the exported file itself (ultralytics runs them with
onnxruntime), so the number describes what will be deployed, not the torch model it came from.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sparsepipe.errors import ConfigError
from sparsepipe.results import StepResult, atomic_write_text, begin_step, inherited_variant, produced_file


@dataclasses.dataclass
class EvaluateConfig:
    """Settings of the evaluate step."""

    imgsz: int | None = None  # pixels; None = the size the ONNX was exported at, or 320 for .pt
    batch: int = 16  # images per batch for .pt / dynamic ONNX (static ONNX uses its own batch)
    split: str = "val"  # dataset split to evaluate on: val or test
    conf: float = 0.001  # confidence threshold for mAP (ultralytics' validation default)
    iou: float = 0.7  # NMS IoU threshold
    device: str = "cpu"  # "cpu" or a CUDA index
    plots: bool = False  # write PR curves and confusion matrices into --out
    variant: str = ""  # variant name; default: the producing step's variant

    def __post_init__(self) -> None:
        if self.imgsz is not None and (self.imgsz < 32 or self.imgsz % 32):
            raise ConfigError(f"imgsz={self.imgsz!r} must be a multiple of 32.")
        if self.split not in ("val", "test"):
            raise ConfigError(f"split={self.split!r} must be 'val' or 'test'.")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"batch={self.batch!r} must be a positive integer (e.g. --batch 16).")
        if not 0 <= self.conf < 1 or not 0 < self.iou <= 1:
            raise ConfigError(f"conf={self.conf} must be in [0, 1) and iou={self.iou} in (0, 1].")


def per_class_table(metrics: Any) -> list[dict[str, Any]]:
    """One row per class that has labels: name, precision, recall, map50, map50_95."""
    rows = []
    box = metrics.box
    for i, cls in enumerate(box.ap_class_index):
        p, r, ap50, ap = box.class_result(i)
        rows.append(
            {
                "class_id": int(cls),
                "name": metrics.names[int(cls)],
                "precision": round(float(p), 5),
                "recall": round(float(r), 5),
                "map50": round(float(ap50), 5),
                "map50_95": round(float(ap), 5),
            }
        )
    return rows


def evaluate(model: str, data: str, out: str | Path, config: EvaluateConfig | None = None, tracker: Any = None) -> StepResult:
    """Validate ``model`` on ``data`` and write metrics + per-class table to ``--out``."""
    from sparsepipe.data import resolve_data
    from sparsepipe.models import load_yolo, resolve_model_path
    from sparsepipe.tracking import Tracker

    config = config or EvaluateConfig()
    tracker = tracker or Tracker()
    out = begin_step(out)

    variant = inherited_variant(model, config.variant)
    # Of a step folder, evaluate the deployable file: INT8 ONNX, else ONNX, else the checkpoint.
    path = produced_file(model, ("int8_onnx", "onnx", "weights")) or Path(resolve_model_path(model))
    data_yaml = resolve_data(data)
    imgsz = config.imgsz
    if imgsz is None:
        imgsz = 320
        if path.suffix == ".onnx":
            from sparsepipe.export import onnx_metadata

            meta_size = onnx_metadata(path).get("imgsz", "")
            digits = [int(t) for t in meta_size.strip("[]() ").replace(",", " ").split() if t.isdigit()]
            imgsz = digits[0] if digits else imgsz
    yolo = load_yolo(str(path))
    metrics = yolo.val(
        data=str(data_yaml),
        imgsz=imgsz,
        batch=config.batch,
        split=config.split,
        conf=config.conf,
        iou=config.iou,
        device=config.device,
        plots=config.plots,
        project=str(out),
        name="ultralytics",
        exist_ok=True,
        verbose=True,
    )
    values = {"map50": float(metrics.box.map50), "map50_95": float(metrics.box.map)}
    if hasattr(metrics, "seg"):
        values.update({"mask_map50": float(metrics.seg.map50), "mask_map50_95": float(metrics.seg.map)})
    speed = getattr(metrics, "speed", {}) or {}
    if "inference" in speed:
        values["val_inference_ms"] = round(float(speed["inference"]), 3)
    classes = per_class_table(metrics)
    table = atomic_write_text(out / "per_class.json", json.dumps(classes, indent=2) + "\n")
    result = StepResult(
        step="evaluate",
        out_dir=str(out),
        variant=variant or "baseline",
        files={"per_class": str(table), "model": str(path)},
        metrics=values,
        config={"model": str(model), "data": data, **dataclasses.asdict(config), "imgsz": imgsz},
        extra={"per_class": classes, "format": path.suffix.lstrip(".")},
    )
    tracker.log_metrics(values)
    tracker.log_artifact(str(table), "evaluate")
    result.write()
    return result
