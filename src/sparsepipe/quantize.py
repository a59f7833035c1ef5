"""The quantize step, PTQ: a calibrated static INT8 ONNX that runs integer kernels.

    sparsepipe quantize --method ptq --model runs/train --data runs/data --imgsz 320 --out runs/ptq

The model is a ``.pt`` checkpoint (or a train/sparsify out folder; it is exported to FP32 ONNX
first, opset 17, static batch 1, into ``<out>/fp32``) or an FP32 ``.onnx`` (or an export out
folder). How the INT8 file is made (calibration images, the head kept in float, onnxruntime's
QDQ pass) is :mod:`sparsepipe.ptq`, whose names are re-exported here. Its mAP is measured
through the file itself (:func:`sparsepipe.evaluate.evaluate`).

QAT (``--method qat``) is :func:`sparsepipe.qat.qat`; this module is PTQ only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sparsepipe.errors import ConfigError, ModelError, SparsepipeError
from sparsepipe.evaluate import EvaluateConfig, evaluate
from sparsepipe.export import ExportConfig, export_onnx
from sparsepipe.models import load_yolo, resolve_model_path
from sparsepipe.onnx_utils import onnx_param_count, read_onnx
from sparsepipe.ptq import (  # noqa: F401 - the PTQ names callers of this module used are re-exported
    ACTIVATION_TYPES, CALIBRATION_METHODS, DEFAULT_IMGSZ, FLOAT_CONV_OPS, INT8_CONV_OPS, LAYOUT_OPS, METHODS,
    QUANTIZABLE_OPS, QUANTIZED_OPS, WEIGHT_TYPES, QuantizeConfig, conv_kernel_counts, downstream_nodes,
    dq_fed_float_convs, head_float_nodes, optimized_graph, preprocess, quantize_onnx, quantized_nodes,
    sample_images, strip_extra_opsets, train_images, _input_shape)
from sparsepipe.results import StepResult, check_out, claim_out, inherited_variant
from sparsepipe.sizes import file_sizes
from sparsepipe.tracking import Tracker


# --------------------------------------------------------------------------- the step


def refuse_quantized_checkpoint(path: Path) -> None:
    """Raise if the checkpoint holds quantization modules (fake-quant, observers, quantized layers)."""
    yolo = load_yolo(str(path))
    found = sorted(
        {f"{name} ({type(m).__module__}.{type(m).__name__})" for name, m in yolo.model.named_modules()
         if ".quantiz" in type(m).__module__ or "FakeQuant" in type(m).__name__ or "Observer" in type(m).__name__}
    )
    if found:
        raise ModelError(
            f"'{path}' is already quantized: it holds quantization modules ({', '.join(found[:3])}"
            f"{', ...' if len(found) > 3 else ''}). PTQ quantizes a float model; give the FP32 checkpoint it "
            f"came from, or export this one (its QDQ ONNX is already INT8)."
        )


def _refuse_quantized_onnx(model: Any, path: Path) -> None:
    ops = quantized_nodes(model)
    if ops:
        raise ModelError(
            f"'{path}' is already quantized ({len(ops)} quantization nodes, e.g. {ops[0]}). Quantizing it "
            f"again would stack a second rounding on the first; give the FP32 ONNX (or the checkpoint) it "
            f"was made from."
        )


def _model_source(model: str) -> Path:
    """The local file ``model`` names (a missing one is a ModelError naming it)."""
    return Path(resolve_model_path(model))


def _checked_fp32(fp32: Path) -> Any:
    """The ONNX graph of ``fp32``, refused if unreadable (random bytes) or already quantized."""
    fp32_model = read_onnx(fp32)  # a ModelError naming the file, not a protobuf traceback
    _refuse_quantized_onnx(fp32_model, fp32)
    return fp32_model


def _calibration_size(fp32_model: Any, fp32: Path, config: QuantizeConfig) -> int:
    """Image size to calibrate at: the ONNX's static size (checked against ``config.imgsz``), else imgsz."""
    _, dims = _input_shape(fp32_model)
    static = len(dims) == 4 and all(isinstance(d, int) and d > 0 for d in dims[2:])
    if not static:
        return config.imgsz or DEFAULT_IMGSZ
    if dims[2] != dims[3]:
        raise ModelError(f"'{fp32}' has a non-square input {dims}; export it square (--imgsz N).")
    if config.imgsz is not None and config.imgsz != dims[2]:
        raise ConfigError(
            f"imgsz={config.imgsz} does not match '{fp32.name}', whose input is static at {dims[2]} px "
            f"({dims}): calibration images of the wrong size would not fit it. Use --imgsz {dims[2]}, "
            f"or re-export the model at {config.imgsz}."
        )
    if isinstance(dims[0], int) and dims[0] != 1:
        raise ModelError(f"'{fp32}' has a static batch of {dims[0]}; export it with batch 1 for PTQ.")
    return int(dims[2])


