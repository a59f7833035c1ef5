"""Train a baseline ultralytics model offline: the ``train`` step.

    sparsepipe train --model yolov8n.yaml --data synthetic --epochs 30 --imgsz 320 --out runs/train

Builds the model from its config (or continues from a checkpoint), trains it with ultralytics'
own loop (its progress bars, plots and ``best.pt``/``last.pt``), then publishes
``<out>/model.pt`` atomically and writes ``<out>/result.json``. Recipe-driven training
(pruning, distillation, QAT) plugs into the same trainer subclass in later steps.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from sparsepipe.errors import ConfigError, SparsepipeError
from sparsepipe.limits import check_epochs, check_input_size
from sparsepipe.models import count_params, load_yolo
from sparsepipe.results import StepResult, atomic_copy, check_out, claim_out
from sparsepipe.tracking import Tracker
from sparsepipe.ultralytics_hooks import (  # noqa: F401 - re-exported
    ULTRALYTICS_DIR, remove_truncated_checkpoints)
from sparsepipe.ultralytics_hooks import epoch_logger, trainer_class



@dataclasses.dataclass
class TrainConfig:
    """Settings of the train step; every field maps to an ultralytics train argument."""

    epochs: int = 30  # passes over the train split; ~75 s for 30 on 128 images at 160 px on 2 cores
    imgsz: int = 320  # square input size in pixels, a multiple of 32
    batch: int = 16  # images per batch (per device)
    device: str = "cpu"  # "cpu", a CUDA index "0", or "0,1" for ultralytics' single-node DDP
    workers: int = 2  # data-loader processes; 0 loads in the main process
    seed: int = 0  # RNG seed passed to ultralytics (deterministic=True)
    optimizer: str = "auto"  # ultralytics optimizer name: auto, SGD, AdamW, ...
    lr0: float | None = None  # initial learning rate; None keeps ultralytics' choice
    patience: int = 100  # epochs without improvement before early stop
    amp: bool = True  # mixed precision on GPU (ignored on CPU)
    plots: bool = True  # write ultralytics' plots (curves, confusion matrix, batch mosaics)
    cache: bool = False  # cache decoded images in RAM
    variant: str = "baseline"  # variant name used in MLflow and the report
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # any other ultralytics train arg

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs!r} must be a positive integer, e.g. --epochs 30.")
        if not isinstance(self.imgsz, int) or self.imgsz < 32 or self.imgsz % 32:
            raise ConfigError(
                f"imgsz={self.imgsz!r} must be a multiple of 32 and at least 32 (YOLO strides), "
                f"e.g. --imgsz 320 or 640."
            )
        if not isinstance(self.batch, int) or self.batch < 1:
            raise ConfigError(f"batch={self.batch!r} must be a positive integer, e.g. --batch 16.")
        check_epochs("epochs", self.epochs)
        check_input_size(self.batch, self.imgsz, "training")
        if self.workers < 0:
            raise ConfigError(f"workers={self.workers!r} must be 0 or more.")
        if self.lr0 is not None and not (0 < self.lr0 < 10):
            raise ConfigError(f"lr0={self.lr0!r} must be a positive learning rate such as 0.01.")
        reserved = {"model", "data", "project", "name", "exist_ok", "trainer", "resume"} & set(self.extra)
        if reserved:
            raise ConfigError(
                f"extra ultralytics arguments {sorted(reserved)} are set by sparsepipe itself; "
                f"use --model/--data/--out instead."
            )

    def ultralytics_args(self) -> dict[str, Any]:
        args = {
            "epochs": self.epochs,
            "imgsz": self.imgsz,
            "batch": self.batch,
            "device": self.device,
            "workers": self.workers,
            "seed": self.seed,
            "deterministic": True,
            "optimizer": self.optimizer,
            "patience": self.patience,
            "amp": self.amp,
            "plots": self.plots,
            "cache": self.cache,
        }
        if self.lr0 is not None:
            args["lr0"] = self.lr0
        args.update(self.extra)
        return args


def final_metrics(results: Any, trainer: Any) -> dict[str, float]:
    """Standard metric names from ultralytics' final validation of ``best.pt``."""
    raw = dict(getattr(results, "results_dict", None) or getattr(trainer, "metrics", {}) or {})
    names = {
        "metrics/mAP50(B)": "map50",
        "metrics/mAP50-95(B)": "map50_95",
        "metrics/precision(B)": "precision",
        "metrics/recall(B)": "recall",
        "metrics/mAP50(M)": "mask_map50",
        "metrics/mAP50-95(M)": "mask_map50_95",
    }
    return {new: float(raw[old]) for old, new in names.items() if old in raw}


