"""The QAT step: quantization-aware training under a recipe, then INT8 QDQ export and evaluation.

    sparsepipe quantize --method qat --model runs/pruned75 --data synthetic --recipe recipes/yolov8n-quick-test.yaml --out runs/qat

A QAT run trains as a sparsify run (:func:`sparsepipe.sparsify.sparsify` into ``<out>/train``, the
recipe's ``!QuantizationModifier`` driving :mod:`sparsepipe.qat_modules`), exports the QAT
checkpoint to INT8 QDQ ONNX (:mod:`sparsepipe.qat_export`) and evaluates that file. Its config
*holds* the sparsify settings (:attr:`QATConfig.train`) beside the export's own.

The algorithm's names (``FakeQuant``, ``prepare_qat_``, ``export_int8_onnx``...) are re-exported
here for callers of the old ``sparsepipe.qat`` module; see ``docs/qat.md``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from sparsepipe.errors import ConfigError, SparsepipeError
from sparsepipe.evaluate import EvaluateConfig, evaluate
from sparsepipe.models import resolve_model_path
from sparsepipe.qat_export import (  # noqa: F401 - re-exported
    EXPORT_LAYOUTS, export_int8_onnx, float_hot_path, int8_initializers, learned_points, optimized_graph_ops,
    qdq_plan, requantize_conv_inputs)
from sparsepipe.qat_modules import (  # noqa: F401 - re-exported
    ACT_AVERAGING, PREPARED_ATTR, AddInput, FakeQuant, FoldedConv, QATBottleneck, QATController, QATConv,
    convert_for_export, fake_quantizers, is_prepared, prepare_qat_, qat_trainer_class, quant_modifier,
    resolve_scheme, set_qat_state, sync_ranges)
from sparsepipe.recipe import load_recipe, parse_recipe_args
from sparsepipe.recipe_lookup import resolve_recipe
from sparsepipe.results import StepResult, check_out, claim_out
from sparsepipe.sizes import file_sizes
from sparsepipe.sparsify import SparsifyConfig, sparsify
from sparsepipe.tracking import Tracker


@dataclasses.dataclass(init=False)
class QATConfig:
    """Settings of QAT: the training run (a :class:`SparsifyConfig`) plus the INT8 export.

    ``QATConfig(imgsz=320, batch=8)`` takes the training settings as keywords (they build
    ``train``), or ``QATConfig(train=SparsifyConfig(...))``; ``config.imgsz`` reads them back.
    """

    train: SparsifyConfig = dataclasses.field(default_factory=SparsifyConfig)  # the training run's settings
    variant: str = "qat_int8"  # variant name in MLflow and the report (the training run's too)
    opset: int = 17  # ONNX opset of the INT8 export (>= 13 for per-channel QuantizeLinear)
    # integer: QDQ at every point PTQ quantizes (learned ranges reused, the rest calibrated on 64 train
    # images), onnxruntime's fast integer path; qat: QDQ only where the recipe fake-quantized (docs/qat.md)
    export_layout: str = "integer"

    def __init__(self, train: SparsifyConfig | None = None, *, variant: str = "qat_int8", opset: int = 17,
                 export_layout: str = "integer", **train_settings: Any) -> None:
        if train is not None and train_settings:
            raise ConfigError(f"QATConfig takes the training settings as train=SparsifyConfig(...) or as "
                              f"keywords ({', '.join(sorted(train_settings))}), not both.")
        if train is not None and not isinstance(train, SparsifyConfig):
            raise ConfigError(f"train={train!r} must be a SparsifyConfig.")
        self.train = train if train is not None else SparsifyConfig(variant=variant, **train_settings)
        self.variant, self.opset, self.export_layout = variant, opset, export_layout
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.export_layout not in EXPORT_LAYOUTS:
            raise ConfigError(f"export_layout={self.export_layout!r}: choose integer (onnxruntime's integer "
                              f"path, default) or qat (QDQ only where the recipe fake-quantized).")
        if not isinstance(self.opset, int) or not 13 <= self.opset <= 21:
            raise ConfigError(f"opset={self.opset!r} must be between 13 and 21 for QDQ export.")

    def __getattr__(self, name: str) -> Any:
        """The training settings read through the QAT config (``config.imgsz``)."""
        train = self.__dict__.get("train")
        if train is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(train, name)

    def as_dict(self) -> dict[str, Any]:
        """One flat mapping (what result.json records): the training settings, then the export's."""
        return {**dataclasses.asdict(self.train), "variant": self.variant, "opset": self.opset,
                "export_layout": self.export_layout}


