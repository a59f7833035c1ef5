"""The whole flow on embedded defaults, locally: what ``make demo`` runs.

    sparsepipe demo --out runs/demo

generate data (``synthetic:preset=demo``: 3 shapes, large objects, no clutter, so that YOLOv8n
learns it in a couple of minutes on 2 cores) -> train a baseline -> prune it with a recipe
(``pruned50``) -> quantize the pruned model (PTQ, ``pruned50-int8``) -> export / evaluate each
ONNX (mAP with its 95 % interval; variants also with their paired ratio to the baseline) ->
benchmark each on onnxruntime (every variant interleaved with the baseline in one run) -> report
-> predict the first validation images with the baseline ONNX (objects found, in the report). MLflow gets one
parent run for the demo and one child run per variant (``baseline``, ``pruned50``,
``pruned50-int8``) holding that variant's params, curves, metrics and ONNX file; the parent holds
the data YAML and the report.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from sparsepipe.errors import ConfigError
from sparsepipe.evaluate import EvaluateConfig, evaluate
from sparsepipe.export import ExportConfig, export_onnx
from sparsepipe.predict import Predictor
from sparsepipe.quantize import QuantizeConfig, quantize
from sparsepipe.report import ReportConfig, report
from sparsepipe.results import StepResult
from sparsepipe.sparsify import SparsifyConfig, sparsify
from sparsepipe.tracking import resolve_tracker
from sparsepipe.training import TrainConfig, train


@dataclasses.dataclass
class DemoConfig:
    """Defaults sized to finish in a few minutes on 2 CPU cores."""

    model: str = "yolov8n.yaml"  # ultralytics config trained from scratch (no downloads)
    data: str = "synthetic:preset=demo"  # dataset SOURCE as for `data --source`; the preset: 256 train / 128 val images, 3 classes
    epochs: int = 30  # baseline training epochs (measured curve and time: docs/benchmarks.md "make demo")
    imgsz: int = 160  # train, export and benchmark size (pixels)
    batch: int = 8  # training batch
    nbs: int = 8  # ultralytics' nominal batch: = batch, so every batch is an optimizer step (64 would
    #               accumulate 8 batches: 4 steps an epoch on 256 images)
    iterations: int = 200  # timed benchmark iterations
    threads: int = 2  # benchmark intra-op threads (all cores of a 2-core laptop/CI)
    recipe: str = "recipes/yolov8n-pruned50.yaml"  # pruning recipe of the second variant ("" = skip it)
    recipe_args: str = "num_epochs=8,pruning_start_epoch=0,pruning_end_epoch=5"  # recipe overrides: shortened for the demo
    quantize: bool = True  # add "<variant>-int8": PTQ of the pruned model (calibrated INT8 ONNX)
    val_every_epoch: bool = True  # validate every epoch, so best.pt can be chosen; False: only after the last
    #                               epoch (~1.4 s an epoch saved, but last.pt scored mAP50 0.57 vs 0.71)

    def training_extra(self) -> dict:
        """ultralytics arguments of the demo's two trainings."""
        return {"nbs": self.nbs, **({} if self.val_every_epoch else {"val": False})}

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs} must be at least 1.")
        if self.imgsz % 32:
            raise ConfigError(f"imgsz={self.imgsz} must be a multiple of 32.")
        if self.nbs < 1:
            raise ConfigError(f"nbs={self.nbs} must be a positive number of images (e.g. the batch size).")