def train(
    model: str,
    data: str,
    out: str | Path,
    config: TrainConfig | None = None,
    tracker: Any = None,
    callbacks: dict[str, list[Callable[[Any], None]]] | None = None,
) -> StepResult:
    """Train ``model`` on ``data`` (any SOURCE form) and publish ``<out>/model.pt``.

    ``tracker`` (a :class:`sparsepipe.tracking.Tracker`) receives params, per-epoch curves,
    final metrics and the weights; ``None`` logs nothing. ``callbacks`` maps ultralytics
    event names to extra functions called with the trainer (ultralytics' callback API).
    """
    from sparsepipe.channel_pruning import keep_architecture_trainer  # heavy: pydantic, torch (via sparsepipe.channel_pruning)
    from sparsepipe.data import resolve_data  # heavy: cv2 (via sparsepipe.data)

    config = config or TrainConfig()
    tracker = tracker or Tracker()
    out = check_out(out)  # nothing in --out changes before the checks pass (claim_out)

    data_yaml = resolve_data(data)
    yolo = load_yolo(model)
    if yolo.task not in ("detect", "segment"):
        raise SparsepipeError(
            f"Model '{model}' is a {yolo.task} model; sparsepipe trains detection and segmentation "
            f"models. Use e.g. yolov8n.yaml or yolov8n-seg.yaml."
        )
    for event, function in epoch_logger(tracker).items():
        yolo.add_callback(event, function)
    for event, functions in (callbacks or {}).items():
        for function in functions:
            yolo.add_callback(event, function)
    tracker.log_params({"model": model, "data": data, "task": yolo.task, **_flat(config)})

    claim_out(out)
    started = time.perf_counter()
    try:
        results = yolo.train(
            data=str(data_yaml),
            project=str(out),
            name=ULTRALYTICS_DIR,
            exist_ok=True,
            trainer=keep_architecture_trainer(trainer_class(yolo.task)),  # channel-pruned checkpoints keep their shapes
            **config.ultralytics_args(),
        )
    except OSError:  # a full disk mid-save: ultralytics writes last.pt/best.pt in place
        remove_truncated_checkpoints(out / ULTRALYTICS_DIR / "weights")
        raise
    seconds = time.perf_counter() - started
    trainer = yolo.trainer
    run_dir = Path(trainer.save_dir)
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        best = run_dir / "weights" / "last.pt"
    weights = atomic_copy(best, out / "model.pt")

    metrics = final_metrics(results, trainer)
    metrics["params"] = float(count_params(trainer.model))
    metrics["train_time_s"] = round(seconds, 3)
    metrics["epochs"] = float(trainer.epoch + 1)
    files = {"weights": str(weights), "last": str(run_dir / "weights" / "last.pt"), "data_yaml": str(data_yaml)}
    if (run_dir / "results.csv").is_file():
        files["results_csv"] = str(run_dir / "results.csv")
    result = StepResult(
        step="train",
        out_dir=str(out),
        variant=config.variant,
        files=files,
        metrics=metrics,
        config={"model": model, "data": data, "task": yolo.task, **_flat(config)},
    )
    tracker.log_metrics({k: v for k, v in metrics.items() if k != "epochs"})
    tracker.log_artifact(str(weights), "weights")
    for plot in sorted(run_dir.glob("*.png")):
        tracker.log_artifact(str(plot), "plots")
    result.write()
    return result


def _flat(config: TrainConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    extra = data.pop("extra")
    data.update({f"extra.{k}": v for k, v in extra.items()})
    return data
