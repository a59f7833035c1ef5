"""Measure accuracy (mAP50, mAP50-95 with its 95 % interval, per class) of a .pt or .onnx model.

    sparsepipe evaluate --model runs/export --data synthetic --out runs/evaluate
    sparsepipe evaluate --model runs/pruned-export --data synthetic --baseline runs/evaluate --out runs/pruned-eval

ONNX files are evaluated through the exported file itself (ultralytics runs them with
onnxruntime), so the number describes what will be deployed, not the torch model it came from.
``map50``/``map50_95`` are ultralytics' own figures. The step also predicts every validation
image once more, matches the boxes to the labels and keeps them in ``per_image.npz``: from those
it adds a bootstrap 95 % interval (``map50_95_ci_low``/``_high``, :mod:`sparsepipe.bootstrap`),
and with ``--baseline`` (the evaluate folder of the reference model, same data) the paired ratio
``map50_95_ratio`` with its interval. The recomputation scores predict()'s boxes (letterboxed
like deployment) while ultralytics' val batches images by aspect ratio, so the two mAPs differ
slightly (0.01-0.02 on the demo model); the interval is the recomputation's, shifted onto
ultralytics' figure, and ``extra["bootstrap"]`` keeps the unshifted values.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from sparsepipe.bootstrap import DetectionRecords, UndefinedRatio, build_records, map_interval, paired_ratio_interval
from sparsepipe.errors import ConfigError, DataError, SparsepipeError
from sparsepipe.models import load_yolo, resolve_model_path
from sparsepipe.onnx_utils import onnx_metadata
from sparsepipe.results import (
    StepResult, atomic_write_text, check_out, claim_out, inherited_variant, produced_file, read_result)
from sparsepipe.tracking import Tracker


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
    bootstrap: int = 1000  # resamples of the val images for the 95 % intervals; 0 = no intervals
    bootstrap_seed: int = 0  # RNG seed of the resampling (same seed -> same interval)

    def __post_init__(self) -> None:
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or \
                not (self.bootstrap == 0 or 10 <= self.bootstrap <= 100_000):  # fmt: skip
            raise ConfigError(
                f"bootstrap={self.bootstrap!r}: use 0 (no interval) or a number of resamples in "
                f"[10, 100000], e.g. --bootstrap 1000."
            )
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


def _labels(image: Path, width: int, height: int) -> tuple[Any, Any]:
    """Ground-truth (xyxy pixel boxes, classes) of an image, from its YOLO label file."""
    from sparsepipe.data import label_path  # heavy: cv2 (via sparsepipe.data)

    label = label_path(image)
    rows = [line.split() for line in label.read_text().splitlines() if line.strip()] if label.is_file() else []
    if not rows:
        return np.zeros((0, 4)), np.zeros(0, int)
    cls = np.array([int(float(r[0])) for r in rows])
    boxes = []
    for r in rows:
        values = np.array([float(v) for v in r[1:]])
        if len(values) == 4:  # detection: cx cy w h
            cx, cy, w, h = values
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        else:  # segmentation polygon: its bounding box, as ultralytics derives it
            xs, ys = values[0::2], values[1::2]
            boxes.append([xs.min(), ys.min(), xs.max(), ys.max()])
    return np.array(boxes) * np.array([width, height, width, height]), cls


def detection_records(yolo: Any, data_yaml: str | Path, config: "EvaluateConfig", imgsz: int) -> Any:
    """Predict every image of the split once and match the boxes to its labels."""
    from sparsepipe.synthetic import progress_bar  # heavy: cv2 (via sparsepipe.synthetic)

    from sparsepipe.data import class_names, split_images  # heavy: cv2 (via sparsepipe.data)

    images, names = split_images(data_yaml, config.split), class_names(data_yaml)
    bar = progress_bar(total=len(images), desc="per-image matching", unit="img")

    def rows():
        for start in range(0, len(images), 32):
            chunk = images[start:start + 32]
            results = yolo.predict(source=[str(p) for p in chunk], imgsz=imgsz, conf=config.conf, iou=config.iou,
                                   device=config.device, max_det=300, verbose=False, stream=True)  # fmt: skip
            for image, r in zip(chunk, results):
                height, width = r.orig_shape
                gt_boxes, gt_cls = _labels(image, width, height)
                boxes = r.boxes
                bar.update(1)
                yield (image.name, boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(),
                       boxes.cls.cpu().numpy().astype(int), gt_boxes, gt_cls)  # fmt: skip

    try:
        return build_records(rows(), max(len(names), 1))
    finally:
        bar.close()


def evaluate(model: str, data: str, out: str | Path, config: EvaluateConfig | None = None, tracker: Any = None,
             baseline: str | Path | None = None) -> StepResult:
    """Validate ``model`` on ``data`` and write metrics + per-class table to ``--out``.

    ``baseline``: the evaluate out folder of the reference model on the same data; adds the
    paired ratio of mAP50-95 (variant / baseline) with its bootstrap interval.
    """
    from sparsepipe.data import resolve_data  # heavy: cv2 (via sparsepipe.data)

    config = config or EvaluateConfig()
    tracker = tracker or Tracker()
    out = check_out(out)  # nothing in --out changes until the model and data have been checked
    if baseline:
        baseline_records_path(baseline)

    variant = inherited_variant(model, config.variant)
    # Of a step folder, evaluate the deployable file: INT8 ONNX, else ONNX, else the checkpoint.
    path = produced_file(model, ("int8_onnx", "onnx", "weights")) or Path(resolve_model_path(model))
    data_yaml = resolve_data(data)
    imgsz = config.imgsz
    if imgsz is None:
        imgsz = 320
        if path.suffix == ".onnx":
            meta_size = onnx_metadata(path).get("imgsz", "")
            digits = [int(t) for t in meta_size.strip("[]() ").replace(",", " ").split() if t.isdigit()]
            imgsz = digits[0] if digits else imgsz
    yolo = load_yolo(str(path))
    check_class_count(yolo, path, data_yaml)
    out = claim_out(out)
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
    files = {"per_class": str(table), "model": str(path)}
    extra: dict[str, Any] = {"per_class": classes, "format": path.suffix.lstrip(".")}
    if config.bootstrap:
        values.update(error_bars(yolo, data_yaml, config, imgsz, out, files, extra, baseline, values["map50_95"]))
    result = StepResult(
        step="evaluate",
        out_dir=str(out),
        variant=variant or "baseline",
        files=files,
        metrics=values,
        config={"model": str(model), "data": data, **dataclasses.asdict(config), "imgsz": imgsz,
                "baseline": str(baseline) if baseline else None},
        extra=extra,
    )
    tracker.log_metrics(values)
    tracker.log_artifact(str(table), "evaluate")
    result.write()
    return result


def check_class_count(yolo: Any, path: Path, data_yaml: str | Path) -> None:
    """Refuse a model whose class count differs from the dataset's (ultralytics would score it silently)."""
    from sparsepipe.data import class_names  # heavy: cv2 (via sparsepipe.data)

    model_names = getattr(yolo, "names", None) or {}
    names = class_names(data_yaml)
    if model_names and names and len(model_names) != len(names):
        raise DataError(
            f"{path} predicts {len(model_names)} classes ({', '.join(list(map(str, dict(model_names).values()))[:4])}...) "
            f"but {data_yaml} has {len(names)}: evaluate the model on the dataset it was trained for, or fine-tune "
            f"it on this one first (sparsepipe train --model {path.name} --data ...)."
        )