def run_demo(out: str | Path, config: DemoConfig | None = None, experiment: str = "sparsepipe", track: bool = True) -> StepResult:
    """Run every step into ``out/<step>`` and return the report step's result."""
    from sparsepipe.benchmark import BenchmarkConfig, benchmark  # heavy: openvino (via sparsepipe.benchmark)
    from sparsepipe.data import DataConfig, prepare_data  # heavy: cv2 (via sparsepipe.data)

    config = config or DemoConfig()
    out = Path(out).resolve()
    started = time.perf_counter()
    parent = resolve_tracker(experiment, f"demo-{time.strftime('%Y%m%d-%H%M%S')}", enabled=track,
                             tags={"sparsepipe.pipeline": "demo"})
    with parent:
        parent.log_params({f"demo.{k}": v for k, v in dataclasses.asdict(config).items()})
        data = prepare_data(config.data, out / "data", DataConfig())
        data_yaml = str(data.path("data_yaml"))
        parent.log_artifact(data_yaml, "data")
        parent.log_metrics({f"data_{k}": v for k, v in data.metrics.items()})

        with parent.start_child("baseline", tags={"sparsepipe.variant": "baseline"}) as child:
            trained = train(
                config.model, str(out / "data"), out / "train",
                TrainConfig(epochs=config.epochs, imgsz=config.imgsz, batch=config.batch, variant="baseline",
                            extra=config.training_extra()),
                child,
            )
            exported = export_onnx(str(out / "train"), out / "export", ExportConfig(imgsz=config.imgsz), child)
            evaluated = evaluate(str(out / "export"), str(out / "data"), out / "evaluate", EvaluateConfig(), child)
            timed = benchmark(
                str(out / "export"), out / "benchmark",
                BenchmarkConfig(threads=config.threads, iterations=config.iterations), tracker=child,
            )
        steps = [trained, exported, evaluated, timed]
        if config.recipe:
            variant = Path(config.recipe).stem.split("-")[-1]  # yolov8n-pruned50.yaml -> pruned50
            with parent.start_child(variant, tags={"sparsepipe.variant": variant}) as child:
                pruned = sparsify(
                    str(out / "train"), str(out / "data"), config.recipe, out / variant,
                    SparsifyConfig(imgsz=config.imgsz, batch=config.batch, variant=variant, extra=config.training_extra()),
                    recipe_args=config.recipe_args, tracker=child,
                )
                pruned_onnx = export_onnx(str(out / variant), out / f"{variant}-export", ExportConfig(imgsz=config.imgsz), child)
                pruned_eval = evaluate(str(out / f"{variant}-export"), str(out / "data"), out / f"{variant}-evaluate",
                                       EvaluateConfig(), child, baseline=str(out / "evaluate"))
                pruned_timed = benchmark(
                    str(out / f"{variant}-export"), out / f"{variant}-benchmark",
                    BenchmarkConfig(threads=config.threads, iterations=config.iterations),
                    baseline=str(out / "export"), tracker=child,
                )
            steps += [pruned, pruned_onnx, pruned_eval, pruned_timed]
            if config.quantize:
                int8 = f"{variant}-int8"
                with parent.start_child(int8, tags={"sparsepipe.variant": int8}) as child:
                    # PTQ of the pruned FP32 ONNX: calibrated INT8, zeros kept, evaluated through the file.
                    quantized = quantize(str(out / f"{variant}-export"), str(out / "data"), out / int8,
                                         QuantizeConfig(variant=int8), child)
                    int8_timed = benchmark(
                        str(out / int8), out / f"{int8}-benchmark",
                        BenchmarkConfig(threads=config.threads, iterations=config.iterations, variant=int8),
                        baseline=str(out / "export"), tracker=child,
                    )
                steps += [quantized, int8_timed]
        result = report([s.out_dir for s in steps], out / "report", ReportConfig(baseline="baseline"), parent)
        found = predict_sample(out / "export", out / "data")
        result.extra["predict_sample"] = found
        parent.log_metrics({"demo_seconds": round(time.perf_counter() - started, 1),
                            "demo_predict_objects": float(sum(f["objects"] for f in found))})
    return result


def predict_sample(export_dir: Path, data_dir: Path, images: int = 4) -> list[dict]:
    """What ``sparsepipe predict`` finds (default confidence) in the first validation images."""
    from sparsepipe.data import label_path, split_images  # heavy: cv2 (via sparsepipe.data)

    files = split_images(data_dir / "data.yaml", "val")[:images]
    predictor = Predictor(export_dir)
    try:
        predictions = predictor.predict([str(f) for f in files])
    finally:
        predictor.close()
    labels = [len(label_path(f).read_text().splitlines()) for f in files]
    return [{"image": f.name, "objects": len(p.detections), "labelled": n,
             "classes": sorted({d.label for d in p.detections})} for f, p, n in zip(files, predictions, labels)]
