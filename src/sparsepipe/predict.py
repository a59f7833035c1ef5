"""Run an exported YOLO ONNX model on images: letterbox, engine, NMS, boxes as JSON.

    sparsepipe predict runs/export/model.onnx img1.jpg img2.png --conf 0.25 --out runs/predict --save-images
    python -c "from sparsepipe.predict import Predictor; print(Predictor('runs/export/model.onnx').predict(['img.jpg'])[0].to_dict())"

The ONNX file carries ultralytics' metadata (class names, input size, task); a ``segment`` model
also gives instance masks when ``masks=True``. Engines: ``onnxruntime`` (default), ``openvino``,
and ``deepsparse`` when its venv exists (see :mod:`sparsepipe.deepsparse_predict`). Several
images are batched when the model has a dynamic batch axis, and looped for a static batch.
Boxes are xyxy in the pixels of the original image.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sparsepipe.deepsparse_predict import DeepSparsePredictEngine
from sparsepipe.errors import ConfigError, ModelError
from sparsepipe.image_input import DEFAULT_MAX_PIXELS, load_image
from sparsepipe.letterbox import LetterboxInfo, letterbox, unletterbox_boxes
from sparsepipe.limits import check_threads
from sparsepipe.models import resolve_model_path
from sparsepipe.nms import batched_nms, xywh_to_xyxy
from sparsepipe.onnx_utils import check_yolo_onnx, read_onnx
from sparsepipe.registry import resolve_registry_uri
from sparsepipe.results import atomic_write_bytes, atomic_write_text, produced_file

PREDICT_ENGINES = ("onnxruntime", "openvino", "deepsparse")


@dataclasses.dataclass
class PredictConfig:
    """Settings of ``Predictor``; every field is also a ``sparsepipe predict`` option."""

    engine: str = "onnxruntime"  # onnxruntime, openvino, or deepsparse (needs make deepsparse-env)
    conf: float = 0.25  # minimum class score of a kept box (0..1)
    iou: float = 0.7  # NMS: a box overlapping a better one of its class by more than this is dropped
    max_det: int = 300  # at most this many boxes per image, best first
    threads: int = 1  # intra-op threads of the engine
    batch_size: int = 8  # images per engine call for a dynamic-batch model (static: its batch)
    masks: bool = False  # segmentation models: also return a mask per box (run-length encoded)
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse bigger input images (width*height)

    def __post_init__(self) -> None:
        if self.engine not in PREDICT_ENGINES:
            raise ConfigError(f"engine={self.engine!r} is not known; choose one of {', '.join(PREDICT_ENGINES)}.")
        for name in ("conf", "iou"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}={value!r} must be a number between 0 and 1 (e.g. --{name} 0.5).")
        for name in ("max_det", "threads", "batch_size", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer.")
        check_threads("threads", self.threads)


@dataclasses.dataclass
class Detection:
    """One detected object."""

    box: list[float]  # x1, y1, x2, y2 in original image pixels
    class_id: int
    label: str
    score: float
    mask: dict[str, Any] | None = None  # {"size": [h, w], "counts": [...]}: row-major runs, zeros first

    def to_dict(self) -> dict[str, Any]:
        out = {"box": [round(float(v), 2) for v in self.box], "class_id": self.class_id,
               "label": self.label, "score": round(float(self.score), 5)}
        if self.mask is not None:
            out["mask"] = self.mask
        return out


@dataclasses.dataclass
class Prediction:
    """All detections of one image."""

    source: str
    width: int
    height: int
    detections: list[Detection]

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "width": self.width, "height": self.height,
                "detections": [d.to_dict() for d in self.detections]}


def _literal(value: str | None, default: Any) -> Any:
    if value is None:
        return default
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return default


@dataclasses.dataclass
class ModelInfo:
    """What the predictor needs from the ONNX file: input size, batch, classes and task."""

    path: Path
    input_name: str
    batch: int | None  # None = dynamic
    imgsz: tuple[int, int]  # (height, width)
    names: dict[int, str]
    task: str
    end2end: bool = False  # the head already applied NMS: output rows are x1, y1, x2, y2, score, class

    @classmethod
    def read(cls, path: Path) -> ModelInfo:
        model = read_onnx(path)
        check_yolo_onnx(model, path)  # any other graph would fail later with an IndexError
        meta = {p.key: p.value for p in model.metadata_props}
        initializers = {i.name for i in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in initializers]
        if len(inputs) != 1:
            raise ModelError(f"'{path}' has {len(inputs)} inputs; a YOLO export has one image input.")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != 4:
            raise ModelError(f"'{path}' takes a {len(dims)}-d input; a YOLO export takes NCHW images.")
        meta_size = _literal(meta.get("imgsz"), [640, 640])
        if isinstance(meta_size, int):
            meta_size = [meta_size, meta_size]
        height = dims[2] or int(meta_size[0])
        width = dims[3] or int(meta_size[1])
        names = _literal(meta.get("names"), None)
        if not isinstance(names, dict):
            names = {}
        task = meta.get("task", "detect")
        if task not in ("detect", "segment"):
            raise ModelError(
                f"'{path}' is a '{task}' model; sparsepipe predict handles detect and segment models."
            )
        return cls(path, inputs[0].name, dims[0], (height, width), {int(k): str(v) for k, v in names.items()}, task,
                   meta.get("end2end", "False") == "True")


class _OrtEngine:
    def __init__(self, info: ModelInfo, threads: int) -> None:
        from sparsepipe.benchmark import BenchmarkConfig, OrtRunner  # heavy: openvino (via sparsepipe.benchmark)

        runner = OrtRunner(info.path, BenchmarkConfig(threads=threads, batch=info.batch or 1, imgsz=info.imgsz[0]))
        self.session = runner.session  # session.run is thread-safe

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.session.get_inputs()[0].name: batch})


class _OpenVinoEngine:
    def __init__(self, info: ModelInfo, threads: int) -> None:
        import openvino as ov  # heavy: openvino

        core = ov.Core()
        try:
            model = core.read_model(str(info.path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses
            raise ModelError(f"OpenVINO cannot read '{info.path}': {exc}.") from None
        # f32: on AMX/AVX512-BF16 CPUs OpenVINO would otherwise run float layers in bf16 and move
        # scores by ~1e-2; INT8 (QDQ) models still run their int8 kernels.
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": "f32"})
        self._local = threading.local()  # one infer request per thread

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        request.infer({0: batch})
        return [np.array(request.get_output_tensor(i).data) for i in range(len(self.compiled.outputs))]


def _make_engine(info: ModelInfo, config: PredictConfig) -> Any:
    if config.engine == "onnxruntime":
        return _OrtEngine(info, config.threads)
    if config.engine == "openvino":
        try:
            import openvino  # noqa: F401  # optional: openvino
        except ImportError:
            raise ConfigError("engine='openvino' needs the openvino package; install it or use onnxruntime.") from None
        return _OpenVinoEngine(info, config.threads)

    return DeepSparsePredictEngine(info.path, config.threads, info.batch or 1)


def _onnx_in_folder(folder: Path, model: str) -> Path:
    found = produced_file(folder, ("int8_onnx", "onnx")) if (folder / "result.json").is_file() else None
    if found is None:
        onnx_files = sorted(folder.rglob("*.onnx"))
        found = onnx_files[0] if len(onnx_files) == 1 else None
    if found is None:
        raise ModelError(
            f"'{model}' holds no single ONNX model; give a model.onnx or the --out folder of export/quantize."
        )
    return found


def resolve_onnx(model: str | Path) -> Path:
    """A local .onnx path for a path, an export/quantize out folder, ``s3://`` or ``models:/`` URI.

    A registry version holding both a ``.pt`` and an ``.onnx`` gives its ``.onnx``.
    """
    text = str(model).strip()
    if text.startswith("models:/"):
        path = Path(resolve_registry_uri(text, prefer=".onnx"))
    elif Path(text).is_dir():
        path = Path(text)
    else:
        path = Path(resolve_model_path(text))  # s3:// is downloaded into the cache
    if path.is_dir():
        return _onnx_in_folder(path, text)
    if path.suffix != ".onnx":
        raise ModelError(
            f"'{model}' is '{path.name}', not an ONNX model; predict and serve run ONNX. Run "
            f"`sparsepipe export` and pass its model.onnx (or register the export)."
        )
    return path


class Predictor:
    """Letterbox -> engine -> NMS for an exported YOLO ONNX model; safe to call from several threads."""

    def __init__(self, model: str | Path, engine: str = "onnxruntime", conf: float = 0.25, iou: float = 0.7,
                 config: PredictConfig | None = None, **kwargs: Any) -> None:
        self.config = config or PredictConfig(engine=engine, conf=conf, iou=iou, **kwargs)
        self.path = resolve_onnx(model)
        self.info = ModelInfo.read(self.path)
        self.engine = _make_engine(self.info, self.config)
        self.names = self.info.names

    @property
    def chunk(self) -> int:
        return self.info.batch or self.config.batch_size

    def _preprocess(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, list[LetterboxInfo]]:
        placed, infos = [], []
        for array in arrays:
            image, info = letterbox(array, self.info.imgsz)
            placed.append(image)
            infos.append(info)
        batch = np.stack(placed).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
        if self.info.batch and batch.shape[0] < self.info.batch:  # fill a static batch
            fill = np.zeros((self.info.batch - batch.shape[0], *batch.shape[1:]), np.float32)
            batch = np.concatenate([batch, fill])
        return np.ascontiguousarray(batch), infos

    def _postprocess(self, outputs: list[np.ndarray], index: int, info: LetterboxInfo, conf: float,
                     iou: float) -> list[Detection]:
        if self.info.end2end:  # rows: x1, y1, x2, y2, score, class [, mask coefficients]
            pred = outputs[0][index]
            nc = 2
            scores, class_ids, boxes = pred[:, 4], pred[:, 5].astype(np.int64), pred[:, :4]
            keep = scores > conf
            pred, class_ids, scores, boxes = pred[keep], class_ids[keep], scores[keep], boxes[keep]
            kept = np.argsort(-scores, kind="stable")[:self.config.max_det]
        else:
            pred = outputs[0][index].T  # anchors x (4 + nc [+ nm])
            nc = len(self.names) or (pred.shape[1] - 4 - (outputs[1].shape[1] if len(outputs) > 1 else 0))
            scores_all = pred[:, 4:4 + nc]
            class_ids = scores_all.argmax(axis=1)
            scores = scores_all[np.arange(len(pred)), class_ids]
            keep = scores > conf
            pred, class_ids, scores = pred[keep], class_ids[keep], scores[keep]
            boxes = xywh_to_xyxy(pred[:, :4])
            kept = batched_nms(boxes, scores, class_ids, iou, self.config.max_det)
        final = unletterbox_boxes(boxes[kept], info)
        masks: list[dict[str, Any] | None] = [None] * len(kept)
        if self.config.masks and self.info.task == "segment" and len(outputs) > 1 and len(kept):
            masks = _masks(pred[kept, 4 + nc:], outputs[1][index], boxes[kept], final, info, self.info.imgsz)
        return [Detection(final[i].tolist(), int(class_ids[k]), self.names.get(int(class_ids[k]), str(int(class_ids[k]))),
                          float(scores[k]), masks[i]) for i, k in enumerate(kept)]

    def predict(self, images: Iterable[Any] | Any, conf: float | None = None, iou: float | None = None) -> list[Prediction]:
        """Detections for each image (paths, bytes, PIL images or RGB HxWx3 uint8 arrays)."""
        if isinstance(images, (str, Path, bytes, np.ndarray)) or hasattr(images, "convert"):
            images = [images]
        conf = self.config.conf if conf is None else conf
        iou = self.config.iou if iou is None else iou
        loaded = [load_image(image, self.config.max_pixels) for image in images]
        results: list[Prediction] = []
        for start in range(0, len(loaded), self.chunk):
            part = loaded[start:start + self.chunk]
            batch, infos = self._preprocess([array for array, _ in part])
            outputs = self.engine(batch)
            for i, ((array, name), info) in enumerate(zip(part, infos)):
                detections = self._postprocess(outputs, i, info, conf, iou)
                results.append(Prediction(name, int(array.shape[1]), int(array.shape[0]), detections))
        return results

    def close(self) -> None:
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()


def _rle(mask: np.ndarray) -> dict[str, Any]:
    flat = mask.reshape(-1).astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _masks(coefs: np.ndarray, protos: np.ndarray, input_boxes: np.ndarray, boxes: np.ndarray,
           info: LetterboxInfo, imgsz: tuple[int, int]) -> list[dict[str, Any]]:
    """Instance masks of a segment head: coefficients x prototypes, upsampled, cut to the box."""
    import cv2  # heavy: cv2

    nm, mh, mw = protos.shape
    logits = (coefs @ protos.reshape(nm, -1)).reshape(-1, mh, mw)
    out = []
    for logit, box in zip(logits, boxes):
        full = cv2.resize(logit, (imgsz[1], imgsz[0]), interpolation=cv2.INTER_LINEAR)
        top, left = info.pad_top, info.pad_left
        inner = full[top:imgsz[0] - top if top else imgsz[0], left:imgsz[1] - left if left else imgsz[1]]
        orig = cv2.resize(inner, (info.width, info.height), interpolation=cv2.INTER_LINEAR) > 0.0  # sigmoid > .5
        x1, y1, x2, y2 = (round(v) for v in box)
        cut = np.zeros_like(orig)
        cut[y1:y2, x1:x2] = orig[y1:y2, x1:x2]
        out.append(_rle(cut))
    return out


def draw(array: np.ndarray, prediction: Prediction) -> np.ndarray:
    """A copy of the RGB image with boxes and 'label score' drawn (OpenCV's built-in font, no download)."""
    import cv2  # heavy: cv2

    canvas = np.ascontiguousarray(array.copy())
    for det in prediction.detections:
        colour = tuple(int(c) for c in np.random.default_rng(det.class_id).integers(64, 256, 3))
        x1, y1, x2, y2 = (round(v) for v in det.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        cv2.putText(canvas, f"{det.label} {det.score:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, colour, 1, cv2.LINE_AA)
    return canvas


def predict_files(model: str, images: Sequence[str], out: str | Path, config: PredictConfig,
                  save_images: bool = False) -> Path:
    """``sparsepipe predict``: predictions.json (and annotated images) in ``out``, written atomically."""
    if not images:
        raise ConfigError("No images given; pass one or more image files (e.g. sparsepipe predict model.onnx a.jpg).")
    predictor = Predictor(model, config=config)
    try:
        predictions = predictor.predict(list(images))
    finally:
        predictor.close()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if save_images:
        import cv2  # heavy: cv2

        for i, (source, prediction) in enumerate(zip(images, predictions)):
            array, _ = load_image(source, config.max_pixels)
            ok, encoded = cv2.imencode(".jpg", draw(array, prediction)[:, :, ::-1])
            if ok:
                atomic_write_bytes(out / f"{i:04d}_{Path(str(source)).stem}.jpg", encoded.tobytes())
    payload = {"model": str(predictor.path), "engine": config.engine, "conf": config.conf, "iou": config.iou,
               "task": predictor.info.task, "predictions": [p.to_dict() for p in predictions]}
    return atomic_write_text(out / "predictions.json", json.dumps(payload, indent=1) + "\n")