def qat(model: str, data: str, recipe: str | None, out: str | Path, config: QATConfig | SparsifyConfig | None = None,
        recipe_args: Any = None, tracker: Any = None, *, teacher: str | None = None,
        resume: bool = False) -> Any:
    """Quantization-aware training under ``recipe`` then INT8 QDQ export: ``<out>/model_int8.onnx``.

    Training runs as sparsify into ``<out>/train`` (its own result.json, ``model.pt`` = the QAT
    checkpoint); the INT8 ONNX is evaluated through onnxruntime with ultralytics' validator.
    Returns a StepResult (step "quantize", files ``int8_onnx``, ``weights``).
    """
    config = config or QATConfig()
    if not isinstance(config, QATConfig):  # a SparsifyConfig: train with it, export with the defaults
        config = QATConfig(train=config, variant=config.variant)
    tracker = tracker or Tracker()
    out = check_out(out)  # a run refused below leaves a good --out as it was (claim_out)
    if not resume:
        if Path(resolve_model_path(model)).suffix == ".onnx":
            raise SparsepipeError(
                f"QAT trains a PyTorch checkpoint, but '{model}' is an ONNX model (it may already be "
                f"quantized). Pass the float (sparse) .pt checkpoint or its train/sparsify out folder.")
        if not recipe:
            raise SparsepipeError("QAT needs --recipe RECIPE with a !QuantizationModifier.")
        loaded = load_recipe(resolve_recipe(recipe), recipe_args=parse_recipe_args(recipe_args))
        if quant_modifier(loaded) is None:
            raise SparsepipeError(f"The recipe {recipe} has no !QuantizationModifier: QAT needs one "
                                  f"(see recipes/yolov8n-quick-test.yaml), or use --method ptq.")
    train_cfg = dataclasses.replace(config.train, variant=config.variant)
    claim_out(out)
    trained = sparsify(model, data, recipe, out / "train", train_cfg, recipe_args=recipe_args,
                       teacher=teacher, resume=resume, tracker=tracker)
    weights = trained.path("weights")
    target = export_int8_onnx(weights, out / "model_int8.onnx", config.imgsz, config.opset,
                              data=trained.files["data_yaml"], layout=config.export_layout)
    graph = optimized_graph_ops(target)
    evaluated = evaluate(str(target), trained.files["data_yaml"], out / "evaluate",
                         EvaluateConfig(imgsz=config.imgsz, device="cpu", variant=config.variant))
    metrics = {
        **file_sizes(target),
        "int8_conv_nodes": float(graph["int8_conv_nodes"]),
        "float_conv_nodes": float(graph["float_conv_nodes"]),
        "params": trained.metrics.get("params", math.nan),
        "stray_dq_conv": float(len(graph["stray_dq_conv"])),
        "float_hot_path_ops": float(len(graph["float_hot_path"])),
        **{k: v for k, v in evaluated.metrics.items() if k in ("map50", "map50_95", "mask_map50", "mask_map50_95")},
        "fake_quant_map50_95": trained.metrics.get("map50_95", math.nan),
        "sparsity": trained.metrics.get("sparsity", 0.0),
        "train_time_s": trained.metrics.get("train_time_s", 0.0),
    }
    result = StepResult(
        step="quantize", out_dir=str(out), variant=config.variant,
        files={"int8_onnx": str(target), "weights": str(weights), "train_result": str(Path(trained.out_dir)),
               "data_yaml": trained.files["data_yaml"]},
        metrics=metrics,
        config={"method": "qat", "model": model, "data": data, "recipe": recipe, "resume": resume,
                **config.as_dict()},
        extra={"ops": graph["ops"], "stray_dq_conv": graph["stray_dq_conv"], "float_hot_path": graph["float_hot_path"]},
    )
    tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)})
    tracker.log_artifact(str(target), "quantize")
    result.write()
    return result
