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
from sparsepipe.models import load_yolo, resolve_model_path
from sparsepipe.onnx_utils import (  # noqa: F401 - check_yolo_onnx, read_onnx and YOLO_ONNX_LAYOUT re-exported
    YOLO_ONNX_LAYOUT, check_yolo_onnx, onnx_metadata, onnx_param_count, read_onnx)
from sparsepipe.results import StepResult, check_out, claim_out, inherited_variant
from sparsepipe.sizes import file_sizes
from sparsepipe.tracking import Tracker


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


def export_onnx(model: str, out: str | Path, config: ExportConfig | None = None, tracker: Any = None) -> StepResult:
    """Export ``model`` (checkpoint path or a train/sparsify out folder) to ``<out>/model.onnx``."""
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
        from sparsepipe.qat_export import export_int8_onnx  # heavy: onnx, pydantic, torch (via sparsepipe.qat_export)

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
    from sparsepipe.recipe_session import checkpoint_state  # heavy: pydantic (via sparsepipe.recipe_session)

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