def _fp32_onnx(model: str, out: Path, config: QuantizeConfig) -> Path:
    source = _model_source(model)
    if source.suffix == ".onnx":
        return source
    if source.suffix != ".pt":
        raise ModelError(
            f"quantize needs a .pt checkpoint or an FP32 .onnx, got '{model}'. Point --model at the out "
            f"folder of a train, sparsify or export step, or at the file."
        )
    refuse_quantized_checkpoint(source)
    export = export_onnx(str(model), out / "fp32", ExportConfig(imgsz=config.imgsz or DEFAULT_IMGSZ, opset=config.opset))
    return export.path("onnx")


def _variant(model: str, config: QuantizeConfig) -> str:
    if config.variant:
        return config.variant
    source = inherited_variant(model)
    return "ptq" if source in ("", "baseline") else f"{source}-ptq"


def quantize(model: str, data: str, out: str | Path, config: QuantizeConfig | None = None, tracker: Any = None) -> StepResult:
    """Quantize ``model`` to ``<out>/model_int8.onnx`` (PTQ, calibrated on ``data``'s train split)."""
    config = config or QuantizeConfig()
    if config.method == "qat":
        raise SparsepipeError(
            "Quantization-aware training needs a recipe and training settings: call "
            "sparsepipe.qat.qat(model, data, recipe, out, QATConfig(...)) or run "
            "`sparsepipe quantize --method qat --recipe RECIPE ...`; quantize() itself does PTQ."
        )
    tracker = tracker or Tracker()
    out = check_out(out)  # nothing in --out changes before --data is checked (claim_out)
    variant = _variant(model, config)
    pool = train_images(data)  # validates --data like the data step, before any model is read

    source = _model_source(model)
    if source.suffix == ".onnx":  # every check of an ONNX input runs before --out changes
        _calibration_size(_checked_fp32(source), source, config)
    claim_out(out)
    fp32 = _fp32_onnx(model, out, config)
    imgsz = _calibration_size(_checked_fp32(fp32), fp32, config)
    images = sample_images(pool, config.calibration_images, config.seed)

    fallback: list[str] = []
    target, excluded, op_types = quantize_onnx(fp32, out / "model_int8.onnx", images, imgsz, config, fallback=fallback)

    counts = conv_kernel_counts(optimized_graph(target))
    metrics: dict[str, float] = {**file_sizes(target), **{k: float(v) for k, v in counts.items()}}
    metrics["fp32_size_mb"] = file_sizes(fp32)["size_mb"]
    metrics["params"] = float(onnx_param_count(fp32))  # same weights; the INT8 file also stores scales
    metrics["calibration_images"] = float(len(images))
    files = {"int8_onnx": str(target), "fp32_onnx": str(fp32)}
    if config.evaluate:
        ev = evaluate(str(target), data, out / "evaluate", EvaluateConfig(imgsz=imgsz, variant=variant))
        metrics.update({k: ev.metrics[k] for k in ("map50", "map50_95", "map50_95_ci_low", "map50_95_ci_high")
                        if k in ev.metrics})
        files["per_class"] = str(ev.path("per_class"))
        if "per_image" in ev.files:
            files["per_image"] = str(ev.path("per_image"))
    result = StepResult(
        step="quantize",
        out_dir=str(out),
        variant=variant,
        files=files,
        metrics=metrics,
        config={"model": str(model), "data": str(data), **dataclasses.asdict(config), "imgsz": imgsz},
        extra={"float_nodes": excluded, "op_types": op_types, "calibration_files": [str(p) for p in images],
               "calibration_method_used": fallback[-1] if fallback else config.calibration_method},
    )
    tracker.log_params({f"quantize.{k}": v for k, v in dataclasses.asdict(config).items() if k != "variant"})
    tracker.log_metrics(metrics)
    tracker.log_artifact(str(target), "onnx")
    result.write()
    return result