def baseline_records_path(baseline: str | Path) -> Path:
    """The ``per_image.npz`` of an evaluate out folder (or the file itself), with a clear error."""
    location = Path(baseline)
    if location.is_file() and location.suffix == ".npz":
        return location
    found = produced_file(location, ("per_image",))
    if found is None or not found.is_file():
        step = read_result(location).step if (location / "result.json").is_file() else "no step"
        raise SparsepipeError(
            f"--baseline {baseline} holds no per_image.npz ({step}): point it at the --out folder "
            f"of `sparsepipe evaluate` run on the baseline model with the same --data (and without "
            f"--bootstrap 0)."
        )
    return found


def error_bars(yolo: Any, data_yaml: Any, config: EvaluateConfig, imgsz: int, out: Path, files: dict[str, str],
               extra: dict[str, Any], baseline: str | Path | None, map50_95: float) -> dict[str, float]:
    """Per-image records -> ``map50_95_ci_*`` around ``map50_95`` (ultralytics' figure), and the
    paired ratio against ``baseline`` (both models' recomputed mAP on the same resampled images)."""
    records = detection_records(yolo, data_yaml, config, imgsz)
    files["per_image"] = str(records.save(out / "per_image.npz"))
    interval = map_interval(records, config.bootstrap, config.bootstrap_seed)
    # The interval's offsets from the recomputed mAP, placed around ultralytics' own figure (the
    # two differ only by how val and predict pre-process images; extra["bootstrap"] keeps both).
    below, above = interval.value - interval.low, interval.high - interval.value
    values = {"map50_95_ci_low": round(max(0.0, map50_95 - below), 5),
              "map50_95_ci_high": round(min(1.0, map50_95 + above), 5)}
    extra["bootstrap"] = {"resamples": config.bootstrap, "seed": config.bootstrap_seed, "level": interval.level,
                          "images": len(records.names), "map50_95_recomputed": round(interval.value, 5),
                          "ci_recomputed": [round(interval.low, 5), round(interval.high, 5)]}
    if baseline:
        try:
            ratio = paired_ratio_interval(records, DetectionRecords.load(baseline_records_path(baseline)),
                                          config.bootstrap, config.bootstrap_seed)  # fmt: skip
        except UndefinedRatio as exc:
            extra["bootstrap"]["ratio_note"] = str(exc)
        else:
            values.update(ratio.as_metrics("map50_95_ratio"))
    return values
