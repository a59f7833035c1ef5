"""Export a checkpoint to ONNX that ultralytics can still validate and predict with.

    sparsepipe export --model runs/train --imgsz 320 --out runs/export

Uses ultralytics' exporter (TorchScript-based ONNX, onnxslim simplification) so the file
carries ultralytics' metadata (class names, stride, imgsz, task, batch) and works with
``YOLO("model.onnx").val(...)``. The export happens in a staging folder inside ``--out``
and ``model.onnx`` appears only when complete.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sparsepipe.errors import ConfigError, ModelError
from sparsepipe.limits import check_input_size
from sparsepipe.results import StepResult, check_out, claim_out, inherited_variant
from sparsepipe.sizes import file_sizes


@dataclasses.dataclass
class ExportConfig:
    """Settings of the export step."""

    imgsz: int = 320  # square input size in pixels baked into a static graph (multiple of 32)
    batch: int = 1  # static batch size; ignored when dynamic=True
    dynamic: bool = False  # dynamic batch and image size axes (slower on some engines)
    opset: int = 17  # ONNX opset; 13..21. <= 17 keeps DeepSparse and older runtimes happy
    simplify: bool = True  # run onnxslim on the graph
    variant: str = ""  # variant name in MLflow/report; default: the producing step's variant

    def __post_init__(self) -> None:
        if not isinstance(self.imgsz, int) or self.imgsz < 32 or self.imgsz % 32:
            raise ConfigError(f"imgsz={self.imgsz!r} must be a multiple of 32 (e.g. 320 or 640).")
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"batch={self.batch!r} must be a positive integer.")
        check_input_size(self.batch, self.imgsz, "export")
        if not isinstance(self.opset, int) or not 13 <= self.opset <= 21:
            raise ConfigError(f"opset={self.opset!r} must be between 13 and 21 (17 is a safe default).")


def read_onnx(path: str | Path) -> Any:
    """Load an ONNX file (without external data), or raise a ModelError that names it."""
    import onnx

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
    import ast

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
    import math

    model = read_onnx(path)
    return int(sum(math.prod(init.dims) for init in model.graph.initializer))


def export_onnx(model: str, out: str | Path, config: ExportConfig | None = None, tracker: Any = None) -> StepResult:
    """Export ``model`` (checkpoint path or a train/sparsify out folder) to ``<out>/model.onnx``."""
    from sparsepipe.models import load_yolo, resolve_model_path
    from sparsepipe.tracking import Tracker

    config = config or ExportConfig()
    tracker = tracker or Tracker()
    out = check_out(out)  # nothing in --out changes before the checks pass (claim_out)

    variant = inherited_variant(model, config.variant)
    source = Path(resolve_model_path(model))
    if source.suffix != ".pt":
        raise ModelError(
            f"Export needs a PyTorch checkpoint (.pt), got '{model}'. Point --model at a .pt file or "
            f"at the out folder of a train or sparsify step."
        )
    if _is_qat_checkpoint(source):
        # A QAT checkpoint exports as INT8 QDQ (fake-quant modules converted first).
        from sparsepipe.qat import export_int8_onnx

        target = export_int8_onnx(source, claim_out(out) / "model.onnx", config.imgsz, config.opset)
        return _publish(target, model, variant, config, tracker, out)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        staged = staging / "model.pt"
        shutil.copyfile(source, staged)
        yolo = load_yolo(str(staged))
        exported = yolo.export(
            format="onnx",
            imgsz=config.imgsz,
            batch=config.batch,
            dynamic=config.dynamic,
            opset=config.opset,
            simplify=config.simplify,
            device="cpu",
        )
        if not exported or not Path(exported).is_file():
            raise ModelError(f"ultralytics did not produce an ONNX file for '{model}'.")
        target = claim_out(out) / "model.onnx"
        Path(exported).replace(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    return _publish(target, model, variant, config, tracker, out)


def _is_qat_checkpoint(path: Path) -> bool:
    """Whether a .pt holds a model prepared for QAT (recorded in its recipe state)."""
    from sparsepipe.recipe_session import checkpoint_state

    state = checkpoint_state(path) or {}
    return bool(state.get("qat_prepared"))


def _publish(target: Path, model: str, variant: str, config: ExportConfig, tracker: Any, out: Path) -> StepResult:
    metrics = {**file_sizes(target), "params": float(onnx_param_count(target))}
    result = StepResult(
        step="export",
        out_dir=str(out),
        variant=variant or "baseline",
        files={"onnx": str(target)},
        metrics=metrics,
        config={"model": str(model), **dataclasses.asdict(config)},
        extra={"metadata": onnx_metadata(target)},
    )
    tracker.log_params({f"export.{k}": v for k, v in dataclasses.asdict(config).items() if k != "variant"})
    tracker.log_metrics(metrics)
    tracker.log_artifact(str(target), "onnx")
    result.write()
    return result
