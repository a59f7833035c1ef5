"""The train step: a dataset folder -> a checkpoint folder (``Output[Model]``, ``model.pt``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE)
def train_model(
    model_config: str,
    data: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    context: str = "",
    epochs: int = 30,
    imgsz: int = 320,
    batch: int = 16,
    accelerator: str = "",
    accelerator_count: str = "1",
    workers: int = 2,
    seed: int = 0,
    variant: str = "baseline",
):
    """Train ``model_config`` (e.g. yolov8n.yaml) on ``data``; on CUDA device 0 when ``accelerator`` is set."""
    from sparsepipe.kfp_support import kfp_metrics, run_train

    result = run_train(model_config, data.path, model.path, context, epochs=epochs, imgsz=imgsz,
                       batch=batch, accelerator=accelerator, accelerator_count=accelerator_count,
                       workers=workers, seed=seed, variant=variant)
    model.metadata["variant"] = result.variant
    for name, value in kfp_metrics(result).items():
        metrics.log_metric(name, value)
